"""Compact .ftok token files: bit packing, header round trip, prefix property, model fingerprints, error cases,
and the encode / decode / truncate commands."""

from __future__ import annotations

import math
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok import DecodeConfig
from flexitok.cli.main import main
from flexitok.codec.adaptive import decode_tokens
from flexitok.codec.ftok import (
    FtokError,
    FtokFile,
    bits_per_token,
    model_fingerprint,
    pack_ids,
    read_ftok,
    unpack_ids,
    write_ftok,
)
from flexitok.config import tiny_config
from flexitok.models.flextok import FlexTok
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model(0).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    arr = np.stack([x * 4, y * 5, (x + y) * 2], -1) + rng.integers(0, 30, (48, 64, 3))
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return path


def _example(k: int = 10, levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5), n: int = 16, seed: int = 0) -> FtokFile:
    rng = random.Random(seed)
    vocab = math.prod(levels)
    return FtokFile(
        tokens=tuple(rng.randrange(vocab) for _ in range(k)),
        fingerprint="0123456789abcdef" * 2,
        image_size=(32, 48),
        n_registers=n,
        fsq_levels=levels,
        model_hint="some/model",
        decode=DecodeConfig(seed=1234, steps=7, guidance_scale=3.5, apg=False),
    )


# ---------------------------------------------------------------------------- bit packing
@pytest.mark.parametrize("bits", [1, 3, 7, 8, 9, 13, 16, 17, 24])
def test_pack_unpack_round_trip_and_size(bits: int) -> None:
    rng = random.Random(bits)
    for k in (1, 2, 5, 8, 31):
        ids = [rng.randrange(1 << bits) for _ in range(k)]
        data = pack_ids(ids, bits)
        assert len(data) == math.ceil(k * bits / 8)
        assert unpack_ids(data, k, bits) == ids


def test_pack_is_prefix_stable() -> None:
    # The first k' tokens occupy the first bits of the stream: a shorter list packs to a prefix of the longer one
    # (up to the padding bits of its last byte).
    rng = random.Random(1)
    for bits in (5, 13, 16):
        ids = [rng.randrange(1 << bits) for _ in range(20)]
        full = pack_ids(ids, bits)
        for k in range(1, 20):
            short = pack_ids(ids[:k], bits)
            pad = 8 * len(short) - k * bits
            assert short[:-1] == full[: len(short) - 1]
            assert short[-1] == full[len(short) - 1] & (0xFF << pad) & 0xFF


def test_pack_rejects_ids_that_do_not_fit_and_unpack_rejects_dirty_padding() -> None:
    with pytest.raises(FtokError, match="does not fit"):
        pack_ids([8], 3)
    with pytest.raises(FtokError, match="padding"):
        unpack_ids(bytes([0b1010_0001]), 1, 4)


def test_bits_per_token() -> None:
    assert bits_per_token(64000) == 16
    assert bits_per_token(65536) == 16
    assert bits_per_token(65537) == 17
    assert bits_per_token(2) == 1
    assert bits_per_token(1000) == 10


# ---------------------------------------------------------------------------- file format
def test_bytes_round_trip_and_layout() -> None:
    f = _example(k=10)
    data = f.to_bytes()
    assert data[:4] == b"FTOK" and data[4] == 1 and data[5] == 16
    assert FtokFile.from_bytes(data) == f
    header = 4 + 1 + 1 + 16 + 2 * 4 + 4 + 2 + 4 + 1 + 1 + 6 + 2 + len(b"some/model")
    assert len(data) == header + 10 * 2 + 4
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_truncated_file_is_a_valid_prefix() -> None:
    f = _example(k=12)
    data = f.to_bytes()
    for k in (1, 5, 11, 12):
        t = FtokFile.from_bytes(f.truncate(k).to_bytes())
        assert t.tokens == f.tokens[:k]
        assert t.k == k and t.fingerprint == f.fingerprint and t.decode == f.decode
    # With 16-bit tokens the shorter payload is literally a byte prefix of the longer one.
    short = f.truncate(5).to_bytes()
    header = len(data) - 12 * 2 - 4
    assert short[header : header + 10] == data[header : header + 10]
    with pytest.raises(FtokError, match="1..12"):
        f.truncate(13)
    with pytest.raises(FtokError):
        f.truncate(0)


def test_small_vocab_uses_fewer_bits() -> None:
    f = _example(k=9, levels=(3, 3))  # vocab 9 -> 4 bits per token
    data = f.to_bytes()
    assert data[5] == 4
    assert FtokFile.from_bytes(data).tokens == f.tokens


def test_invalid_contents_are_refused() -> None:
    with pytest.raises(FtokError, match="outside the vocabulary"):
        FtokFile((64000,), "0" * 32, (32, 32), 16, (8, 8, 8, 5, 5, 5))
    with pytest.raises(FtokError, match="1..16"):
        FtokFile(tuple(range(17)), "0" * 32, (32, 32), 16, (8, 8, 8, 5, 5, 5))
    with pytest.raises(FtokError, match="fingerprint"):
        FtokFile((1,), "abc", (32, 32), 16, (8, 8, 8, 5, 5, 5))


def test_bad_magic_and_unknown_version() -> None:
    data = bytearray(_example().to_bytes())
    with pytest.raises(FtokError, match="not a .ftok file"):
        FtokFile.from_bytes(b"\x89PNG\r\n\x1a\n" + bytes(data[8:]), "x.png")
    data[4] = 2
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))  # a well-formed file of a future version
    with pytest.raises(FtokError, match="unsupported .ftok version 2"):
        FtokFile.from_bytes(bytes(data))


def test_every_truncation_and_trailing_garbage_is_detected() -> None:
    data = _example(k=10).to_bytes()
    for cut in range(len(data)):
        with pytest.raises(FtokError, match="truncated|not a .ftok"):
            FtokFile.from_bytes(data[:cut])
    with pytest.raises(FtokError, match="unexpected bytes"):
        FtokFile.from_bytes(data + b"\x00")


def test_every_single_bit_flip_is_detected() -> None:
    data = _example(k=6).to_bytes()
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(FtokError):
                FtokFile.from_bytes(bytes(bad))


def test_read_write_atomic(tmp_path: Path) -> None:
    f = _example()
    path = tmp_path / "a.ftok"
    size = write_ftok(path, f)
    assert path.stat().st_size == size
    assert read_ftok(path) == f
    assert [p.name for p in tmp_path.iterdir()] == ["a.ftok"]  # no temporary files left behind
    with pytest.raises(FtokError, match="no such file"):
        read_ftok(tmp_path / "missing.ftok")


# ---------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_across_save_load_and_sensitive_to_weights(model_dir: Path) -> None:
    a = FlexTok.from_pretrained(model_dir)
    b = FlexTok.from_pretrained(model_dir)
    fp = model_fingerprint(a)
    assert len(fp) == 32 and int(fp, 16) >= 0
    assert model_fingerprint(b) == fp
    other = tiny_model(1)
    assert model_fingerprint(other) != fp
    # Cached on the object: an in-place change is seen only with refresh=True.
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert model_fingerprint(b) == fp
    assert model_fingerprint(b, refresh=True) != fp


def test_fingerprint_covers_the_config() -> None:
    torch.manual_seed(0)
    a = FlexTok(tiny_config())
    b = FlexTok(tiny_config())
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    b.config.decoder.max_timestep = 0.5  # same weights, different behaviour
    assert model_fingerprint(b, refresh=True) != model_fingerprint(a)


def test_check_model_refuses_other_models(model_dir: Path) -> None:
    model = FlexTok.from_pretrained(model_dir)
    f = FtokFile.from_model(model, torch.tensor([1, 2, 3]), "tiny")
    f.check_model(model)
    with pytest.raises(FtokError, match="fingerprint"):
        f.check_model(tiny_model(1), "other")
    wrong_levels = FtokFile((1, 2), f.fingerprint, f.image_size, f.n_registers, (4, 4))
    with pytest.raises(FtokError, match="FSQ levels"):
        wrong_levels.check_model(model)


# ---------------------------------------------------------------------------- CLI
def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_encode_decode_truncate(
    tmp_path: Path, model_dir: Path, image_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--model", str(model_dir), "--steps", "4", "--seed", "3"]
    x8, x3 = tmp_path / "x8.ftok", tmp_path / "x3.ftok"
    code, out, _ = _run(["encode", str(image_file), "-k", "8", "-o", str(x8), *common], capsys)
    assert code == 0
    assert f"{x8.stat().st_size} bytes" in out and "k=8 tokens" in out
    assert _run(["encode", str(image_file), "-k", "3", "-o", str(x3), *common], capsys)[0] == 0

    f8 = read_ftok(x8)
    assert f8.k == 8 and f8.decode.seed == 3 and f8.decode.steps == 4
    assert f8.model_hint == str(model_dir.resolve())
    assert x8.stat().st_size == x3.stat().st_size + 5 * 2  # 16 bits per extra token

    # Truncating the 8-token file gives exactly the file encoded with 3 tokens.
    t3 = tmp_path / "t3.ftok"
    code, out, _ = _run(["truncate", str(x8), "-k", "3", "-o", str(t3)], capsys)
    assert code == 0 and "8 -> 3 tokens" in out
    assert t3.read_bytes() == x3.read_bytes()

    # Decoding finds the model through the hint and reproduces the encoder's seeded reconstruction.
    png = tmp_path / "x8.png"
    code, out, _ = _run(["decode", str(x8), "-o", str(png)], capsys)
    assert code == 0 and str(png) in out
    decoded = np.asarray(Image.open(png))
    assert decoded.shape == (32, 32, 3)
    model = FlexTok.from_pretrained(model_dir)
    expected = decode_tokens(model, f8.token_tensor(), DecodeConfig(seed=3, steps=4, guidance_scale=7.5, apg=True))[0]
    expected_arr = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(decoded, expected_arr)
    png3 = tmp_path / "x3.png"
    assert _run(["decode", str(x3), "-o", str(png3), "--model", str(model_dir)], capsys)[0] == 0
    assert not np.array_equal(np.asarray(Image.open(png3)), decoded)  # fewer tokens, another image

    # In-place truncation.
    code, _, _ = _run(["truncate", str(x8), "-k", "2"], capsys)
    assert code == 0 and read_ftok(x8).tokens == f8.tokens[:2]


def test_cli_decode_errors_leave_no_output(
    tmp_path: Path, model_dir: Path, image_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = tmp_path / "x.ftok"
    assert _run(["encode", str(image_file), "-k", "4", "-o", str(x), "--model", str(model_dir)], capsys)[0] == 0
    other = tmp_path / "other"
    tiny_model(1).save_pretrained(other)
    out_png = tmp_path / "out.png"

    code, _, err = _run(["decode", str(x), "-o", str(out_png), "--model", str(other)], capsys)
    assert code == 2 and "fingerprint" in err and "--model" in err

    data = x.read_bytes()
    (tmp_path / "cut.ftok").write_bytes(data[:-3])
    code, _, err = _run(["decode", str(tmp_path / "cut.ftok"), "-o", str(out_png)], capsys)
    assert code == 2 and "truncated" in err

    bad = bytearray(data)
    bad[-6] ^= 0x10
    (tmp_path / "bad.ftok").write_bytes(bytes(bad))
    code, _, err = _run(["decode", str(tmp_path / "bad.ftok"), "-o", str(out_png)], capsys)
    assert code == 2 and "CRC32" in err

    future = bytearray(data)
    future[4] = 9
    (tmp_path / "future.ftok").write_bytes(bytes(future))
    code, _, err = _run(["decode", str(tmp_path / "future.ftok"), "-o", str(out_png)], capsys)
    assert code == 2 and "version 9" in err

    # A hint that no longer resolves: clear message pointing at --model.
    moved = FtokFile.from_bytes(data)
    gone = tmp_path / "gone.ftok"
    write_ftok(gone, FtokFile(**{**moved.__dict__, "model_hint": str(tmp_path / "deleted-model")}))
    code, _, err = _run(["decode", str(gone), "-o", str(out_png)], capsys)
    assert code == 2 and "cannot load the model" in err and "--model" in err

    code, _, err = _run(["truncate", str(x), "-k", "5"], capsys)
    assert code == 2 and "1..4" in err
    assert not out_png.exists()
    assert read_ftok(x).k == 4


V010 = Path(__file__).parent / "fixtures" / "v0.1.0-tiny"  # written by flexitok 0.1.0 (9b29af3)


def test_a_0_1_0_ftok_file_still_decodes_with_its_0_1_0_model(tmp_path: Path) -> None:
    """Config fields added since 0.1.0 must not change the fingerprint of models that leave them at their default."""
    model = FlexTok.from_pretrained(V010 / "model")
    f = read_ftok(V010 / "image.ftok")
    assert model_fingerprint(model) == f.fingerprint == "f93562b7022994dede7a902fc9ddd962"
    f.check_model(model)
    out = tmp_path / "decoded.png"
    assert main(["decode", str(V010 / "image.ftok"), "--model", str(V010 / "model"), "-o", str(out)]) == 0
    assert Image.open(out).size == (16, 16)


def test_a_newer_option_is_fingerprinted_once_it_leaves_its_default() -> None:
    torch.manual_seed(0)
    a = FlexTok(tiny_config())
    b = FlexTok(tiny_config())
    b.load_state_dict(a.state_dict())
    assert b.config.encoder.register_ordering == "nested"  # added after 0.1.0: at its default, not hashed
    b.config.encoder.register_ordering = "avg_pool"
    assert model_fingerprint(b, refresh=True) != model_fingerprint(a)
