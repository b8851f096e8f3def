"""The inference CLI: tokenize, detokenize, reconstruct, convert-official (in-process via main()) + one subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok import DecodeConfig
from flexitok.cli.main import main
from flexitok.config import tiny_config
from flexitok.io.images import load_image
from flexitok.models.flextok import FlexTok

STEPS = ["--steps", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model whose outputs depend on tokens and noise (zero-initialised tensors are filled in)."""
    torch.manual_seed(0)
    model = FlexTok(tiny_config())
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    out = tmp_path_factory.mktemp("model")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model(model_dir: Path) -> FlexTok:
    return FlexTok.from_pretrained(model_dir)


@pytest.fixture()
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in (("wide.png", (40, 56, 3)), ("gray.png", (32, 32)), ("square.png", (32, 32, 3))):
        arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _tokenize_json(images: list[Path], model_dir: Path, out: Path, capsys, *extra: str) -> dict:
    rc, _, err = _run(["tokenize", *map(str, images), "--model", str(model_dir), "-o", str(out), *extra], capsys)
    assert rc == 0, err
    return json.loads(out.read_text())


def test_tokenize_verbose_lists_each_conversion(images, model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "tokens.json"
    rc, _, err = _run(["tokenize", *map(str, images), "--model", str(model_dir), "-o", str(out), "--verbose"], capsys)
    assert rc == 0, err
    assert "wide.png: center-cropped 56x40 to 40x40; resized 40x40 to 32x32" in err
    assert "gray.png: converted L to RGB" in err
    assert "square.png" not in err  # nothing to say when no conversion happened
    assert "--verbose lists each" not in err


def test_tokenize_json_matches_the_api(images, model_dir, model, tmp_path, capsys) -> None:
    out = tmp_path / "tokens.json"
    rc, _, err = _run(
        ["tokenize", *map(str, images), "--model", str(model_dir), "-o", str(out), "--batch-size", "2"], capsys
    )
    assert rc == 0, err
    # Quiet by default: one summary line, no line per image.
    assert "wide.png" not in err and "gray.png" not in err
    assert f"converted 2 of {len(images)} images" in err and "--verbose" in err
    data = json.loads(out.read_text())
    assert data["files"] == [str(p) for p in images]
    assert data["image_size"] == [32, 32] and data["model"] == str(model_dir.resolve())
    expected = model.tokenize(torch.stack([load_image(p, model.image_size).tensor for p in images]))
    assert torch.equal(torch.tensor(data["tokens"]), expected)


def test_tokenize_npy_truncated_stdout_and_folder(images, model_dir, tmp_path, capsys) -> None:
    full = _tokenize_json(images, model_dir, tmp_path / "t.json", capsys)
    rc, _, err = _run(
        ["tokenize", *map(str, images), "--model", str(model_dir), "-o", str(tmp_path / "t.npy"), "-k", "5"], capsys
    )
    assert rc == 0, err
    arr = np.load(tmp_path / "t.npy")
    assert arr.shape == (3, 5) and np.array_equal(arr, np.asarray(full["tokens"])[:, :5])
    # a folder expands to its image files (sorted); JSON goes to stdout without -o
    rc, out, _ = _run(["tokenize", str(images[0].parent), "--model", str(model_dir)], capsys)
    assert rc == 0
    data = json.loads(out)
    assert [Path(f).name for f in data["files"]] == ["gray.png", "square.png", "wide.png"]
    rc, _, err = _run(["tokenize", str(images[0]), "--model", str(model_dir), "-k", "17"], capsys)
    assert rc == 2 and "16" in err


def test_tokenize_corrupt_file_fails_cleanly_or_is_skipped(images, model_dir, tmp_path, capsys) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "t.json"
    rc, _, err = _run(["tokenize", str(images[0]), str(bad), "--model", str(model_dir), "-o", str(out)], capsys)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("error:") and "broken.jpg" in last
    assert not out.exists()
    rc, _, err = _run(
        ["tokenize", str(images[0]), str(bad), "--model", str(model_dir), "-o", str(out), "--skip-invalid"], capsys
    )
    assert rc == 0 and "skipped" in err
    assert json.loads(out.read_text())["files"] == [str(images[0])]
    rc, _, err = _run(["tokenize", str(tmp_path / "nope.png"), "--model", str(model_dir)], capsys)
    assert rc == 2 and "nope.png" in err
    rc, _, err = _run(["tokenize", str(images[0]), "--model", str(tmp_path / "no-model")], capsys)
    assert rc == 2 and err.startswith("error:")


def test_detokenize_writes_named_images_reproducibly(images, model_dir, tmp_path, capsys) -> None:
    tokens = tmp_path / "t.json"
    _tokenize_json(images, model_dir, tokens, capsys)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    # --model comes from the tokens file
    assert _run(["detokenize", str(tokens), "-o", str(a), *STEPS, "--batch-size", "3"], capsys)[0] == 0
    assert _run(["detokenize", str(tokens), "-o", str(b), *STEPS, "--batch-size", "1"], capsys)[0] == 0
    assert _run(["detokenize", str(tokens), "-o", str(c), *STEPS, "--seed", "1"], capsys)[0] == 0
    assert sorted(p.name for p in a.iterdir()) == ["gray.png", "square.png", "wide.png"]
    for name in ("gray.png", "square.png", "wide.png"):
        img_a, img_b, img_c = (np.asarray(Image.open(d / name)).astype(int) for d in (a, b, c))
        assert img_a.shape == (32, 32, 3)
        assert np.abs(img_a - img_b).max() <= 1  # independent of --batch-size (up to float rounding)
        assert np.abs(img_a - img_c).mean() > 10  # depends on --seed


def test_detokenize_npy_prefix_and_single_output(images, model_dir, model, tmp_path, capsys) -> None:
    rc, _, _ = _run(["tokenize", str(images[2]), "--model", str(model_dir), "-o", str(tmp_path / "t.npy")], capsys)
    assert rc == 0
    out = tmp_path / "one.png"
    rc, _, err = _run(
        [
            "detokenize",
            str(tmp_path / "t.npy"),
            "-o",
            str(out),
            "-k",
            "4",
            "--model",
            str(model_dir),
            *STEPS,
            "--guidance-scale",
            "3",
            "--no-apg",
            "--seed",
            "5",
        ],
        capsys,
    )
    assert rc == 0, err
    tokens = torch.from_numpy(np.load(tmp_path / "t.npy")).long()[:, :4]
    noise = model.initial_noise(1, torch.Generator().manual_seed(5))
    expected = model.detokenize(tokens, DecodeConfig(steps=2, guidance_scale=3.0, apg=False), noise=noise)[0]
    expected_u8 = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(out)), expected_u8)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"tokens": [[1, 2, 64000]]}, "id 64000 at position 2"),
        ({"tokens": [[-1]]}, "id -1 at position 0"),
        ({"tokens": [list(range(17))]}, "17 tokens; this model takes at most 16"),
        ({"tokens": [[1, 2.5]]}, "not an integer"),
        ({"tokens": [[]]}, "empty"),
        ({"tokens": "1,2,3"}, "non-empty list"),
        ("{not json", "not valid JSON"),
    ],
)
def test_detokenize_rejects_bad_token_files(model_dir, tmp_path, capsys, content, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    out = tmp_path / "out"
    rc, _, err = _run(["detokenize", str(path), "-o", str(out), "--model", str(model_dir), *STEPS], capsys)
    assert rc == 2 and err.startswith("error:") and message in err, err
    assert not out.exists()


def test_detokenize_rejects_float_npy(model_dir, tmp_path, capsys) -> None:
    np.save(tmp_path / "f.npy", np.zeros((1, 4), dtype=np.float32))
    rc, _, err = _run(
        ["detokenize", str(tmp_path / "f.npy"), "-o", str(tmp_path / "o"), "--model", str(model_dir)], capsys
    )
    assert rc == 2 and "integers" in err


def test_reconstruct_grid(images, model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "grid.png"
    rc, _, err = _run(
        [
            "reconstruct",
            str(images[2]),
            str(images[0]),
            "--tokens",
            "1,4,16",
            "-o",
            str(out),
            "--model",
            str(model_dir),
            *STEPS,
            "--batch-size",
            "4",
        ],
        capsys,
    )
    assert rc == 0, err
    grid = np.asarray(Image.open(out))
    pad, cell = 2, 32
    width = pad + 4 * (cell + pad)
    height = pad + 2 * (cell + pad)
    assert grid.shape[1] == width and grid.shape[0] > height  # label strip on top
    top = grid.shape[0] - height
    first = grid[top + pad : top + pad + cell, pad : pad + cell]
    assert np.array_equal(first, np.asarray(Image.open(images[2])))  # input column = the (unchanged) input
    cols = [
        grid[top + pad : top + pad + cell, pad + j * (cell + pad) : pad + j * (cell + pad) + cell] for j in range(4)
    ]
    assert not np.array_equal(cols[1], cols[3])  # k=1 and k=16 decode differently
    rc, _, err = _run(
        ["reconstruct", str(images[0]), "--tokens", "1,32", "-o", str(out), "--model", str(model_dir)], capsys
    )
    assert rc == 2 and "outside 1..16" in err


def test_convert_official(official_dir, tmp_path, capsys) -> None:
    out = tmp_path / "converted"
    rc, _, err = _run(["convert-official", str(official_dir / "model.safetensors"), str(out)], capsys)
    assert rc == 0, err
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    ours = FlexTok.from_pretrained(out).state_dict()
    ref = FlexTok.from_official(official_dir / "model.safetensors").state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    rc, _, err = _run(["convert-official", str(official_dir), str(out)], capsys)
    assert rc == 2 and "--force" in err
    assert _run(["convert-official", str(official_dir), str(out), "--force"], capsys)[0] == 0
    rc, _, err = _run(["convert-official", str(tmp_path / "missing.safetensors"), str(tmp_path / "x")], capsys)
    assert rc == 2 and "missing.safetensors" in err


def test_unavailable_device_is_a_clear_error(images, model_dir, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, _, err = _run(["tokenize", str(images[0]), "--model", str(model_dir), "--device", "cuda"], capsys)
    assert rc == 2 and "CUDA" in err


def test_console_script_corrupt_file_exit_code_without_traceback(model_dir, tmp_path) -> None:
    script = Path(sys.executable).parent / "flexitok"
    exe = str(script) if script.exists() else shutil.which("flexitok")
    assert exe, "the flexitok console script is not installed (pip install -e .)"
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    proc = subprocess.run(
        [exe, "tokenize", str(bad), "--model", str(model_dir), "-o", str(tmp_path / "t.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "corrupt.png" in proc.stderr
    assert not (tmp_path / "t.json").exists()
