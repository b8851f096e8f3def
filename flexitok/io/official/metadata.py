"""The official checkpoint header: the Hydra config as Python literals, the allow-list of its ``_target_`` classes,
and the header reader (names, shapes, dtypes without data)."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from flexitok.errors import CheckpointError

_P = "flextok.model."
# Every class/function the official config may name, by role. Anything else is refused.
KNOWN_TARGETS: dict[str, str] = {
    "flextok.flextok_wrapper.FlexTok": "root",
    "flextok.flextok_wrapper.FlexTokFromHub": "root",
    "flextok.vae_wrapper.StableDiffusionVAE": "vae",
    _P + "utils.wrappers.SequentialModuleDictWrapper": "sequential",
    _P + "utils.dict_ops.PerSampleOp": "layout",
    _P + "utils.dict_ops.channels_first_to_last": "layout",
    _P + "utils.dict_ops.channels_last_to_first": "layout",
    _P + "preprocessors.patching.PatchEmbedder": "patch_embed",
    _P + "utils.posembs.PositionalEmbeddingAdder": "posemb",
    _P + "preprocessors.registers.Registers1D": "registers",
    _P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker": "packer",
    _P + "trunks.transformers.FlexTransformer": "transformer",
    _P + "postprocessors.seq_unpacking.SequenceUnpacker": "unpacker",
    _P + "postprocessors.heads.LinearHead": "enc_head",
    _P + "postprocessors.heads.ToPatchesLinearHead": "dec_head",
    "flextok.regularizers.quantize_fsq.FSQ": "fsq",
    _P + "preprocessors.linear.LinearLayer": "from_codes",
    _P + "preprocessors.token_dropout.MaskedNestedDropout": "nested_dropout",
    _P + "preprocessors.nullcond.LearnedNullCond": "null_cond",
    _P + "preprocessors.nullcond.ZeroNullCond": "null_cond",
    _P + "preprocessors.time_embedding.TimestepEmbedder": "time_embed",
    "flextok.flow_matching.noise_modules.MinRFNoiseModule": "noise",
    "flextok.flow_matching.pipelines.MinRFPipeline": "pipeline",
    _P + "layers.norm.Fp32LayerNorm": "norm",
    "torch.nn.SiLU": "act",
    "torch.nn.modules.activation.SiLU": "act",
}


def parse_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """Header metadata (str -> str) -> nested config; values that are not Python literals stay strings."""
    out: dict[str, Any] = {}
    for key, raw in meta.items():
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _check_targets(node: Any, path: str = "") -> None:
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and target not in KNOWN_TARGETS:
            raise CheckpointError(
                f"unsupported official component {target!r} at {path or '<root>'}; flexitok knows: "
                + ", ".join(sorted(t.rsplit(".", 1)[-1] for t in KNOWN_TARGETS))
            )
        for k, v in node.items():
            _check_targets(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_targets(v, f"{path}[{i}]")


def _role(node: dict[str, Any]) -> str:
    return KNOWN_TARGETS[node["_target_"]]


def _modules(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: m for n, m in section.get("module_dict", {}).items() if isinstance(m, dict) and "_target_" in m}


def _find(modules: dict[str, Any], role: str, where: str, pred: Callable[[dict], bool] = lambda m: True) -> dict:
    hits = [m for m in modules.values() if _role(m) == role and pred(m)]
    if len(hits) != 1:
        raise CheckpointError(f"expected exactly one {role} module in the official {where}, found {len(hits)}")
    return hits[0]


def read_safetensors_header(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Names, shapes and dtypes (as meta tensors, no data) and the header metadata of a checkpoint."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {}
            for k in f.keys():
                sl = f.get_slice(k)
                shapes[k] = torch.empty(sl.get_shape(), dtype=_DTYPES.get(sl.get_dtype(), torch.float32), device="meta")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path}: the file is truncated or not a safetensors checkpoint ({e})") from e
    return shapes, meta


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
