"""Typed run configs for ``flexitok train``: YAML files plus dotted command-line overrides.

A run config is a tree of dataclasses (a :class:`RunConfig` per ``flexitok train`` target: tokenizer, VAE and
generator alike). ``load_run_config(cls, path, ["train.lr=3e-4", "data.image_size=32"])`` reads the YAML into
nested dicts, applies the overrides, lets the run config complete the tree (:meth:`RunConfig.resolve_tree`, e.g.
defaults read from the data), then builds the dataclasses with the one typed decoder
(:func:`flexitok.utils.config_json.config_from_dict`); an unknown key anywhere raises :class:`ConfigError` naming
the dotted path and the closest valid key.

``model`` in a tokenizer config is either a preset name (``d12-d12``, ``tiny``, ...; see
:func:`flexitok.config.preset`) or a mapping of :class:`flexitok.config.FlexTokConfig` fields, optionally with a
``preset`` key to start from.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from flexitok.config import PRESETS, FlexTokConfig, preset
from flexitok.errors import ConfigError
from flexitok.utils.config_json import config_from_dict, plain_data

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- run configs


class RunConfig:
    """Base of the run configs (``model``, ``data``, ``train``: :class:`~flexitok.train.trainer_config.TrainerConfig`,
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


def _expand_presets(cls: type, value: Any) -> Any:
    """The decoder's hook: a ``model`` section may name a preset (or start from one)."""
    if cls is FlexTokConfig and (isinstance(value, str) or (isinstance(value, dict) and "preset" in value)):
        return _expand_model(value)
    return value


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
    return config_from_dict(cls, tree, expand=_expand_presets)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A run config as plain YAML-able data (tuples become lists)."""
    return typing.cast(dict[str, Any], plain_data(dataclasses.asdict(cfg)))
