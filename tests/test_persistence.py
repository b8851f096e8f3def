"""The one persistence mechanism (flexitok.utils.persistence) for every model class."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_vae_config
from safetensors.torch import load_file, save_file

from flexitok.config import FlexTokConfig, VAEConfig, tiny_config
from flexitok.errors import CheckpointError, InvalidInputError
from flexitok.models.classifier import ClassifierConfig, SmallCNN
from flexitok.models.flextok import FlexTok
from flexitok.models.generator import Generator, generator_preset
from flexitok.utils.persistence import FORMAT_VERSION, PretrainedModel


def _diffusers_tok_config(**vae: object) -> FlexTokConfig:
    base = tiny_config()
    return FlexTokConfig(
        image_size=(16, 16),
        vae=VAEConfig(kind="diffusers", latent_channels=4, downsample=2, **vae),  # type: ignore[arg-type]
        encoder=base.encoder,
        decoder=base.decoder,
    )


def _strip_config_hash(weights: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != "config_sha256"}
    save_file(load_file(str(weights)), str(weights), meta)


def _models() -> dict[str, PretrainedModel]:
    torch.manual_seed(0)
    return {
        "tokenizer": tiny_model(0),
        "tokenizer-vae": FlexTok(_diffusers_tok_config(diffusers_config=tiny_vae_config())),
        "generator": Generator(generator_preset("tiny", vocab_size=50, n_tokens=8, num_classes=3)),
        "classifier": SmallCNN(ClassifierConfig(image_size=8, num_classes=3, width=8)),
    }


@pytest.mark.parametrize("name", ["tokenizer", "tokenizer-vae", "generator", "classifier"])
def test_roundtrip_is_exact_and_tagged(name: str, tmp_path: Path) -> None:
    model = _models()[name]
    before = copy.deepcopy(model.config)
    out = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    blob = json.loads((out / "config.json").read_text())
    assert (blob["format"], blob["version"], blob["model"]) == ("flexitok", FORMAT_VERSION, model.model_type)
    loaded = type(model).from_pretrained(out)
    assert loaded.config == model.config and not loaded.training
    own, got = model.state_dict(), loaded.state_dict()
    assert own.keys() == got.keys() and all(torch.equal(own[k], got[k]) for k in own)
    assert model.config == before, "saving does not change the model's config"
    assert not [p for p in tmp_path.iterdir() if p.name != "m"], "no temporary folders left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert {(f.stat().st_mode & 0o777) for f in out.iterdir()} == {0o666 & ~umask}, "files follow the umask"


def test_save_does_not_mutate_a_pretrained_vae_config(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    AutoencoderKL.from_config(tiny_vae_config()).save_pretrained(str(tmp_path / "vae"))
    model = FlexTok(_diffusers_tok_config(pretrained=str(tmp_path / "vae")))
    model.save_pretrained(tmp_path / "m")
    assert model.config.vae.pretrained == str(tmp_path / "vae") and model.config.vae.diffusers_config is None
    loaded = FlexTok.from_pretrained(tmp_path / "m")
    assert loaded.config.vae.pretrained is None and loaded.config.vae.diffusers_config is not None
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_device_and_dtype(tmp_path: Path) -> None:
    model = _models()["generator"]
    model.save_pretrained(tmp_path / "g")
    for dtype in (torch.bfloat16, "bf16"):
        g = Generator.from_pretrained(tmp_path / "g", device="cpu", dtype=dtype)
        assert {p.dtype for p in g.parameters()} == {torch.bfloat16}
    with pytest.raises(InvalidInputError, match="unknown dtype"):
        Generator.from_pretrained(tmp_path / "g", dtype="int3")


def test_bundled_models_of_every_kind_load() -> None:
    assert "default" in FlexTok.bundled_names() and "fmnist32" in SmallCNN.bundled_names()
    assert {"default", "default-text"} <= set(Generator.bundled_names())
    clf = SmallCNN.from_pretrained("fmnist32")
    assert clf.config.num_classes == 10


def test_legacy_layouts_still_load(tmp_path: Path) -> None:
    """0.1.0 layouts: format-1 tokenizer folders, 'kind'-tagged generator folders, single-file classifiers."""
    models = _models()
    for name, legacy in (("tokenizer", "v1"), ("generator", "kind")):
        model = models[name]
        folder = tmp_path / name
        model.save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())["config"]
        blob = (
            {"format": "flexitok", "version": 1, "config": config}
            if legacy == "v1"
            else {"kind": "flexitok-generator", **config}
        )
        (folder / "config.json").write_text(json.dumps(blob))
        _strip_config_hash(folder / "model.safetensors")  # 0.1.0 weights carry no hash of config.json
        loaded = type(model).from_pretrained(folder)
        assert loaded.config == model.config
    clf = models["classifier"]
    meta = {"format": "flexitok-classifier", "config": json.dumps(clf.config.__dict__)}
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(tmp_path / "clf.safetensors"), meta)
    assert SmallCNN.from_pretrained(tmp_path / "clf.safetensors").config == clf.config


def test_wrong_model_kind_and_unknown_names(tmp_path: Path) -> None:
    _models()["generator"].save_pretrained(tmp_path / "g")
    with pytest.raises(CheckpointError, match=r"config.json: field 'model' says 'generator'.*tokenizer"):
        FlexTok.from_pretrained(tmp_path / "g")
    with pytest.raises(CheckpointError, match="no classifier at"):
        SmallCNN.from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not a bundled model"):
        Generator.from_pretrained("no-such-generator")


def test_hub_repo_in_our_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    _models()["generator"].save_pretrained(tmp_path / "snap")
    asked = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        asked.append((repo_id, revision))
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert Generator.from_pretrained("someone/gen", revision="v1").config.vocab_size == 50
    assert asked == [("someone/gen", "v1")]

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="no local folder 'nowhere-xyz/nothing', and .*cannot download"):
        Generator.from_pretrained("nowhere-xyz/nothing")
    # A missing model in a folder that exists here is a local path: reported as such, the hub is not asked.
    asked.clear()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no generator at 'runs/nothing': no such file or folder"):
        Generator.from_pretrained("runs/nothing")
    assert asked == []


def test_save_replaces_a_model_folder_whole_and_refuses_other_folders(tmp_path: Path) -> None:
    models = _models()
    folder = tmp_path / "m"
    models["classifier"].save_pretrained(folder)
    (folder / "README.md").write_text("model card")
    other = SmallCNN(ClassifierConfig(image_size=8, num_classes=5, width=16))
    other.save_pretrained(folder)
    assert SmallCNN.from_pretrained(folder).config.num_classes == 5
    assert (folder / "README.md").read_text() == "model card", "the model card is kept"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"refusing to replace .*notes.txt"):
        other.save_pretrained(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    # A temporary folder of a crashed save (dead pid, this host) is removed by the next save.
    import socket

    host = socket.gethostname().replace(".", "_").replace("-", "_")
    stale = tmp_path / f".m.tmp-{host}-999999999-abc"
    stale.mkdir()
    other.save_pretrained(folder)
    assert not stale.exists()


def test_torn_folder_is_detected(tmp_path: Path) -> None:
    models = _models()
    a, b = tmp_path / "a", tmp_path / "b"
    models["classifier"].save_pretrained(a)
    SmallCNN(ClassifierConfig(image_size=8, num_classes=3, width=8, class_names=("x", "y", "z"))).save_pretrained(b)
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())  # same shapes, other save
    with pytest.raises(CheckpointError, match="come from different saves"):
        SmallCNN.from_pretrained(a)


_WRITER = """
import sys, torch
from flexitok.models.classifier import ClassifierConfig, SmallCNN
torch.manual_seed(int(sys.argv[2]))
model = SmallCNN(ClassifierConfig(image_size=8, num_classes=int(sys.argv[2]), width=8))
for _ in range(int(sys.argv[3])):
    model.save_pretrained(sys.argv[1])
"""


def test_concurrent_saves_never_leave_a_torn_folder(tmp_path: Path) -> None:
    """Two processes save different models into one folder while this one keeps loading it."""
    folder = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), str(n), "25"], env=env) for n in (3, 7)]
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        if folder.exists():
            model = SmallCNN.from_pretrained(folder)  # must never fail: always one complete save
            assert model.head.out_features == model.config.num_classes in (3, 7)
            seen.add(model.config.num_classes)
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    assert SmallCNN.from_pretrained(folder).config.num_classes in (3, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"], "no temporary folders left behind"
    assert seen, "the reader saw at least one save"


@pytest.mark.parametrize(
    "model_cls, configs",
    [
        (
            FlexTok,
            [
                tiny_config(),
                tiny_config(image_size=64, dim=128, depth=3),
                _diffusers_tok_config(diffusers_config=tiny_vae_config()),
            ],
        ),
        (
            FlexTok,
            [_diffusers_tok_config(diffusers_config={**tiny_vae_config(blocks=3), "block_out_channels": [32, 64, 64]})],
        ),
        (Generator, [generator_preset("tiny", vocab_size=50, n_tokens=8), generator_preset("small", condition="text")]),
        (SmallCNN, [ClassifierConfig(), ClassifierConfig(width=16, num_classes=3)]),
    ],
)
def test_size_estimate_tracks_the_real_model(model_cls: type[PretrainedModel], configs: list) -> None:
    """The ceiling is checked from the config alone, so the estimate must follow the architecture."""
    for config in configs:
        actual = sum(v.numel() for v in model_cls(config).state_dict().values())  # type: ignore[call-arg]
        assert 0.66 <= model_cls.estimate_state_size(config) / actual <= 1.5, (config, actual)


def test_loaded_weights_are_checked_against_the_header_and_for_finite_values(tmp_path: Path) -> None:
    model = _models()["classifier"]
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    good = weights.read_bytes()
    meta = {"format": "flexitok", "model": "classifier"}  # no config hash: only the tensors are judged
    cases = {
        "NaN or infinite": lambda t: t.__setitem__("head.weight", torch.full_like(t["head.weight"], float("nan"))),
        "stored as I64": lambda t: t.__setitem__("head.bias", t["head.bias"].long()),
        "unexpected keys": lambda t: t.__setitem__("extra", torch.zeros(1)),
        "missing keys": lambda t: t.pop("head.bias"),
        "shape mismatches": lambda t: t.__setitem__("head.bias", torch.zeros(4)),
    }
    for message, corrupt in cases.items():
        weights.write_bytes(good)
        tensors = load_file(str(weights))
        corrupt(tensors)
        save_file(tensors, str(weights), meta)
        with pytest.raises(CheckpointError, match=message) as err:
            SmallCNN.from_pretrained(tmp_path / "m")
        assert "model.safetensors" in str(err.value)
