"""Paper-scale generator evaluation: N class-balanced samples written as an ADM sample npz, resumable and
split over torchrun ranks, then FID / IS / precision / recall against reference statistics.

Layout of a sample folder ``OUT``::

    OUT/job.json                      what is generated (a resume must ask for the same)
    OUT/chunks/chunk_000000.npz ...   arr_0 uint8 [m, H, W, 3], arr_1 labels [m]; written atomically
    OUT/samples_{N}x{H}x{W}x3.npz     the merged ADM sample batch: arr_0 uint8 [N, H, W, 3], arr_1 labels [N]

Sample i is class ``i % num_classes`` (equal counts per class when N is a multiple of the classes) and is
seeded like row i of :class:`flexitok.pipelines.GenerationPipeline` (base seed + i), so the result does not
depend on the chunk size, the number of ranks or interruptions.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from flexitok.errors import InvalidInputError, OutputError
from flexitok.eval.features import FeatureExtractor
from flexitok.eval.metrics import inception_score, precision_recall
from flexitok.eval.reference import ReferenceStats, check_extractor, distance_to_reference, npz_image_features
from flexitok.pipelines import GenerationPipeline
from flexitok.sampling.ar import ARSamplingConfig
from flexitok.sampling.decode import DecodeConfig

IS_SPLIT_SIZE = 5000  # samples per Inception Score part, as in the ADM evaluator


@dataclass
class SampleJob:
    """What one sample folder holds: ``n`` samples of ``n_tokens`` tokens at generator CFG ``sampling``."""

    n: int
    n_tokens: int
    sampling: ARSamplingConfig
    decode: DecodeConfig
    chunk_size: int = 1000
    batch_size: int = 64

    def describe(self, pipe: GenerationPipeline) -> dict[str, Any]:
        # batch_size changes at most the last float bits, so a resume may use another one.
        c = pipe.generator.config
        return {
            "n": self.n,
            "n_tokens": self.n_tokens,
            "chunk_size": self.chunk_size,
            "sampling": {k: v for k, v in dataclasses.asdict(self.sampling).items() if k != "n_tokens"},
            "decode": self.decode.to_dict(),
            "condition": c.condition,
            "num_classes": c.num_classes if c.condition == "class" else None,
            "image_size": list(pipe.tokenizer.image_size),
        }


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def dist_context() -> DistContext:
    """This process's rank in the torchrun job (joins the process group when torchrun started several)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Rank 0 merges and scores a cell (minutes at 50k samples) while the others wait at the next barrier.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def to_uint8(images: Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]`` (the rounding of the PNG writer)."""
    x = images.detach().float().cpu().nan_to_num(0.0).clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def sample_npz_name(n: int, size: tuple[int, int]) -> str:
    return f"samples_{n}x{size[0]}x{size[1]}x3.npz"


def _atomic_npz(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the samples from other users of a shared disk
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _chunk_ok(path: Path, expected: int) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["arr_0"].shape[0] == expected and z["arr_1"].shape[0] == expected
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return False


def _inputs(pipe: GenerationPipeline, start: int, end: int) -> dict[str, Any]:
    c = pipe.generator.config
    if c.condition == "class":
        return {"labels": torch.arange(start, end) % c.num_classes}
    if c.condition == "none":
        return {"num_samples": end - start}
    raise InvalidInputError("paper-scale sampling supports class-conditioned and unconditional generators")


def _prepare(out: Path, job: dict[str, Any], resume: bool, ctx: DistContext) -> None:
    manifest = out / "job.json"
    if ctx.is_main:
        if manifest.exists():
            old = json.loads(manifest.read_text())
            if not resume:
                raise OutputError(f"{out} already holds samples; pass --resume to continue them, or another --out")
            if old != job:
                diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
                raise InvalidInputError(f"--resume of {out} with different settings ({', '.join(diff)})")
        else:
            try:
                (out / "chunks").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"cannot create {out}: {e}") from e
            tmp = manifest.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(job, indent=2) + "\n")
            os.replace(tmp, manifest)
    ctx.barrier()


def generate_samples(
    pipe: GenerationPipeline,
    job: SampleJob,
    out: str | Path,
    resume: bool = False,
    ctx: DistContext | None = None,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> Path | None:
    """Generate ``job.n`` samples into ``out`` (layout in the module docstring); rank r writes the chunks
    ``c % world_size == r``, rank 0 merges them. With ``resume`` the chunks already on disk are kept.
    Returns the merged npz on rank 0, None elsewhere (and when ``stop_after_chunks`` stopped early: a test hook
    that simulates an interruption after that many new chunks)."""
    ctx = ctx or DistContext()
    out = Path(out)
    if job.n < 1 or job.chunk_size < 1:
        raise InvalidInputError(f"need n >= 1 and chunk_size >= 1, got {job.n} and {job.chunk_size}")
    _inputs(pipe, 0, 1)  # refuse an unsupported generator before anything is written
    desc = json.loads(json.dumps(job.describe(pipe)))  # as read back from job.json (tuples become lists)
    _prepare(out, desc, resume, ctx)
    n_chunks = math.ceil(job.n / job.chunk_size)
    mine = [c for c in range(n_chunks) if c % ctx.world_size == ctx.rank]
    sampling = dataclasses.replace(job.sampling, n_tokens=job.n_tokens)
    written = 0
    for c in tqdm(mine, desc=f"samples (rank {ctx.rank})", disable=not progress, unit="chunk"):
        start, end = c * job.chunk_size, min((c + 1) * job.chunk_size, job.n)
        path = out / "chunks" / f"chunk_{c:06d}.npz"
        if _chunk_ok(path, end - start):
            continue
        if stop_after_chunks is not None and written >= stop_after_chunks:
            return None
        decode = dataclasses.replace(job.decode, seed=job.decode.seed + start)  # sample i: seed + i
        res = pipe(
            **_inputs(pipe, start, end),
            n_tokens=job.n_tokens,
            sampling=sampling,
            decode=decode,
            batch_size=job.batch_size,
        )
        labels = _inputs(pipe, start, end).get("labels", torch.full((end - start,), -1))
        _atomic_npz(path, arr_0=to_uint8(res.images), arr_1=np.asarray(labels, dtype=np.int64))
        written += 1
    ctx.barrier()
    if not ctx.is_main:
        return None
    h, w = pipe.tokenizer.image_size
    return merge_chunks(out, n_chunks, job.chunk_size, job.n, (h, w))


def _write_npy_member(zf: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype, parts: Any) -> None:
    with zf.open(name, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_2_0(
            f,
            {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape},
        )
        for part in parts:
            f.write(np.ascontiguousarray(part, dtype=dtype).tobytes())


def merge_chunks(out: Path, n_chunks: int, chunk_size: int, n: int, size: tuple[int, int]) -> Path:
    """Stream the chunks into one ADM sample npz (never the whole batch in memory) -> its path."""
    paths = [out / "chunks" / f"chunk_{c:06d}.npz" for c in range(n_chunks)]
    missing = [p.name for c, p in enumerate(paths) if not _chunk_ok(p, min(chunk_size, n - c * chunk_size))]
    if missing:
        raise OutputError(f"{out}: chunks missing or damaged: {', '.join(missing[:5])}; rerun with --resume")

    def arrays(key: str) -> Any:
        for p in paths:
            with np.load(p, allow_pickle=False) as z:
                yield z[key]

    target = out / sample_npz_name(n, size)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_npy_member(zf, "arr_0.npy", (n, size[0], size[1], 3), np.dtype(np.uint8), arrays("arr_0"))
            _write_npy_member(zf, "arr_1.npy", (n,), np.dtype(np.int64), arrays("arr_1"))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def iter_npz_images(path: str | Path, batch_size: int) -> Iterator[np.ndarray]:
    """``arr_0`` of an npz (uint8 ``[N, H, W, 3]``) in batches of ``batch_size``, read from the zip member
    without loading the whole array (a 50k-sample batch at 256x256 is 10 GB)."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise InvalidInputError(f"{path} is not a readable npz file: {e}") from e
    with zf, zf.open("arr_0.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran:
            raise InvalidInputError(f"{path}: arr_0 must be uint8 [N, H, W, 3], got {dtype} {shape}")
        per = int(np.prod(shape[1:]))
        for s in range(0, shape[0], batch_size):
            m = min(batch_size, shape[0] - s)
            yield np.frombuffer(f.read(m * per), dtype=np.uint8).reshape(m, *shape[1:])


def sample_metrics(
    samples: str | Path,
    extractor: FeatureExtractor,
    reference: ReferenceStats,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, float]:
    """Metrics of an ADM sample npz (``arr_0`` uint8 ``[N, H, W, 3]``) against ``reference``: the Frechet
    distance (named after the extractor, e.g. ``FID``), ``IS`` (extractors with logits; parts of 5,000 samples
    as in the ADM evaluator) and ``precision`` / ``recall`` (k = 3; when the reference has features)."""
    check_extractor(reference, extractor)
    feats, logits = npz_image_features(extractor, iter_npz_images(samples, batch_size), batch_size, progress, True)
    metric = getattr(extractor, "metric_name", "FD")
    row: dict[str, float] = {metric: distance_to_reference(feats, reference)}
    if logits is not None:
        row["IS"] = inception_score(logits, splits=max(1, round(len(logits) / IS_SPLIT_SIZE)))[0]
    if reference.features is not None and len(reference.features) > 3 and len(feats) > 3:
        dev = next((t.device for t in getattr(extractor, "parameters", lambda: iter(()))()), torch.device("cpu"))
        ref_feats = torch.from_numpy(np.asarray(reference.features)).to(dev)
        row["precision"], row["recall"] = precision_recall(ref_feats, feats.to(dev), k=3)
    return row
