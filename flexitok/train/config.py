"""Typed run configs for ``flexitok train``: YAML files plus dotted command-line overrides.

A run config is a tree of dataclasses (a :class:`RunConfig` per ``flexitok train`` target: tokenizer, VAE and
generator alike). ``load_run_config(cls, path, ["train.lr=3e-4", "data.image_size=32"])`` reads the YAML into
nested dicts, applies the overrides, lets the run config complete the tree (:meth:`RunConfig.resolve_tree`, e.g.
defaults read from the data), then builds the dataclasses field by field; an unknown key anywhere raises
:class:`ConfigError` naming the dotted path and the closest valid key.

``model`` in a tokenizer config is either a preset name (``d12-d12``, ``tiny``, ...; see
:func:`flexitok.config.preset`) or a mapping of :class:`flexitok.config.FlexTokConfig` fields, optionally with a
``preset`` key to start from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from flexitok.config import PRESETS, FlexTokConfig, preset
from flexitok.errors import ConfigError, FlexiTokError, InvalidInputError
from flexitok.utils.config_json import plain_data

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- run configs


class RunConfig:
    """Base of the run configs (``model``, ``data``, ``train``: :class:`~flexitok.train.options.TrainConfig`,
    ``task`` sections). Each lives with its target: :class:`flexitok.train.tokenizer.TokenizerTrainConfig`,
    :class:`flexitok.train.vae.VAETrainConfig`, :class:`flexitok.train.generator.GeneratorTrainConfig`,
    :class:`flexitok.train.classifier.ClassifierTrainConfig`."""

    @classmethod
    def resolve_tree(cls, tree: dict[str, Any]) -> dict[str, Any]:
        """Complete the raw tree (YAML + overrides) before it is typed; default: unchanged."""
        return tree


# ---------------------------------------------------------------------------------------------- parsing


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 3e-4). Values are parsed as YAML (lists, bools, null, numbers)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr=3e-4)")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key component")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return parts, parsed


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in the nested dict ``tree`` (creating intermediate mappings; validated at build)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif i == 0 and part == "model" and isinstance(child, str):
                child = node[part] = {"preset": child}  # a preset name, refined by the override
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return tree


def _expand_model(value: Any) -> Any:
    """A preset name, or a mapping with an optional ``preset`` key, -> a FlexTokConfig field dict."""
    if value is None:
        return {}
    if isinstance(value, str):
        if value not in PRESETS:
            raise ConfigError(f"model: unknown preset {value!r}; choose one of {sorted(PRESETS)}")
        return preset(value).to_dict()
    if isinstance(value, dict) and "preset" in value:
        rest = dict(value)
        base = _expand_model(rest.pop("preset"))
        return _deep_merge(base, rest)
    return value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _convert(value: Any, hint: Any, where: str) -> Any:
    hint, optional = _strip_optional(hint)
    if value is None:
        if optional or hint is Any:
            return None
        raise ConfigError(f"{where} must not be null")
    if hint is FlexTokConfig and isinstance(value, str):
        value = _expand_model(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {hint.__name__} fields, got {value!r}")
        return build_dataclass(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if typing.get_args(hint) == (int, int) and isinstance(value, int) and not isinstance(value, bool):
            value = (value, value)  # image_size=32 means 32x32
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item_hint = args[0] if args else Any
        return tuple(_convert(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where} must be one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)  # YAML 1.1 reads "3e-4" as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return number
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def build_dataclass(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Build ``cls`` from a dict, recursively, rejecting unknown keys with a did-you-mean hint."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    if cls is FlexTokConfig:
        values = _expand_model(values)
    # A field whose default is a dataclass value (e.g. a DecodeConfig) takes a partial mapping as changes to it.
    value_defaults = {
        f.name: f.default
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if dataclasses.is_dataclass(f.default) and not isinstance(f.default, type)
    }
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {(f'{where}.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint} (valid: {', '.join(names)})")
        if key in value_defaults and isinstance(value, dict):
            default = value_defaults[key]
            value = {**{f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.init}, **value}
        kwargs[key] = _convert(value, hints[key], path)
        _check_bound(cls, key, kwargs[key], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except InvalidInputError as e:  # a __post_init__ check: say which section it is about
        raise ConfigError(f"{where}: {e}" if where else str(e)) from e
    except FlexiTokError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid {where or cls.__name__} config: {e}") from e


def _check_bound(cls: type, key: str, value: Any, path: str) -> None:
    """The range of a number field, from the config class's ``FIELD_BOUNDS`` (``{name: Bound}``), if it has one."""
    bound = getattr(cls, "FIELD_BOUNDS", {}).get(key)
    if bound is None or value is None:
        return
    for v in value if isinstance(value, tuple) else (value,):
        if not bound.admits(float(v)):
            raise ConfigError(f"{path} must lie in {bound.describe()}, got {v}")


def load_run_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + dotted overrides -> a typed run config ``cls``."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not a text (UTF-8 YAML) file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must contain a mapping at the top level")
        tree = loaded or {}
    tree = apply_overrides(tree, list(overrides or []))
    if isinstance(cls, type) and issubclass(cls, RunConfig):
        tree = cls.resolve_tree(tree)
    return build_dataclass(cls, tree)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A run config as plain YAML-able data (tuples become lists)."""
    return typing.cast(dict[str, Any], plain_data(dataclasses.asdict(cfg)))
