"""Reference statistics for FID-style metrics, stored in the ADM evaluator's npz layout.

A reference file holds ``mu [D]`` and ``sigma [D, D]`` (float64) like ADM's ``VIRTUAL_imagenet256_labeled.npz``,
plus, when written by flexitok, ``features [n, D]`` (float32, for precision/recall) and metadata: ``extractor``,
``n``, ``data``, ``path``, ``split``, ``seed``, ``balanced``. The subset is drawn at random (seeded) or
class-balanced, never "the first n". ADM's own files carry no metadata: their statistics come from the TF FID
Inception, so they are read as ``extractor = "inception"``; their ``arr_0`` (uint8 images ``[N, H, W, 3]``) is kept
for precision/recall.
"""

from __future__ import annotations

import heapq
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm.auto import tqdm

from flexitok.errors import DatasetError, InvalidInputError, OutputError
from flexitok.eval.features import FeatureExtractor, extractor_name
from flexitok.eval.metrics import frechet_distance_from_stats, gaussian_stats

META_KEYS = ("extractor", "n", "data", "path", "split", "seed", "balanced", "image_size")


@dataclass
class ReferenceStats:
    """Gaussian statistics of reference features and where they came from.

    ``mu [D]``, ``sigma [D, D]`` float64; ``features [n, D]`` (None when not stored) and ``images`` (ADM's
    ``arr_0`` uint8 ``[N, H, W, 3]``, None when absent) serve precision/recall. ``extractor`` is the canonical
    extractor name; ``assumed_extractor`` is True when the file did not say (ADM's files)."""

    mu: np.ndarray
    sigma: np.ndarray
    extractor: str
    meta: dict[str, Any] = field(default_factory=dict)
    features: np.ndarray | None = None
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    assumed_extractor: bool = False

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def dataset_labels(dataset: Dataset) -> list[int]:
    """Class id of every item of a map-style dataset (``.labels`` when the dataset has it, else read per item)."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i]["label"]) for i in range(len(dataset))]  # type: ignore[arg-type]
    return [int(x) for x in labels]


def _balanced_quotas(classes: Sequence[int], n: int, gen: torch.Generator) -> dict[int, int]:
    """n split evenly over ``classes``; the remainder goes to randomly chosen (seeded) classes."""
    per, extra = divmod(n, len(classes))
    order = torch.randperm(len(classes), generator=gen).tolist()
    return {classes[j]: per + (1 if rank < extra else 0) for rank, j in enumerate(order)}


def select_indices(labels: Sequence[int] | None, total: int, n: int, seed: int, balanced: bool) -> list[int]:
    """``n`` of ``total`` item indices, sorted: a seeded uniform random subset, or with ``balanced`` an equal
    number per class (the remainder of ``n / classes`` spread over random classes). ``n >= total`` takes
    every item (random mode). Balanced mode needs known labels (``>= 0``) and enough items per class."""
    if n < 1:
        raise InvalidInputError(f"the reference needs n >= 1 images, got {n}")
    gen = torch.Generator().manual_seed(seed)
    if not balanced:
        return sorted(torch.randperm(total, generator=gen)[: min(n, total)].tolist())
    if labels is None or len(labels) != total or any(int(x) < 0 for x in labels):
        raise DatasetError("--balanced needs class labels for every image (class sub-folders)")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    classes = sorted(by_class)
    quotas = _balanced_quotas(classes, n, gen)
    short = {c: len(by_class[c]) for c in classes if len(by_class[c]) < quotas[c]}
    if short:
        some = ", ".join(f"class {c}: {m} < {quotas[c]}" for c, m in list(short.items())[:5])
        raise DatasetError(f"not enough images for a balanced reference of {n} ({some})")
    chosen: list[int] = []
    for c in classes:
        members = by_class[c]
        perm = torch.randperm(len(members), generator=gen)[: quotas[c]].tolist()
        chosen += [members[j] for j in perm]
    return sorted(chosen)


def _batches(dataset: Dataset, batch_size: int, num_workers: int) -> Iterator[dict[str, Any]]:
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _extract(extractor: FeatureExtractor, images: Tensor) -> Tensor:
    dev = _device_of(extractor)
    return extractor(images.to(dev)).float().cpu()


def _device_of(module: object) -> torch.device:
    if isinstance(module, torch.nn.Module):
        for t in (*module.parameters(), *module.buffers()):
            return t.device
    return torch.device("cpu")


@torch.no_grad()
def _stream_subset(
    extractor: FeatureExtractor,
    dataset: IterableDataset,
    n: int,
    seed: int,
    balanced: bool,
    batch_size: int,
    progress: bool,
) -> tuple[Tensor, Tensor, list[str] | None]:
    """Seeded sample of a stream without knowing its length: every item gets a random key (seeded, in stream
    order) and the n smallest keys win (per class when ``balanced``, with quotas over ``dataset.class_names``).
    Only items that are among the smallest keys so far are featurized."""
    gen = torch.Generator().manual_seed(seed)
    quotas: dict[int, int] | None = None
    if balanced:
        names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
        if not names:
            raise DatasetError("--balanced on a stream needs its class names (a shard index that records them)")
        quotas = _balanced_quotas(list(range(len(names))), n, gen)
    heaps: dict[int, list[tuple[float, int]]] = {}  # class (or -1) -> max-heap of (-key, id)
    kept: dict[int, tuple[Tensor, int, str | None]] = {}
    pending: list[tuple[int, Tensor, int, str | None]] = []

    def flush() -> None:
        if pending:
            feats = _extract(extractor, torch.stack([p[1] for p in pending]))
            for (uid, _, y, cap), f in zip(pending, feats, strict=True):
                if uid in live:
                    kept[uid] = (f, y, cap)
            pending.clear()

    live: set[int] = set()
    uid = 0
    for item in tqdm(dataset, desc="reference (stream)", disable=not progress, unit="img"):
        y = int(item.get("label", -1))
        group = y if quotas is not None else -1
        if quotas is not None and y not in quotas:
            raise DatasetError(f"stream item with label {y} outside the {len(quotas)} named classes")
        quota = quotas[group] if quotas is not None else n
        key = float(torch.rand((), generator=gen))
        heap = heaps.setdefault(group, [])
        if quota == 0 or (len(heap) >= quota and key >= -heap[0][0]):
            continue
        heapq.heappush(heap, (-key, uid))
        live.add(uid)
        if len(heap) > quota:
            _, dropped = heapq.heappop(heap)
            live.discard(dropped)
            kept.pop(dropped, None)
        pending.append((uid, item["image"], y, item.get("caption")))
        uid += 1
        if len(pending) >= batch_size:
            flush()
    flush()
    ids = sorted(live)
    if not ids:
        raise DatasetError("the dataset yielded no images")
    if quotas is not None:
        short = {c: len(heaps.get(c, [])) for c, q in quotas.items() if len(heaps.get(c, [])) < q}
        if short:
            raise DatasetError(f"not enough images for a balanced reference of {n}: per-class counts {short}")
    feats = torch.stack([kept[i][0] for i in ids])
    labels = torch.tensor([kept[i][1] for i in ids])
    caps = [kept[i][2] for i in ids]
    return feats, labels, ([str(c) for c in caps] if all(c is not None for c in caps) else None)


@torch.no_grad()
def reference_subset_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    n: int,
    seed: int = 0,
    balanced: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Tensor, Tensor, list[str] | None]:
    """Features of a seeded random (or class-balanced) subset of ``n`` dataset images ->
    (feats ``[n', D]`` float32, labels ``[n']``, captions or None); ``n' = min(n, len(dataset))``."""
    if isinstance(dataset, IterableDataset):
        return _stream_subset(extractor, dataset, n, seed, balanced, batch_size, progress)
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise DatasetError("the dataset has no images")
    labels = dataset_labels(dataset) if balanced else None
    idx = select_indices(labels, total, n, seed, balanced)
    feats, ys, caps = [], [], []
    subset = Subset(dataset, idx)
    bar = tqdm(total=len(idx), desc="reference features", disable=not progress, unit="img")
    for batch in _batches(subset, batch_size, num_workers):
        feats.append(_extract(extractor, batch["image"]))
        ys.append(torch.as_tensor(batch["label"]))
        if "caption" in batch:
            caps += list(batch["caption"])
        bar.update(batch["image"].shape[0])
    bar.close()
    return torch.cat(feats), torch.cat(ys), (caps or None)


def reference_from_features(
    feats: Tensor, extractor: str, meta: dict[str, Any] | None = None, keep_features: bool = True
) -> ReferenceStats:
    """Statistics of ``feats [n, D]`` as a :class:`ReferenceStats`."""
    mu, sigma = gaussian_stats(feats)
    meta = {**(meta or {}), "n": int(feats.shape[0])}
    return ReferenceStats(
        mu=mu.numpy(),
        sigma=sigma.numpy(),
        extractor=extractor_name(extractor),
        meta=meta,
        features=feats.float().numpy() if keep_features else None,
    )


def save_reference(path: str | Path, ref: ReferenceStats) -> Path:
    """Write ``ref`` atomically as an npz (``mu``, ``sigma``, ``features`` when kept, metadata as 0-d arrays)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "mu": np.asarray(ref.mu, dtype=np.float64),
        "sigma": np.asarray(ref.sigma, dtype=np.float64),
        "extractor": np.asarray(ref.extractor),
    }
    for key, value in ref.meta.items():
        arrays[key] = np.asarray("" if value is None else value)
    if ref.features is not None:
        arrays["features"] = np.asarray(ref.features, dtype=np.float32)
    if ref.labels is not None:
        arrays["labels"] = np.asarray(ref.labels, dtype=np.int64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e}") from e
    return path


def _scalar(value: np.ndarray) -> Any:
    return value.item() if value.ndim == 0 else value


def load_reference(path: str | Path) -> ReferenceStats:
    """Read a reference npz written by :func:`save_reference` or ADM's reference batches (``mu``, ``sigma``,
    ``arr_0`` images). An npz with only ``arr_0`` (a sample batch) has no statistics yet: ``mu``/``sigma`` are
    then empty arrays and :func:`complete_reference` computes them from the images."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"reference file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            data = {k: z[k] for k in keys if k != "arr_0"}
            images = z["arr_0"] if "arr_0" in keys else None
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{path} is not a readable npz file: {e}") from e
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3):
        raise InvalidInputError(f"{path}: arr_0 must be uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    has_stats = "mu" in data and "sigma" in data
    if not has_stats and images is None:
        raise InvalidInputError(f"{path} holds neither mu/sigma statistics nor arr_0 images")
    if has_stats:
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise InvalidInputError(f"{path}: mu [D] and sigma [D, D] expected, got {mu.shape} and {sigma.shape}")
    else:
        mu, sigma = np.zeros(0), np.zeros((0, 0))
    assumed = "extractor" not in data
    extractor = "inception" if assumed else extractor_name(str(_scalar(data["extractor"])))
    meta = {k: _scalar(data[k]) for k in META_KEYS if k in data and k != "extractor"}
    return ReferenceStats(
        mu=mu,
        sigma=sigma,
        extractor=extractor,
        meta=meta,
        features=data.get("features"),
        images=images,
        labels=data.get("labels", data.get("arr_1")),
        assumed_extractor=assumed,
    )


def check_extractor(ref: ReferenceStats, extractor: FeatureExtractor | str, source: str = "the reference") -> None:
    """Refuse a reference computed with another extractor (a name or spec, or an extractor: then its feature
    size is checked too) than ``extractor``."""
    name = extractor_name(extractor) if isinstance(extractor, str) else getattr(extractor, "name", None)
    if name is not None and name != ref.extractor:
        how = (
            " (an npz without metadata, e.g. ADM's, is taken as Inception statistics)" if ref.assumed_extractor else ""
        )
        raise InvalidInputError(
            f"{source} holds {ref.extractor} statistics{how} but the extractor is {name}; "
            f"pass --extractor {ref.extractor} or a reference made with --extractor {name}"
        )
    if not isinstance(extractor, str) and ref.mu.size and ref.dim != extractor.dim:
        raise InvalidInputError(f"{source} has {ref.dim}-d statistics, the extractor gives {extractor.dim}-d features")


def images_to_tensor(images: np.ndarray) -> Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def npz_image_features(
    extractor: FeatureExtractor,
    images: np.ndarray | Iterable[np.ndarray],
    batch_size: int = 64,
    progress: bool = True,
    logits: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Features ``[N, D]`` (and, with ``logits`` and an extractor that has them, logits ``[N, C]``) of uint8
    images ``[N, H, W, 3]`` (an ADM ``arr_0``, or an iterable of such batches), ``batch_size`` at a time."""
    feats, outs = [], []
    dev = _device_of(extractor)
    both = logits and hasattr(extractor, "features_and_logits")
    if isinstance(images, np.ndarray):
        arr = images
        images = (arr[s : s + batch_size] for s in range(0, len(arr), batch_size))
    for batch in tqdm(images, desc="features", disable=not progress, unit="batch"):
        x = images_to_tensor(batch).to(dev)
        if both:
            f, lg = extractor.features_and_logits(x)  # type: ignore[attr-defined]
            outs.append(lg.float().cpu())
        else:
            f = extractor(x)
        feats.append(f.float().cpu())
    return torch.cat(feats), (torch.cat(outs) if outs else None)


def complete_reference(ref: ReferenceStats, extractor: FeatureExtractor, batch_size: int = 64) -> ReferenceStats:
    """Fill in what the metrics need from ``ref.images``: statistics when the file had none, features for
    precision/recall when it stored none."""
    if ref.images is None or (ref.mu.size and ref.features is not None):
        return ref
    feats, _ = npz_image_features(extractor, ref.images, batch_size)
    if not ref.mu.size:
        mu, sigma = gaussian_stats(feats)
        ref.mu, ref.sigma = mu.numpy(), sigma.numpy()
    ref.features = feats.numpy()
    return ref


def distance_to_reference(feats: Tensor, ref: ReferenceStats) -> float:
    """Frechet distance between the Gaussian of ``feats [N, D]`` and the reference statistics."""
    if feats.ndim != 2 or feats.shape[1] != ref.dim:
        raise InvalidInputError(f"features {tuple(feats.shape)} do not match the {ref.dim}-d reference")
    mu, sigma = gaussian_stats(feats)
    return frechet_distance_from_stats(mu, sigma, torch.from_numpy(ref.mu), torch.from_numpy(ref.sigma))
