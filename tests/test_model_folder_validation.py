"""Malformed model folders: every class of bad config.json is a CheckpointError naming the file and the field.

One table per failure class; each row corrupts a freshly saved folder and names the fragment the message must
contain. (A property-based fuzz suite over the same entry points can call ``Model.read_config`` or
``Model.from_pretrained`` directly.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file, save_file

from flexitok.errors import CheckpointError
from flexitok.models.classifier import ClassifierConfig, SmallCNN
from flexitok.models.flextok import FlexTok
from flexitok.models.generator import Generator, generator_preset
from flexitok.utils.config_json import config_from_json

Edit = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Edit:
    """Set ``config.<path>`` (dotted, ``[i]`` for list items) in the parsed config.json."""

    def edit(blob: dict[str, Any]) -> dict[str, Any]:
        node: Any = blob["config"]
        parts = path.replace("]", "").replace("[", ".").split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return blob

    return edit


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tiny_model(0).save_pretrained(root / "tokenizer")
    Generator(generator_preset("tiny", vocab_size=50, n_tokens=8, num_classes=3)).save_pretrained(root / "generator")
    SmallCNN(ClassifierConfig(image_size=8, num_classes=3, width=8)).save_pretrained(root / "classifier")
    return {p.name: p for p in root.iterdir()}


_CLASSES = {"tokenizer": FlexTok, "generator": Generator, "classifier": SmallCNN}


def _load_corrupted(
    folders: dict[str, Path], kind: str, tmp_path: Path, raw: bytes, keep_config_hash: bool = True
) -> CheckpointError:
    import shutil

    folder = tmp_path / kind
    shutil.copytree(folders[kind], folder)
    (folder / "config.json").write_bytes(raw)
    if not keep_config_hash:  # judge the config against the weights, not against the record of the saved config
        weights = folder / "model.safetensors"
        save_file(load_file(str(weights)), str(weights), {"format": "flexitok", "model": kind})
    with pytest.raises(CheckpointError) as err:
        _CLASSES[kind].from_pretrained(folder)
    return err.value


# (kind, raw config.json bytes, message fragment): files that are not a config object at all.
NOT_AN_OBJECT = [
    ("tokenizer", b"\x00\xff garbage", "is not valid JSON"),
    ("generator", b"", "is not valid JSON"),
    ("classifier", b"[1, 2, 3]", "must hold a JSON object, got list"),
    ("tokenizer", b'"just a string"', "must hold a JSON object, got str"),
    ("tokenizer", b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),
    ("generator", b'{"format": "flexitok", "version": 2, "model": "generator"}', "field 'config' is missing"),
    ("generator", b'{"format": "flexitok", "version": 99, "model": "generator", "config": {}}', "newer flexitok"),
    ("classifier", b'{"format": "flexitok", "version": "2", "model": "classifier", "config": {}}', "field 'version'"),
    ("classifier", b'{"format": "flexitok", "version": 2, "model": "classifier", "config": []}', "must be a mapping"),
    ("classifier", b'{"format": "other"}', "field 'format' must be 'flexitok'"),
    ("tokenizer", b'{"format": "other"}', "is not a valid official FlexTok checkpoint"),  # the other reader
]


@pytest.mark.parametrize("kind, raw, message", NOT_AN_OBJECT)
def test_files_that_are_not_a_config(folders, tmp_path, kind, raw, message) -> None:
    err = _load_corrupted(folders, kind, tmp_path, raw)
    assert message in str(err) and ("config.json" in str(err) or "official" in message), str(err)


# (kind, edit, message fragment): wrong types, bad sizes, bad FSQ levels, non-finite floats, unknown fields.
BAD_FIELDS: list[tuple[str, Edit, str]] = [
    ("tokenizer", _set("encoder.transformer.dim", "64"), "config.encoder.transformer.dim must be an integer"),
    ("tokenizer", _set("encoder.transformer.depth", True), "config.encoder.transformer.depth must be an integer"),
    (
        "tokenizer",
        _set("decoder.transformer.depth", -3),
        "config.decoder.transformer.depth must be an integer in [1, 1024]",
    ),
    ("tokenizer", _set("encoder.n_registers", 0), "config.encoder.n_registers must be an integer in [1, 65536]"),
    ("tokenizer", _set("image_size", [32]), "config.image_size must have 2 items"),
    ("tokenizer", _set("image_size", {"h": 32}), "config.image_size must be a list"),
    ("tokenizer", _set("fsq_levels[0]", 8.5), "config.fsq_levels[0] must be an integer"),
    ("tokenizer", _set("fsq_levels[1]", 8.0), "config.fsq_levels[1] must be an integer"),
    ("tokenizer", _set("fsq_levels[2]", 1), "config.fsq_levels[2] must be an integer in [2, 65536]"),
    ("tokenizer", _set("fsq_levels", []), "config.fsq_levels must not be empty"),
    ("tokenizer", _set("vae.kind", "vqgan"), "config.vae.kind must be one of ['diffusers', 'identity']"),
    ("tokenizer", _set("vae.scaling_factor", 0), "config.vae.scaling_factor must lie in (0, 10000]"),
    ("tokenizer", _set("encoder.transformer.norm_eps", float("nan")), "norm_eps must be a finite number"),
    ("tokenizer", _set("encoder.transformer.mlp_ratio", float("inf")), "mlp_ratio must be a finite number"),
    (
        "tokenizer",
        _set("encoder.transformer.head_dim", 48),
        "config.encoder.transformer is not a valid TransformerConfig",
    ),
    ("tokenizer", _set("decoder.bogus", 1), "unknown config key 'config.decoder.bogus'"),
    ("tokenizer", _set("vae.diffusers_config", {"a": [0] * 1000}), "config.vae.diffusers_config.a has more than"),
    ("tokenizer", _set("vae.kind", "diffusers"), "config.vae"),
    ("generator", _set("condition", "audio"), "config.condition must be one of ['class', 'text', 'none']"),
    ("generator", _set("vocab_size", 10**12), "config.vocab_size must be an integer in [2, 16777216]"),
    ("generator", _set("dropout", 1.5), "config.dropout must lie in [0, 1]"),
    ("generator", _set("class_names", ["a", "b"]), "config is not a valid GeneratorConfig"),
    ("generator", _set("text_encoder", "x" * 5000), "config.text_encoder is an over-long string"),
    ("classifier", _set("width", 12), "config is not a valid ClassifierConfig: width must be a multiple of 8"),
    ("classifier", _set("class_names", ["a"]), "config is not a valid ClassifierConfig: 1 class names"),
    ("classifier", _set("num_classes", None), "config.num_classes must not be null"),
]


@pytest.mark.parametrize("kind, edit, message", BAD_FIELDS, ids=[m for _, _, m in BAD_FIELDS])
def test_bad_fields_name_the_file_and_the_field(folders, tmp_path, kind, edit, message) -> None:
    blob = json.loads((folders[kind] / "config.json").read_text())
    err = _load_corrupted(folders, kind, tmp_path, json.dumps(edit(blob)).encode(), keep_config_hash=False)
    assert message in str(err) and "config.json" in str(err), str(err)


# Sizes that would allocate far too much: refused from the config alone, before anything is built.
ABSURD: list[tuple[str, Edit, str]] = [
    (
        "tokenizer",
        lambda b: _set("decoder.transformer.depth", 1024)(_set("decoder.transformer.dim", 65536)(b)),
        "over the limit",
    ),
    ("generator", lambda b: _set("dim", 65536)(_set("n_heads", 512)(_set("depth", 1024)(b))), "over the limit"),
    ("generator", _set("vocab_size", 2**24), "holds"),  # under the ceiling, but not what the weights hold
    ("classifier", _set("width", 1024), "holds"),
]


@pytest.mark.parametrize("kind, edit, message", ABSURD)
def test_absurd_sizes_are_refused_before_allocation(folders, tmp_path, kind, edit, message) -> None:
    blob = json.loads((folders[kind] / "config.json").read_text())
    start = time.perf_counter()
    err = _load_corrupted(folders, kind, tmp_path, json.dumps(edit(blob)).encode(), keep_config_hash=False)
    assert message in str(err), str(err)
    assert time.perf_counter() - start < 5, "nothing was built"


def test_config_limits_are_honoured(folders, tmp_path) -> None:
    err = _load_corrupted(folders, "classifier", tmp_path, b" " * (5 << 20))
    assert "too large for a model config" in str(err)
    with pytest.raises(CheckpointError, match="over the limit"):
        Generator.from_pretrained(folders["generator"], max_parameters=1000)


def test_read_config_is_a_total_function_over_json(folders) -> None:
    """The validation entry point never raises anything but CheckpointError for JSON-decodable input."""
    samples: list[Any] = [None, 0, -1, 2.5, "x", [], {}, {"dim": {}}, {"depth": [1]}, {"condition": 3}, [[[]]]]
    for sample in samples:
        with pytest.raises(CheckpointError):
            config_from_json(type(Generator.read_config(folders["generator"] / "config.json")), {"dim": sample}, "f")
    assert Generator.read_config(folders["generator"] / "config.json").vocab_size == 50
