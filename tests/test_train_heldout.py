"""Training-time evaluation on fixed held-out data (issue 20.2), and every shipped config run for a few steps.

With ``train.eval_every > 0`` and no ``eval_data`` a run evaluates on the held-out split of its source (or on
samples it never trains on), says which at start, and refuses at start when there is nothing to hold out. The
paper configs train on webdataset shards: before the fix their first periodic evaluation crashed (an iterable
dataset has no ``len()``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_vae_config
from PIL import Image

from flexitok.cli.main import main
from flexitok.data import DataConfig, build_dataset, write_folder_shards
from flexitok.errors import ConfigError
from flexitok.train.heldout import FixedEvalSet, held_out_data

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
TOKENS = Path(__file__).parent / "fixtures" / "train-regression" / "fmnist-tokens"
FAST = ["train.progress=false", "train.cpu_threads=1", "train.log_every=1", "train.precision=fp32"]


def _image_tree(root: Path, splits: tuple[str, ...], per_class: int = 3) -> Path:
    """``root/<split>/<class>/*.png|jpg``: 2 classes, mixed sizes and modes."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                size = (40 + 8 * i, 36 + 4 * c)
                img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
                if i % 2:
                    img.convert("L").save(d / f"{i}.jpg")
                else:
                    img.save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("heldout")
    folder = _image_tree(tmp / "images", ("train", "test"))
    shards = tmp / "shards"
    for split in ("train", "test"):
        write_folder_shards(folder / split, shards / split, shard_size=4)
    return {"folder": folder, "shards": shards, "tmp": tmp}


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_webdataset_eval_reads_a_fixed_list_of_the_held_out_split(data_root: dict[str, Path]) -> None:
    cfg = DataConfig(kind="webdataset", path=str(data_root["shards"]), image_size=16, random_resized_crop=(0.5, 1))
    train_cfg, eval_ds = held_out_data(cfg, None, 3, enabled=True)
    assert isinstance(eval_ds, FixedEvalSet) and len(eval_ds) == 3
    assert "test" in eval_ds.description
    assert train_cfg.split == "train"
    again = held_out_data(cfg, None, 3, enabled=True)[1]
    assert again is not None
    for a, b in zip(eval_ds.items, again.items, strict=True):  # no augmentation: the same images every time
        assert torch.equal(a["image"], b["image"])
    assert held_out_data(cfg, None, 3, enabled=False) == (cfg, None)


def test_eval_every_without_anything_to_hold_out_refuses_at_start(tmp_path: Path, capsys) -> None:
    tiny = _image_tree(tmp_path / "tiny", ("train",), per_class=1)  # 2 images, no held-out split
    out = tmp_path / "run"
    argv = ["train", "tokenizer", "data.kind=folder", f"data.path={tiny}", "train.eval_every=1", "task.eval_images=8"]
    assert main([*argv, f"train.out_dir={out}", *FAST]) == 2
    err = capsys.readouterr().err
    assert "eval_every" in err and "Traceback" not in err
    assert not out.exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="eval_every"):
        held_out_data(DataConfig(kind="folder", path=str(tiny)), None, 8, enabled=True)


def _overrides(name: str, env: dict[str, Path], out: Path) -> list[str]:
    """Shrink a shipped config to a few seconds of CPU: tiny model, tiny images, local data, eval every step."""
    common = [*FAST, f"train.out_dir={out}", "train.steps=2", "train.eval_every=1", "train.ckpt_every=1"]
    common += ["train.batch_size=2", "train.grad_accum=1", "train.compile=false", "train.num_workers=0"]
    if name.startswith("generator"):
        return [*common, f"data.path={TOKENS}", f"data.eval_path={TOKENS}", "data.limit=16", "task.eval_batches=1"]
    vae = json.dumps(tiny_vae_config(latent_channels=4, blocks=2))
    if name.startswith(("vae", "photo-vae")):
        folder = [f"data.path={env['folder']}", "data.kind=folder", "data.image_size=16"]
        if "eval_data" in (ROOT / "configs" / name).read_text():
            folder += [f"eval_data.path={env['folder']}", "eval_data.split=test", "eval_data.image_size=16"]
        blocks = ["model.block_out_channels=[8,8]", "model.norm_num_groups=4", "model.layers_per_block=1"]
        blocks += ["model.pretrained=null"]
        return [*common, *folder, *blocks, "task.eval_images=2", "task.disc_channels=8", "task.disc_layers=2"]
    task = ["task.eval_images=2", "task.eval_ks=[1,4]", "task.eval_decode.steps=2", "task.repa_encoder=null"]
    task += ["task.repa_hidden=16", "init_from=null"]
    tiny = ["model.encoder.n_registers=4", "model.fsq_levels=[5,5]", "model.image_size=16"]
    tiny += ["model.encoder.transformer={dim: 32, depth: 2, head_dim: 16}"]
    tiny += ["model.decoder.transformer={dim: 32, depth: 2, head_dim: 16}"]
    if name.startswith("tokenizer-d") or name in ("photo-tokenizer.yaml", "tokenizer-tutorial-tiny.yaml"):
        data = ["data.kind=webdataset", f"data.path={env['shards']}", "data.shuffle_buffer=4", "latents=null"]
        model = ["model.preset=tiny", *tiny, "model.encoder.patch_size=[2,2]", "model.decoder.patch_size=[2,2]"]
        model += ["model.vae.pretrained=null", f"model.vae.diffusers_config={vae}", "model.vae.latent_channels=4"]
        model += ["model.vae.downsample=2", "model.vae.scaling_factor=1.0"]
        model += ["task.repa_layer=1"]  # a block of the 2-deep test decoder
        return [*common, *data, "data.image_size=16", *model, *task]
    if name == "finetune-512.yaml":
        from flexitok.config import tiny_config
        from flexitok.models.flextok import FlexTok

        src = env["tmp"] / "finetune-src"
        if not src.exists():
            torch.manual_seed(0)
            FlexTok(tiny_config(image_size=16, n_registers=4, dim=32)).save_pretrained(src)
        model = ["model.preset=tiny", "model.image_size=[32,32]", "model.encoder.n_registers=4"]
        model += ["model.encoder.transformer.dim=32", "model.decoder.transformer.dim=32", f"init_from={src}"]
        return [*common, f"data.path={env['folder']}", "data.image_size=32", *model, *task]
    # the Fashion-MNIST tokenizers: the test split is the held-out split
    return [*common, "data.limit=8", *tiny, "data.image_size=16", *task]


def _run_config(config: str, env: dict[str, Path], out: Path) -> None:
    target = "generator" if config.startswith("generator") else "vae" if "vae" in config else "tokenizer"
    argv = ["train", target, "--config", str(ROOT / "configs" / config), *_overrides(config, env, out)]
    n = torch.get_num_threads()
    try:
        assert main(argv) == 0, " ".join(argv)
    finally:
        torch.set_num_threads(n)
    rows = _metrics(out)
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evals] == [1, 2]
    keys = set(evals[-1])
    if target == "tokenizer":
        assert {"eval/psnr_k1", "eval/psnr_k4", "eval/fd_k1", "eval/fd_k4"} <= keys
        assert all(np.isfinite(evals[-1][k]) for k in keys if k.startswith("eval/"))
    elif target == "vae":
        assert {"eval/psnr", "eval/fd"} <= keys
    else:
        assert "eval/eval_loss" in keys


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_config_trains_and_evaluates_at_reduced_size(
    config: str, data_root: dict[str, Path], tmp_path: Path
) -> None:
    _run_config(config, data_root, tmp_path / "run")


def test_paper_config_on_webdataset_evaluates_on_the_held_out_split(
    data_root: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """The crash of issue 20.2 (a paper config on shards reaching its first evaluation), in the default tier."""
    _run_config("tokenizer-d12-d12.yaml", data_root, tmp_path / "run")
    assert "evaluation every 1 steps on 2 images: split 'test' of" in capsys.readouterr().out


def test_generator_without_eval_path_holds_out_the_last_batches(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen"
    argv = ["train", "generator", "--config", str(ROOT / "configs" / "generator-tiny-fmnist.yaml"), *FAST]
    argv += [f"data.path={TOKENS}", "data.limit=160", "task.eval_batches=1", "train.eval_every=1", "train.steps=1"]
    argv += ["train.batch_size=4", "model.dim=32", "model.depth=1", "model.n_heads=2", f"train.out_dir={out}"]
    assert main(argv) == 0
    assert f"the last 64 samples of {TOKENS}" in capsys.readouterr().out
    assert "eval/eval_loss" in _metrics(out)[-1]
    argv[argv.index("data.limit=160")] = "data.limit=100"  # 100 < 2 x 64: nothing sensible to hold out
    assert main([*argv[:-1], f"train.out_dir={tmp_path / 'small'}"]) == 2
    assert "data.eval_path" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, match",
    [("model.num_classes=7", "num_classes = 7 but the token shards hold 10"), ("model.class_names=[a,b]", "differ")],
)
def test_generator_classes_come_from_the_shards(override: str, match: str) -> None:
    from flexitok.train.generator import load_training_config

    config = ROOT / "configs" / "generator-tiny-fmnist.yaml"
    cfg = load_training_config(config, [f"data.path={TOKENS}"])
    assert cfg.model.num_classes == 10 and cfg.model.class_names is not None
    assert cfg.model.class_names[7] == "Sneaker"
    with pytest.raises(ConfigError, match=match):
        load_training_config(config, [f"data.path={TOKENS}", override])


def test_a_source_without_a_held_out_split_gives_up_samples_it_never_trains_on(data_root: dict[str, Path]) -> None:
    cfg = DataConfig(kind="folder", path=str(data_root["folder"] / "train"), image_size=16)  # 6 images, no splits
    train_cfg, eval_ds = held_out_data(cfg, None, 2, enabled=True)
    assert eval_ds is not None and len(eval_ds) == 2 and "held out" in eval_ds.description
    train_ds = build_dataset(train_cfg)
    assert len(train_ds) == 4  # type: ignore[arg-type]
    train_images = [train_ds[i]["image"] for i in range(4)]
    for item in eval_ds.items:
        assert not any(torch.equal(item["image"], t) for t in train_images)
