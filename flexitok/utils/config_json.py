"""Config dataclasses <-> JSON, strictly: the validation layer for ``config.json`` in model folders.

:func:`config_from_json` rebuilds a (nested) config dataclass from decoded JSON and refuses anything a saved
config cannot contain: unknown or missing-without-default keys, wrong types (``true`` for an int, ``2.5`` for an
FSQ level, a string for a number), non-finite floats, sizes outside :data:`INT_BOUNDS` / :data:`FLOAT_BOUNDS`,
over-long lists and strings, and free-form dicts (a diffusers VAE config) that are deep, long or hold huge
numbers. The dataclass's own ``__post_init__`` checks (``dim`` divisible by ``head_dim``, ...) run last. Every
failure is a :class:`CheckpointError` naming the source file and the field, e.g.
``config.json: config.encoder.transformer.depth must be an integer in [1, 1024], got -3``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

from flexitok.errors import CheckpointError

T = TypeVar("T")


@dataclass(frozen=True)
class Bound:
    """An inclusive range for a number; ``positive`` excludes zero (for eps, theta, scale factors)."""

    lo: float
    hi: float
    positive: bool = False

    def admits(self, v: float) -> bool:
        return self.lo <= v <= self.hi and (v > 0 or not self.positive)

    def describe(self) -> str:
        lo = "(0" if self.positive and self.lo <= 0 else f"[{_num(self.lo)}"
        return f"{lo}, {_num(self.hi)}]"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


# Every integer in a model config is a size or a count: at least 1 and at most 2**20 unless listed here. The
# table is keyed by field name (the config classes use one name per concept) and also bounds tuple items
# (``image_size``, ``patch_size``, ``fsq_levels``). Depth is capped tighter: model construction time grows
# with it even where the parameter ceiling would not catch it.
DEFAULT_INT_BOUND = Bound(1, 2**20)
INT_BOUNDS: dict[str, Bound] = {
    "depth": Bound(1, 1024),
    "dim": Bound(1, 2**16),
    "head_dim": Bound(1, 4096),
    "n_heads": Bound(1, 4096),
    "image_size": Bound(1, 2**14),
    "patch_size": Bound(1, 1024),
    "posemb_grid": Bound(1, 2**14),
    "n_registers": Bound(1, 2**16),
    "n_tokens": Bound(1, 2**16),
    "fsq_levels": Bound(2, 2**16),
    "vocab_size": Bound(2, 2**24),
    "latent_channels": Bound(1, 4096),
    "downsample": Bound(1, 1024),
    "adaln_expansion": Bound(1, 2),
    "time_freq_dim": Bound(2, 2**16),
    "class_tokens": Bound(1, 1024),
    "text_max_len": Bound(1, 2**14),
    "width": Bound(1, 2**14),
}
# Floats must be finite; these fields are also range-checked.
FLOAT_BOUNDS: dict[str, Bound] = {
    "mlp_ratio": Bound(0, 64, positive=True),
    "attn_scale_base": Bound(0, 1e4, positive=True),
    "norm_eps": Bound(0, 1, positive=True),
    "scaling_factor": Bound(0, 1e4, positive=True),
    "max_timestep": Bound(0, 1e6, positive=True),
    "rope_theta": Bound(0, 1e12, positive=True),
    "dropout": Bound(0, 1),
    "init_std": Bound(0, 10),
}
MAX_ITEMS = 256  # list length (tuples of sizes, class names)
MAX_STRING = 4096
# Free-form dicts (``dict[str, Any]`` fields such as a diffusers VAE config):
MAX_DEPTH = 8
MAX_FREE_INT = 2**20


class _FieldError(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where} {message}")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return (args[0] if len(args) == 1 else Union[tuple(args)]), optional  # noqa: UP007
    return hint, False


def _check_free(value: Any, where: str, depth: int = 0) -> Any:
    """A JSON value of a free-form field: bounded depth, length and numbers."""
    if depth > MAX_DEPTH:
        raise _FieldError(where, f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise _FieldError(where, f"has more than {MAX_ITEMS} entries")
        for k in value:
            if not isinstance(k, str) or len(k) > 256:
                raise _FieldError(where, f"has a key that is not a short string: {_short(k)}")
        return {k: _check_free(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise _FieldError(where, f"has more than {MAX_ITEMS} items")
        return [_check_free(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if abs(value) > MAX_FREE_INT:
            raise _FieldError(where, f"must lie in [-{MAX_FREE_INT}, {MAX_FREE_INT}], got {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError(where, f"must be a finite number, got {value}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING or "\x00" in value:
            raise _FieldError(where, "is an over-long string or contains NUL")
        return value
    raise _FieldError(where, f"must be a JSON value, got {_type_name(value)}")


def _decode(value: Any, hint: Any, where: str, name: str) -> Any:
    hint, optional = _strip_optional(hint)
    if value is None:
        if optional or hint is Any:
            return None
        raise _FieldError(where, "must not be null")
    if hint is Any:
        return _check_free(value, where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) or value not in choices:
            raise _FieldError(where, f"must be one of {list(choices)}, got {_short(value)}")
        return value
    if origin is Union:
        for option in typing.get_args(hint):
            try:
                return _decode(value, option, where, name)
            except _FieldError:
                continue
        raise _FieldError(where, f"has an unsupported value {_short(value)}")
    if origin is tuple:
        if not isinstance(value, list):
            raise _FieldError(where, f"must be a list, got {_type_name(value)}")
        if len(value) > MAX_ITEMS:
            raise _FieldError(where, f"has more than {MAX_ITEMS} items")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item_hints = [args[0]] * len(value)
            if not value:
                raise _FieldError(where, "must not be empty")
        else:
            if len(value) != len(args):
                raise _FieldError(where, f"must have {len(args)} items, got {len(value)}")
            item_hints = list(args)
        return tuple(
            _decode(v, h, f"{where}[{i}]", name) for i, (v, h) in enumerate(zip(value, item_hints, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise _FieldError(where, f"must be an object, got {_type_name(value)}")
        return _check_free(value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(where, f"must be true or false, got {_short(value)}")
        return value
    if hint is int:
        bound = INT_BOUNDS.get(name, DEFAULT_INT_BOUND)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _FieldError(where, f"must be an integer, got {_short(value)}")
        if not bound.admits(value):
            raise _FieldError(where, f"must be an integer in {bound.describe()}, got {value}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _FieldError(where, f"must be a number, got {_short(value)}")
        v = float(value)
        if not math.isfinite(v):
            raise _FieldError(where, f"must be a finite number, got {value}")
        fbound = FLOAT_BOUNDS.get(name)
        if fbound is not None and not fbound.admits(v):
            raise _FieldError(where, f"must lie in {fbound.describe()}, got {value}")
        return v
    if hint is str:
        if not isinstance(value, str):
            raise _FieldError(where, f"must be a string, got {_type_name(value)}")
        if len(value) > MAX_STRING or "\x00" in value:
            raise _FieldError(where, "is an over-long string or contains NUL")
        return value
    raise _FieldError(where, f"has a type ({hint}) that config.json cannot hold")


def _decode_dataclass(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise _FieldError(where, f"must be an object of {cls.__name__} fields, got {_type_name(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise _FieldError(where, f"has unknown {cls.__name__} fields {unknown[:5]} (known: {sorted(fields)})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _FieldError(f"{where}.{name}", "is missing")
            continue
        kwargs[name] = _decode(value[name], hints[name], f"{where}.{name}", name)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, ArithmeticError) as e:
        raise _FieldError(where, f"is not a valid {cls.__name__}: {e}") from None


def config_from_json(cls: type[T], data: Any, source: str, where: str = "config") -> T:
    """Build the config dataclass ``cls`` from decoded JSON ``data`` with the checks above.

    ``source`` (a file name) and ``where`` (the JSON path of ``data`` in it) prefix every message. Raises
    :class:`CheckpointError`; never anything else for any JSON-decodable ``data``.
    """
    try:
        return typing.cast(T, _decode_dataclass(cls, data, where))
    except _FieldError as e:
        raise CheckpointError(f"{source}: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{source}: {where} is nested too deeply") from None


def plain_data(x: Any) -> Any:
    """Config data as JSON/YAML-ready plain values: dicts and lists all the way down (tuples become lists)."""
    if isinstance(x, dict):
        return {k: plain_data(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain_data(v) for v in x]
    return x


def config_to_json(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready data (tuples become lists)."""
    return typing.cast(dict[str, Any], plain_data(dataclasses.asdict(config)))
