"""Config dataclasses <-> plain data: the one typed decoder for every config in flexitok.

Two entry points share one set of rules and messages. :func:`config_from_json` (``config.json`` in model
folders, strict) rebuilds a (nested) config dataclass from decoded JSON and refuses anything a saved config
cannot contain: unknown or missing-without-default keys, wrong types (``true`` for an int, ``2.5`` for an FSQ
level, a string for a number), non-finite floats, sizes outside :data:`INT_BOUNDS` / :data:`FLOAT_BOUNDS`,
over-long lists and strings, and free-form dicts (a diffusers VAE config) that are deep, long or hold huge
numbers; every failure is a :class:`CheckpointError` naming the source file and the field, e.g.
``config.json: config.encoder.transformer.depth must be an integer in [1, 1024], got -3``.
:func:`config_from_dict` (YAML run configs, see :func:`flexitok.train.config.load_run_config`) accepts YAML's
spellings (``"3e-4"``, ``image_size: 32``) and raises :class:`ConfigError`. Both check a class's own
``FIELD_BOUNDS``, finiteness, Optional/Literal/tuple/nested-dataclass fields, name the closest valid key for an
unknown one (``unknown config key 'train.lrr'; did you mean 'train.lr'?``), and run the dataclass's own
``__post_init__`` checks last.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

from flexitok.errors import CheckpointError, ConfigError, FlexiTokError, InvalidInputError

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
        super().__init__(f"{where} {message}" if where else message)


@dataclass(frozen=True)
class _Mode:
    """How the one decoder reads its input.

    ``strict`` (``config.json`` in a model folder, untrusted): exact JSON types, sizes bounded by field name
    (:data:`INT_BOUNDS` / :data:`FLOAT_BOUNDS`), list/string/free-dict limits, no type the file cannot hold.
    Lenient (a YAML run config a person wrote): ``"3e-4"`` is a float, ``2.0`` an int, ``32`` the pair
    ``(32, 32)``, a number a string; values of types the decoder does not model pass through unchanged.
    ``expand(cls, value)`` rewrites the raw value of a ``cls`` field first (e.g. a preset name into fields).
    """

    strict: bool
    expand: Callable[[type, Any], Any] | None = None


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


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


def _decode(value: Any, hint: Any, where: str, name: str, mode: _Mode) -> Any:
    hint, optional = _strip_optional(hint)
    if value is None:
        if optional or hint is Any:
            return None
        raise _FieldError(where, "must not be null")
    if hint is Any:
        return _check_free(value, where) if mode.strict else value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, value, where, mode)
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) or value not in choices:
            raise _FieldError(where, f"must be one of {list(choices)}, got {_short(value)}")
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _decode(value, option, where, name, mode)
            except _FieldError:
                continue
        raise _FieldError(where, f"has an unsupported value {_short(value)}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not mode.strict and args == (int, int) and isinstance(value, int) and not isinstance(value, bool):
            value = (value, value)  # image_size: 32 means 32x32
        if not isinstance(value, (list, tuple)):
            raise _FieldError(where, f"must be a list, got {_type_name(value)}")
        if mode.strict and len(value) > MAX_ITEMS:
            raise _FieldError(where, f"has more than {MAX_ITEMS} items")
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item_hints = [args[0] if args else Any] * len(value)
            if mode.strict and not value:
                raise _FieldError(where, "must not be empty")
        else:
            if len(value) != len(args):
                raise _FieldError(where, f"must have {len(args)} items, got {len(value)}")
            item_hints = list(args)
        return tuple(
            _decode(v, h, f"{where}[{i}]", name, mode) for i, (v, h) in enumerate(zip(value, item_hints, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise _FieldError(where, f"must be an object, got {_type_name(value)}")
        return _check_free(value, where) if mode.strict else value
    if hint is bool:
        if not isinstance(value, bool):
            raise _FieldError(where, f"must be true or false, got {_short(value)}")
        return value
    if hint is int:
        return _decode_int(value, where, name, mode)
    if hint is float:
        return _decode_float(value, where, name, mode)
    if hint is str:
        if not mode.strict and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # YAML reads `name: 2024` as a number
        if not isinstance(value, str):
            raise _FieldError(where, f"must be a string, got {_type_name(value)}")
        if mode.strict and (len(value) > MAX_STRING or "\x00" in value):
            raise _FieldError(where, "is an over-long string or contains NUL")
        return value
    if mode.strict:
        raise _FieldError(where, f"has a type ({hint}) that config.json cannot hold")
    return value


def _decode_int(value: Any, where: str, name: str, mode: _Mode) -> int:
    if not mode.strict and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # YAML reads 1.0e+6 as a float
        elif isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(where, f"must be an integer, got {_short(value)}")
    if mode.strict:
        bound = INT_BOUNDS.get(name, DEFAULT_INT_BOUND)
        if not bound.admits(value):
            raise _FieldError(where, f"must be an integer in {bound.describe()}, got {value}")
    return value


def _decode_float(value: Any, where: str, name: str, mode: _Mode) -> float:
    if not mode.strict and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "3e-4" as a string
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _FieldError(where, f"must be a number, got {_short(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise _FieldError(where, f"must be a finite number, got {value}")
    fbound = FLOAT_BOUNDS.get(name) if mode.strict else None
    if fbound is not None and not fbound.admits(v):
        raise _FieldError(where, f"must lie in {fbound.describe()}, got {value}")
    return v


def _check_field_bound(cls: type, key: str, value: Any, where: str) -> None:
    """The range of a number field from the config class's own ``FIELD_BOUNDS`` (``{name: Bound}``), if any."""
    bound = getattr(cls, "FIELD_BOUNDS", {}).get(key)
    if bound is None or value is None:
        return
    for v in value if isinstance(value, tuple) else (value,):
        if not bound.admits(float(v)):
            raise _FieldError(where, f"must lie in {bound.describe()}, got {v}")


def _decode_dataclass(cls: type, value: Any, where: str, mode: _Mode) -> Any:
    if mode.expand is not None:
        value = mode.expand(cls, value)
    if isinstance(value, cls):
        return value  # already built (a default, or a value a run config filled in)
    if not isinstance(value, dict):
        raise _FieldError(where, f"must be a mapping of {cls.__name__} fields, got {_type_name(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {_join(where, close[0])!r}?" if close else ""
            raise _FieldError("", f"unknown config key {_join(where, str(key))!r}{hint} (valid: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        path = _join(where, name)
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _FieldError(path, "is missing")
            continue
        raw = value[name]
        default = f.default
        if isinstance(raw, dict) and dataclasses.is_dataclass(default) and not isinstance(default, type):
            # A field whose default is a dataclass value (a DecodeConfig) takes a partial mapping as changes to it.
            raw = {**{g.name: getattr(default, g.name) for g in dataclasses.fields(default) if g.init}, **raw}
        kwargs[name] = _decode(raw, hints[name], path, name, mode)
        _check_field_bound(cls, name, kwargs[name], path)
    try:
        return cls(**kwargs)
    except FlexiTokError as e:
        # A run config's own check that already names its key (a ConfigError), or a data error, stands as raised.
        if not mode.strict and (isinstance(e, ConfigError) or not isinstance(e, InvalidInputError)):
            raise
        raise _FieldError(where or "config", f"is not a valid {cls.__name__}: {e}") from None
    except (ValueError, TypeError, ArithmeticError) as e:
        raise _FieldError(where or "config", f"is not a valid {cls.__name__}: {e}") from None


def config_from_json(cls: type[T], data: Any, source: str, where: str = "config") -> T:
    """Build the config dataclass ``cls`` from decoded JSON ``data`` with the strict checks above.

    ``source`` (a file name) and ``where`` (the JSON path of ``data`` in it) prefix every message. Raises
    :class:`CheckpointError`; never anything else for any JSON-decodable ``data``.
    """
    try:
        return typing.cast(T, _decode_dataclass(cls, data, where, _Mode(strict=True)))
    except _FieldError as e:
        raise CheckpointError(f"{source}: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{source}: {where} is nested too deeply") from None


def config_from_dict(
    cls: type[T], data: dict[str, Any], where: str = "", expand: Callable[[type, Any], Any] | None = None
) -> T:
    """Build the config dataclass ``cls`` from a person-written mapping (a YAML run config), leniently.

    Same rules and messages as :func:`config_from_json` without its size limits, plus YAML's spellings (see
    :class:`_Mode`); every failure is a :class:`ConfigError` naming the dotted key, and an unknown key names the
    closest valid one. ``expand(cls, value)`` rewrites the raw value of each nested ``cls`` first.
    """
    try:
        return typing.cast(T, _decode_dataclass(cls, data, where, _Mode(strict=False, expand=expand)))
    except _FieldError as e:
        raise ConfigError(str(e)) from None
    except RecursionError:
        raise ConfigError(f"{where or 'config'} is nested too deeply") from None


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
