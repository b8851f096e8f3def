"""The shared validation layer for user-facing settings and the demo's limits (#11): the examples of the issue,
each as a test of its class (the fuzz suite, tests/test_fuzz.py, covers the same classes with generated inputs)."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from flexitok.cli.demo import DEMO_MODELS
from flexitok.cli.main import build_parser, main
from flexitok.codec.ftok import FtokError, FtokFile, read_ftok
from flexitok.errors import InvalidInputError
from flexitok.io.images import load_image
from flexitok.sampling.ar import ARSamplingConfig
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.limits import MAX_DECODE_STEPS, MAX_SEED
from tests.conftest import tiny_model
from tests.fuzz_support import alarm

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 0}, "decoder steps must be an integer in 1..1000"),
        ({"steps": MAX_DECODE_STEPS + 1}, "decoder steps"),
        ({"steps": 2.0}, "decoder steps must be an integer"),
        ({"steps": True}, "decoder steps must be an integer"),
        ({"guidance_scale": math.nan}, "decoder guidance scale must be a finite number"),
        ({"guidance_scale": math.inf}, "finite"),
        ({"guidance_scale": -0.5}, r"must lie in \[0.0, 100.0\]"),
        ({"guidance_scale": 1e30}, r"\[0.0, 100.0\]"),
        ({"guidance_scale": "7"}, "must be a number"),
        ({"seed": -1}, "decoder seed must be an integer in 0..4294967295"),
        ({"seed": 2**70}, "decoder seed"),
        ({"seed": 1.0}, "decoder seed must be an integer"),
        ({"apg": 1}, "apg must be True or False"),
    ],
)
def test_decode_config_refuses_out_of_range_settings(fields, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        DecodeConfig(**fields)


def test_decode_config_accepts_its_documented_bounds() -> None:
    cfg = DecodeConfig(steps=MAX_DECODE_STEPS, guidance_scale=100, seed=MAX_SEED)
    assert (cfg.steps, cfg.guidance_scale, cfg.seed) == (1000, 100.0, MAX_SEED)
    assert DecodeConfig(guidance_scale=0).guidance_scale == 0.0
    assert DecodeConfig(guidance_scale=lambda t: 3.0).guider() is not None  # schedules are the caller's


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": math.nan}, "temperature must be a finite number"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 1e-9}, "0 \\(greedy\\) or at least 0.001"),
        ({"guidance_scale": math.inf}, "generator guidance \\(CFG\\) scale must be a finite number"),
        ({"guidance_scale": 101.0}, "CFG"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer"),
        ({"n_tokens": 2.5}, "n_tokens must be an integer"),
        ({"n_tokens": 0}, "n_tokens"),
        ({"use_cache": "yes"}, "use_cache"),
    ],
)
def test_ar_sampling_config_refuses_out_of_range_settings(fields, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        ARSamplingConfig(**fields)


def test_detokenize_refuses_fractional_keep_k_empty_batches_and_nonfinite_noise() -> None:
    model = tiny_model()
    tokens = torch.zeros(1, 8, dtype=torch.long)
    one_step = DecodeConfig(steps=1)
    with pytest.raises(InvalidInputError, match="keep_k must be an integer"):
        model.detokenize(tokens, one_step, keep_k=2.7)  # was silently 2
    with pytest.raises(InvalidInputError, match="keep_k must be an integer"):
        model.detokenize(tokens, one_step, keep_k=torch.tensor([2.0]))
    with pytest.raises(InvalidInputError, match="empty batch"):
        model.detokenize(torch.zeros(0, 8, dtype=torch.long), one_step)
    for bad in (math.nan, math.inf):
        noise = model.initial_noise(1)
        noise[0, 0, 0, 0] = bad
        with pytest.raises(InvalidInputError, match="finite"):
            model.detokenize(tokens, one_step, noise=noise)
    with pytest.raises(InvalidInputError, match="sides are limited to 4096"):
        model.detokenize(tokens, one_step, image_size=(8192, 8192))
    assert model.detokenize(tokens, one_step, keep_k=2).shape == (1, 3, 32, 32)


def test_cli_refuses_nonfinite_guidance_and_huge_seeds_without_writing(tmp_path: Path, capsys) -> None:
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    tokens = tmp_path / "t.json"
    tokens.write_text(json.dumps({"tokens": [[1, 2, 3]]}))
    for flags, message in (
        (["--guidance-scale", "nan"], "decoder guidance scale must be a finite number"),
        (["--guidance-scale", "inf"], "finite"),
        (["--seed", str(2**70)], "decoder seed must be an integer in 0..4294967295"),
        (["--steps", "65535"], "decoder steps must be an integer in 1..1000"),
    ):
        out = tmp_path / "out"
        rc = main(["detokenize", str(tokens), "-o", str(out), "--model", str(model_dir), "--steps", "1", *flags])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error:") and message in err and "Traceback" not in err, err
        assert not out.exists()


def _ftok_with(data: bytes, **fields) -> bytes:
    """Rewrite fixed header fields of a .ftok file and fix its CRC (a well-formed file with hostile values)."""
    st = struct.Struct("<4sBB16sHHHHIHfB")
    names = ("magic", "version", "bits", "fp", "h", "w", "n", "k", "seed", "steps", "guidance", "flags")
    values = dict(zip(names, st.unpack_from(data), strict=True)) | fields
    body = st.pack(*(values[n] for n in names)) + data[st.size : -4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_ftok_headers_are_bounded_and_checked_against_the_model(tmp_path: Path) -> None:
    model = tiny_model()
    ftok = FtokFile.from_model(model, torch.arange(4), "tiny", DecodeConfig(steps=2))
    data = ftok.to_bytes()
    assert FtokFile.from_bytes(data) == ftok
    for fields, message in (
        ({"steps": 65535}, "decoder steps must be an integer in 1..1000"),
        ({"steps": 0}, "decoder steps"),
        ({"guidance": math.nan}, "guidance scale must be a finite number"),
        ({"guidance": math.inf}, "finite"),
        ({"guidance": -3.0}, "guidance scale must lie in"),
    ):
        with pytest.raises(FtokError, match=f"corrupt .ftok file.*{message}"):
            FtokFile.from_bytes(_ftok_with(data, **fields))
    # A header image size other than the model's is refused when the model is checked (before decoding).
    path = tmp_path / "x.ftok"
    path.write_bytes(_ftok_with(data, h=4096, w=4096))
    with pytest.raises(FtokError, match="records 4096x4096 images, but the given model makes 32x32"):
        read_ftok(path).check_model(model)


def test_a_fifo_given_as_an_image_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with alarm(10), pytest.raises(InvalidInputError, match="not a regular file"):
        load_image(fifo, (32, 32))


def test_output_paths_that_cannot_be_created_are_clean_errors(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    img = tmp_path / "in.png"
    Image.new("RGB", (32, 32)).save(img)
    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    for out in (blocker / "t.json", tmp_path / ("n" * 300 + ".json")):
        rc = main(["tokenize", str(img), "-o", str(out), "--model", str(model_dir)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "in.png", "model"]


# ---------------------------------------------------------------------------------------------- the demo
fastapi = pytest.importorskip("fastapi", reason="the demo tests need the [demo] extra")


def _png(size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _declared_only(w: int, h: int) -> bytes:
    """A PNG whose header declares w x h pixels but whose pixel data is missing (decoding it would fail)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


class _BlockingGenerator:
    """A generator backend whose ``generate`` waits until released (to fill the work queue)."""

    condition, class_names, max_tokens = "class", ["a"], 16

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def check_request(self, k, class_index, prompt):
        pass

    def generate(self, k, seed, class_index, prompt):
        self.entered.set()
        self.release.wait(30)
        return torch.zeros(3, 32, 32)


def test_demo_checks_decoded_pixels_from_the_header_before_decoding() -> None:
    from fastapi.testclient import TestClient

    from flexitok.demo import DemoConfig, create_app
    from flexitok.demo.app import default_max_pixels

    assert default_max_pixels((32, 32)) == 4096 * 4096 and default_max_pixels((512, 512)) == 256 * 512 * 512
    app = create_app(tiny_model(), DemoConfig(max_pixels=100 * 100, decode=DecodeConfig(steps=1)))
    with TestClient(app) as client:
        info = client.get("/api/info").json()
        assert info["max_pixels"] == 10000 and info["max_seed"] == MAX_SEED
        # Over the limit: 413 from the header alone (decoding this file would fail: a 415 would mean it was tried).
        r = client.post("/api/images", files={"file": ("big.png", _declared_only(101, 100), "image/png")})
        assert r.status_code == 413 and "101x100" in r.json()["detail"] and "--max-megapixels" in r.json()["detail"]
        r = client.post("/api/images", files={"file": ("ok.png", _declared_only(100, 100), "image/png")})
        assert r.status_code == 415  # within the limit it is decoded, and found truncated
        assert client.post("/api/images", files={"file": ("ok.png", _png(), "image/png")}).status_code == 200


def test_demo_has_one_seed_rule_and_a_bounded_queue() -> None:
    from fastapi.testclient import TestClient

    from flexitok.demo import DemoConfig, create_app

    backend = _BlockingGenerator()
    app = create_app(tiny_model(), DemoConfig(workers=1, max_queue=0, decode=DecodeConfig(steps=1)), backend)
    with TestClient(app) as client:
        image_id = client.post("/api/images", files={"file": ("a.png", _png(), "image/png")}).json()["id"]
        for seed in (-1, 2**32, 2**70):
            r1 = client.get(f"/api/images/{image_id}/reconstruction", params={"k": 2, "seed": seed})
            backend.release.set()
            r2 = client.post("/api/generate", json={"k": 2, "seed": seed, "class_index": 0})
            assert r1.status_code == r2.status_code == 400
            assert r1.json()["detail"] == r2.json()["detail"] == f"seed must be an integer in 0..{MAX_SEED}, got {seed}"
        r = client.post("/api/generate", content=b"\x80\xff")
        assert r.status_code == 422 and "invalid request body" in r.json()["detail"]

        # One worker, no queue: while a generation runs, the next heavy request gets 503 with a JSON error.
        backend.release.clear()
        backend.entered.clear()
        answers: list[int] = []
        first = threading.Thread(
            target=lambda: answers.append(client.post("/api/generate", json={"k": 2, "class_index": 0}).status_code)
        )
        first.start()
        assert backend.entered.wait(30)
        r = client.get(f"/api/images/{image_id}/reconstruction", params={"k": 2})
        assert r.status_code == 503 and "busy" in r.json()["detail"] and r.headers["retry-after"] == "5"
        backend.release.set()
        first.join(30)
        assert answers == [200]
        deadline = time.monotonic() + 10
        while client.get(f"/api/images/{image_id}/reconstruction", params={"k": 2}).status_code != 200:
            assert time.monotonic() < deadline  # the slot is free again once the first request has left


def test_docs_demo_options_match_the_cli_defaults() -> None:
    parser = build_parser()
    demo = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "demo")[1]  # type: ignore[union-attr]
    defaults = {opt: action.default for action in demo._actions for opt in action.option_strings}
    rows = [
        line.split("|")[1:3]
        for line in (ROOT / "docs" / "demo.md").read_text().splitlines()
        if line.startswith("| `--")
    ]
    checked = 0
    for flag_cell, default_cell in rows:
        flag = flag_cell.strip().strip("`").split()[0].rstrip("`,")
        if flag not in defaults or "," in flag_cell:
            continue
        want = default_cell.strip().strip("`")
        have = defaults[flag]
        assert (
            want == str(have)
            or (isinstance(have, float) and want == f"{have:g}")
            or (have is None and want == "from the model")
            or (str(have).endswith(os.path.join("assets", "samples")) and want == "the bundled samples")
            # Repeatable --model: None stands for the bundled models it then serves; --samples: each model's own.
            or (flag == "--model" and have is None and want == "`, `".join(DEMO_MODELS))
            or (flag == "--samples" and have is None and want == "per model")
        ), (flag, want, have)
        checked += 1
    assert checked >= 8
