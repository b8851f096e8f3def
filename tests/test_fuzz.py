"""Property-based fuzzing (hypothesis) of every place user input enters (#11): the CLI commands (in process, as the
console script runs them), the token-file readers, ``.ftok`` files, model-folder loading and the demo's HTTP API.

Each strategy builds an input together with whether it is valid, so every run is checked for: an invalid input
refused cleanly (exit 2 and exactly one ``error:`` line, no traceback, no output file; HTTP 4xx with a JSON
``detail``), a valid input accepted, and no hang (an alarm per run). The runs are counted
(``tests/fuzz_support.py``) and the tally is printed at the end of the pytest run; ``FLEXITOK_FUZZ_TALLY=path``
also writes it as JSON. Deterministic (``derandomize``, no example database) with a fixed example budget per test.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import zlib
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image

from flexitok.codec.ftok import FtokError, FtokFile
from flexitok.codec.token_files import read_token_file
from flexitok.errors import FlexiTokError
from flexitok.sampling.decode import DecodeConfig
from tests.conftest import tiny_model
from tests.fuzz_support import alarm, budget, classify_cli, classify_http, record, run_cli

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (the dev extra)")
st = hypothesis.strategies
given, settings = hypothesis.given, hypothesis.settings

pytestmark = pytest.mark.usefixtures("one_thread")
FUZZ = settings.get_profile("fuzz")
VOCAB, N, SIDE = 64000, 16, 32  # the tiny model's vocabulary, registers and image side
STEPS = ["--steps", "1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-model") / "tiny"
    tiny_model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-work")


def _fresh(work: Path) -> Path:
    """An empty folder for one example's files."""
    d = work / f"ex{len(list(work.iterdir())):05d}"
    d.mkdir()
    return d


# ---------------------------------------------------------------------------------------------- shared flags
# Each strategy draws (argv fragment, valid).


def _flag(name: str, valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    def build(pair):
        ok, value = pair
        return ([name, str(value)], ok)

    return st.one_of(valid.map(lambda v: (True, v)), invalid.map(lambda v: (False, v))).map(build)


_NOT_A_NUMBER = st.sampled_from(["x", "", "1e", "0x10", "1,2", "one"])
SEED = _flag(
    "--seed",
    st.integers(0, 2**32 - 1),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32), _NOT_A_NUMBER, st.just("2.5")),
)
GUIDANCE = _flag(
    "--guidance-scale",
    st.floats(0, 100),
    st.one_of(
        st.sampled_from(["nan", "inf", "-inf", "NaN", "1e309", "-0.5"]),
        st.floats(min_value=100.0, exclude_min=True, allow_infinity=False),
        st.floats(max_value=-1e-9, allow_infinity=False),
        _NOT_A_NUMBER,
    ),
)
BAD_STEPS = _flag("--steps", st.nothing(), st.one_of(st.integers(max_value=0), st.integers(1001), _NOT_A_NUMBER))


@st.composite
def decode_flags(draw, guidance_flag: str = "--guidance-scale") -> tuple[list[str], bool]:
    argv, valid = list(STEPS), True
    for strategy in (SEED, GUIDANCE, BAD_STEPS):
        if draw(st.integers(0, 5)) == 0:
            part, ok = draw(strategy)
            if part[0] == "--guidance-scale":
                part = [guidance_flag, part[1]]
            argv += part
            valid &= ok
    return argv, valid


# ---------------------------------------------------------------------------------------------- token files
def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


VALID_NAME = st.text(st.sampled_from("abcXYZ019_-. "), min_size=1, max_size=30)


@st.composite
def token_json(draw) -> tuple[bytes, bool, int]:
    """(file bytes, valid, number of sequences)."""
    rows = draw(st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=N), min_size=1, max_size=3))
    doc: dict = {"tokens": rows}
    if draw(st.booleans()):
        doc["files"] = [draw(VALID_NAME) for _ in rows]
    if draw(st.booleans()):
        doc["image_size"] = [SIDE, SIDE]
    fault = draw(st.sampled_from(["none"] * 10 + [f"f{i}" for i in range(22)]))
    r, j = draw(st.integers(0, len(rows) - 1)), 0
    bad_value = st.one_of(
        st.integers(VOCAB, 2**200),
        st.integers(max_value=-1),
        st.sampled_from([2.5, 1e300, True, False, None, "7", [], {}]),
    )
    if fault == "f0":
        rows[r][j] = draw(bad_value)
    elif fault == "f1":
        rows[r] = []
    elif fault == "f2":
        rows[r] = list(range(draw(st.integers(N + 1, N + 40))))
    elif fault == "f3":
        rows[r] = draw(st.sampled_from([5, "1 2 3", {"a": 1}, None]))
    elif fault == "f4":
        doc["tokens"] = draw(st.sampled_from([[], "1,2", 5, None, {"0": [1]}]))
    elif fault == "f5":
        del doc["tokens"]
    elif fault == "f6":
        return json.dumps(draw(st.sampled_from([5, "tokens", None, True, 2.5]))).encode(), False, 1
    elif fault == "f7":
        return _deep(draw(st.integers(33, 50000))).encode(), False, 1
    elif fault == "f8":
        doc["tokens"] = json.loads(_deep(draw(st.integers(3, 30))))  # nested lists: not id rows
    elif fault == "f9":
        bad = draw(st.sampled_from(["a\x00b", "x\ny", "", 5, None, ["a"], "z" * 5000]))
        doc["files"] = [bad] + ["n"] * (len(rows) - 1)
    elif fault == "f10":
        doc["files"] = ["a"] * (len(rows) + draw(st.integers(1, 3)))
    elif fault == "f11":
        doc["image_size"] = draw(
            st.sampled_from([[0, 0], [33, 32], [-32, 32], [8192, 8192], [10**12, 32], "32x32", [32], [32.0, 32.0]])
        )
    elif fault == "f12":
        doc["image_sizes"] = [[SIDE, SIDE]] * (len(rows) + 1)
    elif fault == "f13":
        doc["vocab_size"] = draw(st.sampled_from(["x", 2.5, [1], True]))
    elif fault == "f14":
        return b"\xff\xfe\x00{" + draw(st.binary(max_size=40)), False, 1
    elif fault == "f15":
        text = json.dumps(doc)
        return text[: draw(st.integers(0, len(text) - 1))].encode(), False, 1
    elif fault == "f16":
        return ('{"tokens": [[' + "9" * draw(st.integers(4301, 20000)) + "]]}").encode(), False, 1
    elif fault == "f17":
        return draw(st.binary(min_size=1, max_size=200)).replace(b"[", b"").replace(b"{", b""), False, 1
    elif fault == "f18":
        doc["image_sizes"] = [[SIDE, draw(st.sampled_from([0, 31, -4, 10**9]))]] * len(rows)
    elif fault == "f19":
        doc["n_registers"] = draw(st.sampled_from(["16", 1.5, [16]]))
    elif fault == "f20":
        rows[r][j] = draw(st.integers(2**63, 2**80))
    elif fault == "f21":
        doc = rows  # a bare list of rows: valid
        return json.dumps(doc).encode(), True, len(rows)
    return json.dumps(doc).encode(), fault == "none", len(rows)


def _npy_bytes(header: str, data: bytes) -> bytes:
    head = header.encode("latin1")
    pad = 64 - (10 + len(head) + 1) % 64
    head = head + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head + data


@st.composite
def token_npy(draw) -> tuple[bytes, bool, int]:
    b, k = draw(st.integers(1, 3)), draw(st.integers(1, N))
    arr = np.asarray(draw(st.lists(st.integers(0, VOCAB - 1), min_size=b * k, max_size=b * k))).reshape(b, k)
    fault = draw(st.sampled_from(["none", "none", "1d"] + [f"f{i}" for i in range(9)]))
    if fault == "1d":
        arr = arr[0]
    elif fault == "f0":
        arr = arr.astype(np.float32)
    elif fault == "f1":
        arr = arr.reshape(1, b, k)
    elif fault == "f2":
        arr = np.zeros((0, k), dtype=np.int64)
    elif fault == "f3":
        arr = arr.astype(np.int64)
        arr.flat[0] = draw(st.sampled_from([VOCAB, -1, 2**40]))
        buf = io.BytesIO()
        np.save(buf, arr)
        return buf.getvalue(), False, b
    elif fault == "f4":  # a header that promises terabytes
        shape = draw(st.sampled_from(["(1000000000000, 16)", "(4000000000, 4000000000)", "(99999999999999999,)"]))
        return _npy_bytes(f"{{'descr': '<i8', 'fortran_order': False, 'shape': {shape}, }}", b"\0" * 64), False, 1
    elif fault == "f5":  # a pickled object array
        buf = io.BytesIO()
        np.save(buf, np.array([[1, 2]], dtype=object), allow_pickle=True)
        return buf.getvalue(), False, 1
    elif fault == "f6":
        buf = io.BytesIO()
        np.save(buf, arr.astype(np.int64))
        data = buf.getvalue()
        return data[: draw(st.integers(0, len(data) - 1))], False, 1
    elif fault == "f7":
        return b"\x93NUMPY" + draw(st.binary(max_size=100)), False, 1
    elif fault == "f8":
        header = draw(st.sampled_from(["{'descr': 'zz', 'shape': (1,)}", "[1, 2]", "{'descr': '<i8'}", "'" * 40]))
        return _npy_bytes(header, b"\0" * 8), False, 1
    buf = io.BytesIO()
    np.save(buf, arr.astype(draw(st.sampled_from([np.int32, np.int64, np.uint16]))))
    return buf.getvalue(), fault in ("none", "1d"), 1 if fault == "1d" else b


@st.composite
def detokenize_case(draw):
    suffix = draw(st.sampled_from([".json", ".json", ".npy"]))
    content, valid, rows = draw(token_json() if suffix == ".json" else token_npy())
    flags, flags_ok = draw(decode_flags())
    extra: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        k = draw(st.one_of(st.integers(1, N).map(lambda v: (True, v)), st.sampled_from([(False, 0), (False, -3)])))
        extra += ["-k", str(k[1])]
        flags_ok &= k[0]
    if draw(st.integers(0, 4)) == 0:
        size = draw(st.sampled_from([(True, "32x32"), (True, "16"), (False, "0x0"), (False, "33x32"), (False, "x")]))
        extra += ["--size", size[1]]
        flags_ok &= size[0]
    output = draw(st.sampled_from(["folder"] * 6 + ["under_file", "long_name", "is_file"]))
    return content, suffix, valid and flags_ok and output == "folder", rows, flags + extra, output


@settings(FUZZ, max_examples=budget(140))
@given(case=detokenize_case())
def test_fuzz_detokenize_token_files_and_flags(model_dir, work, case) -> None:
    content, suffix, valid, rows, flags, output = case
    d = _fresh(work)
    src = d / f"tokens{suffix}"
    src.write_bytes(content)
    out = {
        "folder": d / "out",
        "under_file": src / "out",
        "long_name": d / ("n" * 300),
        "is_file": src,
    }[output]
    run = run_cli(["detokenize", str(src), "-o", str(out), "--model", str(model_dir), *flags], timeout=60)
    outputs = [] if output == "is_file" else [out]
    outcome, why = classify_cli(run, valid, outputs)
    record("cli detokenize", outcome, f"{why}\nargv flags {flags}, output {output}, file {content[:200]!r}")
    if outcome == "accepted":
        assert len(list(out.iterdir())) == rows


@settings(FUZZ, max_examples=budget(60))
@given(case=st.one_of(token_json(), token_npy()).flatmap(lambda c: st.tuples(st.just(c), st.booleans())))
def test_fuzz_token_file_reader_api(work, case) -> None:
    (content, valid, rows), as_json = case
    # The same bytes under either suffix: the reader must refuse or accept by content, never crash.
    d = _fresh(work)
    src = d / ("t.json" if as_json else "t.npy")
    src.write_bytes(content)
    try:
        with alarm(30):
            tf = read_token_file(src)
    except FlexiTokError:
        record("api token files", "clean_error")
        return
    except BaseException as e:  # noqa: BLE001
        record("api token files", "traceback", f"{type(e).__name__}: {e}")
        return
    # Accepted: the structure is sound (ids and lengths are checked against a model later, by validate_tokens).
    assert tf.tokens and all(t.dtype == torch.long and t.ndim == 1 for t in tf.tokens)
    record("api token files", "accepted")


# ---------------------------------------------------------------------------------------------- .ftok
_HEAD = struct.Struct("<4sBB16sHHHHIHfB")


def _ftok_fields(data: bytes) -> dict:
    names = ("magic", "version", "bits", "fp", "h", "w", "n", "k", "seed", "steps", "guidance", "flags")
    f = dict(zip(names, _HEAD.unpack_from(data), strict=True))
    pos = _HEAD.size
    d = data[pos]
    f["levels"] = list(data[pos + 1 : pos + 1 + d])
    pos += 1 + d
    (hl,) = struct.unpack_from("<H", data, pos)
    f["hint"] = data[pos + 2 : pos + 2 + hl]
    f["payload"] = data[pos + 2 + hl : -4]
    return f


def _ftok_pack(f: dict, fix_crc: bool = True) -> bytes:
    head = _HEAD.pack(*(f[k] for k in ("magic", "version", "bits", "fp", "h", "w", "n", "k", "seed", "steps")),
                      f["guidance"], f["flags"])  # fmt: skip
    body = head + bytes([len(f["levels"]), *f["levels"]]) + struct.pack("<H", len(f["hint"])) + f["hint"]
    body += f["payload"]
    return body + struct.pack("<I", zlib.crc32(body) if fix_crc else 0xDEADBEEF)


@pytest.fixture(scope="module")
def base_ftok(model_dir) -> bytes:
    model = FtokFile  # noqa: F841  (the class is what the module tests)
    from flexitok.models.flextok import FlexTok

    m = FlexTok.from_pretrained(model_dir).eval()
    tokens = m.tokenize(torch.zeros(1, 3, SIDE, SIDE))[0, :8]
    return FtokFile.from_model(m, tokens, str(model_dir), DecodeConfig(steps=1)).to_bytes()


def _well_formed(f: dict) -> bool:
    """Whether a (re-packed, CRC-fixed) header is a valid .ftok file for *some* model (truncate needs no model)."""
    levels = f["levels"]
    if not levels or any(lv < 2 for lv in levels) or not 1 <= f["k"] <= f["n"] or f["h"] < 1 or f["w"] < 1:
        return False
    vocab = math.prod(levels)
    if f["bits"] != math.ceil(math.log2(vocab)) or f["flags"] not in (0, 1) or f["version"] != 1:
        return False
    if f["magic"] != b"FTOK" or not 1 <= f["steps"] <= 1000 or not (0 <= f["guidance"] <= 100):
        return False
    if len(f["payload"]) != (f["k"] * f["bits"] + 7) // 8:
        return False
    try:
        f["hint"].decode("utf-8")
    except UnicodeDecodeError:
        return False
    ids = [int.from_bytes(f["payload"][2 * i : 2 * i + 2], "big") for i in range(f["k"])]
    return all(i < vocab for i in ids)


@st.composite
def ftok_mutation(draw, base: bytes) -> tuple[bytes, bool, bool]:
    """(bytes, valid for decoding with the fixture's model, well-formed for any model)."""
    data, valid = draw(_ftok_mutation(base))
    if data == base or valid:
        return data, True, True
    try:
        f = _ftok_fields(data)
        crc_ok = zlib.crc32(data[:-4]) == struct.unpack("<I", data[-4:])[0] and _ftok_pack(f) == data
    except (struct.error, IndexError, ValueError):
        return data, False, False
    return data, False, crc_ok and _well_formed(f)


@st.composite
def _ftok_mutation(draw, base: bytes) -> tuple[bytes, bool]:
    f = _ftok_fields(base)
    kind = draw(st.sampled_from(["none", "raw"] + [f"m{i}" for i in range(16)]))
    valid = kind == "none"
    if kind == "raw":  # bytes changed without fixing the CRC: flips, cuts, appends
        data = bytearray(base)
        op = draw(st.integers(0, 2))
        if op == 0:
            for _ in range(draw(st.integers(1, 4))):
                data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
            return bytes(data), bytes(data) == base
        if op == 1:
            return bytes(data[: draw(st.integers(0, len(data) - 1))]), False
        return bytes(data) + draw(st.binary(min_size=1, max_size=64)), False
    if kind == "m0":
        f["version"] = draw(st.integers(0, 255).filter(lambda v: v != 1))
    elif kind == "m1":
        f["bits"] = draw(st.integers(0, 255).filter(lambda v: v != 16))
    elif kind == "m2":
        f["fp"] = draw(st.binary(min_size=16, max_size=16).filter(lambda b: b != f["fp"]))
    elif kind == "m3":
        f[draw(st.sampled_from(["h", "w"]))] = draw(st.integers(0, 65535).filter(lambda v: v != SIDE))
    elif kind == "m4":
        f["n"] = draw(st.integers(0, 65535).filter(lambda v: v != N))
    elif kind == "m5":
        f["k"] = draw(st.sampled_from([0, 7, 9, N, N + 1, 65535]))
    elif kind == "m6":
        f["seed"] = draw(st.integers(0, 2**32 - 1))
        valid = True
    elif kind == "m7":
        steps = draw(st.one_of(st.integers(1, 2), st.sampled_from([0, 1001, 65535])))
        f["steps"], valid = steps, 1 <= steps <= 2
    elif kind == "m8":
        g = draw(st.one_of(st.floats(0, 10, width=32), st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e30])))
        f["guidance"], valid = g, math.isfinite(g) and 0 <= g <= 100
    elif kind == "m9":
        fl = draw(st.integers(0, 255))
        f["flags"], valid = fl, fl in (0, 1)
    elif kind == "m10":
        f["levels"] = draw(st.lists(st.integers(0, 255), min_size=0, max_size=8).filter(lambda v: v != f["levels"]))
    elif kind == "m11":
        f["hint"] = draw(st.sampled_from([b"\xff\xfe", b"/nonexistent/model", b"", b"no/such-model-here", b"\0"]))
    elif kind == "m12":
        f["payload"] = b"\xff\xff" + f["payload"][2:]  # id 65535 >= vocab 64000
    elif kind == "m13":
        f["payload"] = f["payload"][:-1]
    elif kind == "m14":
        f["magic"] = draw(st.binary(min_size=4, max_size=4).filter(lambda b: b != b"FTOK"))
    elif kind == "m15":
        return _ftok_pack(f, fix_crc=False), False
    return _ftok_pack(f), valid


@settings(FUZZ, max_examples=budget(120))
@given(data=st.data())
def test_fuzz_ftok_decode_and_truncate(model_dir, work, base_ftok, data) -> None:
    content, valid, well_formed = data.draw(ftok_mutation(base_ftok))
    flags, flags_ok = data.draw(decode_flags()) if data.draw(st.integers(0, 3)) == 0 else ([], True)
    d = _fresh(work)
    src = d / "in.ftok"
    src.write_bytes(content)
    if data.draw(st.booleans()):
        out = d / "out.png"
        run = run_cli(["decode", str(src), "-o", str(out), *flags], timeout=60)
        outcome, why = classify_cli(run, valid and flags_ok, [out])
        record("cli ftok decode", outcome, f"{why}\nflags {flags}, file {content!r}")
    else:
        k = data.draw(st.one_of(st.integers(1, 8).map(lambda v: (True, v)), st.sampled_from([(False, 9), (False, 0)])))
        out = d / "out.ftok"
        run = run_cli(["truncate", str(src), "-k", str(k[1]), "-o", str(out)], timeout=60)
        # truncate needs no model: a file of another model (fingerprint, hint, size) is still a valid file.
        outcome, why = classify_cli(run, well_formed and k[0], [out])
        record("cli ftok truncate", outcome, f"{why}\nk {k}, file {content!r}")


def test_ftok_parsing_is_linear_time() -> None:
    # A ~2 MB file: 65535 tokens of 248 bits (31 FSQ levels of 255); quadratic parsing took ~13 s for this size.
    levels = (255,) * 31
    vocab = math.prod(levels)
    g = np.random.default_rng(0)
    tokens = tuple(int.from_bytes(g.bytes(32), "big") % vocab for _ in range(65535))
    ftok = FtokFile(tokens, "0" * 32, (SIDE, SIDE), 65535, levels, "x", DecodeConfig(steps=1))
    data = ftok.to_bytes()
    assert len(data) > 2_000_000
    with alarm(10):  # a generous hang bound, not a speed measurement (linear parsing takes ~0.2 s)
        assert FtokFile.from_bytes(data).tokens == tokens
    with pytest.raises(FtokError, match="corrupt"):
        FtokFile.from_bytes(data[:-5] + b"\0" + data[-4:])


# ---------------------------------------------------------------------------------------------- images (tokenize)
def _png_header_only(w: int, h: int, idat: bytes = b"") -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@st.composite
def image_file(draw) -> tuple[bytes | str, str, bool]:
    """(bytes, or "fifo" / "dir" / "missing"; suffix; valid)."""
    kind = draw(st.sampled_from(["valid"] * 4 + ["random", "cut", "huge", "fifo", "dir", "missing", "empty"]))
    if kind == "valid":
        w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I;16", "CMYK"]))
        fmt = draw(st.sampled_from(["PNG", "BMP", "GIF", "TIFF"] if mode != "CMYK" else ["TIFF", "JPEG"]))
        if mode == "I;16" and fmt != "PNG":
            fmt = "PNG"
        arr = np.random.default_rng(draw(st.integers(0, 9))).integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(arr).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
        buf = io.BytesIO()
        try:
            img.save(buf, format=fmt)
        except (OSError, ValueError):  # a mode this format cannot store
            buf, fmt = io.BytesIO(), "PNG"
            img.save(buf, format=fmt)
        return buf.getvalue(), "." + fmt.lower().replace("jpeg", "jpg"), True
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=300)), draw(st.sampled_from([".png", ".jpg", ".bin"])), False
    if kind == "cut":
        buf = io.BytesIO()
        Image.new("RGB", (20, 20), (1, 2, 3)).save(buf, format="PNG")
        return buf.getvalue()[: draw(st.integers(0, 40))], ".png", False
    if kind == "huge":
        w, h = draw(st.integers(20000, 2**31 - 1)), draw(st.integers(20000, 2**31 - 1))
        return _png_header_only(w, h, zlib.compress(b"\0" * 64)), ".png", False
    if kind == "empty":
        return b"", ".png", False
    return kind, ".png", False


@st.composite
def tokenize_case(draw):
    content, suffix, valid = draw(image_file())
    argv: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        k = draw(st.one_of(st.integers(1, N).map(lambda v: (True, v)), st.sampled_from([(False, 0), (False, N + 1)])))
        argv += ["-k", str(k[1])]
        valid &= k[0]
    if draw(st.integers(0, 3)) == 0:
        size = draw(st.sampled_from([(True, "16x32"), (True, "32"), (False, "30x32"), (False, "9000x9000")]))
        argv += ["--size", size[1]]
        valid &= size[0]
    output = draw(st.sampled_from(["json", "npy", "txt", "under_file"]))
    return content, suffix, valid and output in ("json", "npy"), argv, output


@settings(FUZZ, max_examples=budget(80))
@given(case=tokenize_case())
def test_fuzz_tokenize_images_and_flags(model_dir, work, case) -> None:
    content, suffix, valid, argv, output = case
    d = _fresh(work)
    src = d / f"img{suffix}"
    if content == "fifo":
        os.mkfifo(src)
    elif content == "dir":
        (d / "img_folder").mkdir()
        src = d / "img_folder"
    elif content != "missing":
        assert isinstance(content, bytes)
        src.write_bytes(content)
    out = {"json": d / "t.json", "npy": d / "t.npy", "txt": d / "t.txt", "under_file": d / "blocker" / "t.json"}[output]
    if output == "under_file":
        (d / "blocker").write_bytes(b"a file, not a folder")
    run = run_cli(["tokenize", str(src), "-o", str(out), "--model", str(model_dir), *argv], timeout=30)
    outcome, why = classify_cli(run, valid, [out])
    record("cli tokenize", outcome, f"{why}\nargv {argv}, output {output}, input {str(content)[:100]}")
    if outcome == "accepted":
        assert len(read_token_file(out).tokens) == 1


# ---------------------------------------------------------------------------------------------- model folders
def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list) and obj and not all(isinstance(x, (int, float)) for x in obj):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


def _wrong_for(value) -> st.SearchStrategy:
    """Values a config field with this saved value can never hold (another JSON type, or out of range)."""
    if isinstance(value, bool):
        return st.sampled_from([1, 0, "true", [True]])
    if isinstance(value, int):
        return st.sampled_from([2.5, "8", True, [value], {}, -3, 10**15, math.nan])
    if isinstance(value, float):
        return st.sampled_from(["1.0", [value], {}, math.nan, math.inf, True])
    if isinstance(value, str):
        return st.sampled_from([5, None, [value], "no-such-" + value, True])
    if isinstance(value, list):
        return st.sampled_from(["32", [], [2.5] * max(1, len(value)), [-1] * max(1, len(value)), [[1]], 7])
    return st.sampled_from([True, 2.5])  # an optional field (null when saved)


@st.composite
def model_folder_fault(draw, config: dict) -> tuple[str, object]:
    kind = draw(
        st.sampled_from(["leaf"] * 5 + ["config_file", "weights_cut", "weights_junk", "weights_nan"] + ["none"] * 2)
    )
    if kind == "leaf":
        leaves = [(p, v) for p, v in _leaves(config["config"]) if not (p and p[-1] == "pretrained")]
        path, value = draw(st.sampled_from(leaves))
        return "leaf", (path, draw(_wrong_for(value)))
    if kind == "config_file":
        return kind, draw(
            st.sampled_from([b"", b"garbage", b"[1, 2]", b"null", b'{"format": "flexitok"}', _deep(5000).encode()])
        )
    if kind == "weights_cut":
        return kind, draw(st.floats(0.0, 0.99))
    if kind == "weights_junk":
        return kind, draw(st.binary(min_size=0, max_size=64))
    return kind, None


@settings(FUZZ, max_examples=budget(50))
@given(data=st.data())
def test_fuzz_model_folder_loading(model_dir, work, data) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    config = json.loads((model_dir / "config.json").read_text())
    kind, arg = data.draw(model_folder_fault(config))
    d = _fresh(work)
    folder = d / "model"
    shutil.copytree(model_dir, folder)
    weights = folder / "model.safetensors"
    if kind == "leaf":
        path, value = arg  # type: ignore[misc]
        node = config["config"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        (folder / "config.json").write_text(json.dumps(config))
    elif kind == "config_file":
        (folder / "config.json").write_bytes(arg)  # type: ignore[arg-type]
    elif kind == "weights_cut":
        raw = weights.read_bytes()
        weights.write_bytes(raw[: int(len(raw) * arg)])  # type: ignore[operator]
    elif kind == "weights_junk":
        weights.write_bytes(arg)  # type: ignore[arg-type]
    elif kind == "weights_nan":
        state = load_file(weights)
        name = sorted(k for k, v in state.items() if v.is_floating_point() and v.numel())[0]
        state[name].view(-1)[0] = float("nan")
        save_file(state, weights)
    img = d / "img.png"
    Image.new("RGB", (SIDE, SIDE), (9, 9, 9)).save(img)
    out = d / "t.json"
    run = run_cli(["tokenize", str(img), "-o", str(out), "--model", str(folder)], timeout=60)
    outcome, why = classify_cli(run, kind == "none", [out])
    record("model folders", outcome, f"{why}\nfault {kind}: {str(arg)[:200]}")


# ---------------------------------------------------------------------------------------------- other commands' flags
@st.composite
def flags_case(draw, model_dir: Path, img: Path, work: Path):
    """Invalid flags of the commands that decode or generate: all must be refused before any work is written."""
    cmd = draw(st.sampled_from(["reconstruct", "encode", "generate", "demo"]))
    d = _fresh(work)
    if cmd == "reconstruct":
        tokens = draw(st.sampled_from(["0", "17", "1,x", "", ",", "-1", "1.5", "99999999999999999999"]))
        flags, ok = draw(decode_flags())
        out = d / "grid.png"
        argv = ["reconstruct", str(img), "--tokens", tokens, "-o", str(out), "--model", str(model_dir), *flags]
        return argv, [out], False
    if cmd == "encode":
        flags, ok = draw(decode_flags())
        bad = draw(st.sampled_from([["-k", "0"], ["-k", "17"], ["--target", "psnr=nan"], ["--target", "x=1"], []]))
        if not bad and ok:
            bad = ["--target", "psnr"]
        out = d / "x.ftok"
        return ["encode", str(img), "-o", str(out), "--model", str(model_dir), *flags, *bad], [out], False
    if cmd == "generate":
        flags, ok = draw(decode_flags("--decoder-guidance"))
        bad = draw(
            st.sampled_from(
                [
                    ["--cfg-scale", "nan"],
                    ["--cfg-scale", "1e30"],
                    ["--temperature", "-1"],
                    ["--temperature", "inf"],
                    ["--temperature", "1e-30"],
                    ["--top-p", "0"],
                    ["--top-p", "nan"],
                    ["--top-k", "-2"],
                    ["--tokens", "0"],
                    ["-n", "0"],
                    ["--class", "999"],
                    ["--class", "no-such-class"],
                    ["--save-tokens", str(d / "t.txt")],
                    [],
                ]
            )
        )
        if not bad and ok:
            bad = ["--tokens", "100000"]
        out = d / "g.png"
        return ["generate", "-n", "1", "--tokens", "2", "-o", str(out), *STEPS, *flags, *bad], [out, d / "t.txt"], False
    bad = draw(
        st.sampled_from(
            [
                ["--max-upload-mb", "nan"],
                ["--max-upload-mb", "0"],
                ["--max-megapixels", "-1"],
                ["--max-megapixels", "inf"],
                ["--port", "70000"],
                ["--workers", "0"],
                ["--max-queue", "-1"],
                ["--guidance-scale", "nan"],
                ["--steps", "0"],
                ["--samples", str(d / "none")],
                ["--model", str(d / "missing")],
            ]
        )
    )
    return ["demo", "--model", str(model_dir), "--port", "0", "--generator", "none", *bad], [], False


@settings(FUZZ, max_examples=budget(45))
@given(data=st.data())
def test_fuzz_invalid_flags_of_other_commands(model_dir, work, data) -> None:
    img = work / "flags-input.png"
    if not img.exists():
        Image.new("RGB", (SIDE, SIDE), (200, 10, 10)).save(img)
    argv, outputs, valid = data.draw(flags_case(model_dir, img, work))
    run = run_cli(argv, timeout=60)
    outcome, why = classify_cli(run, valid, outputs)
    record(f"cli {argv[0]}", outcome, f"{why}\nargv {argv}")


# ---------------------------------------------------------------------------------------------- the demo
@pytest.fixture(scope="module")
def demo_client(tmp_path_factory):
    pytest.importorskip("fastapi", reason="the demo fuzz needs the [demo] extra")
    from fastapi.testclient import TestClient

    from flexitok.demo import DemoConfig, create_app
    from flexitok.demo.generation import ARGeneratorBackend
    from flexitok.models.generator import Generator, generator_preset

    model = tiny_model()
    torch.manual_seed(0)
    cfg = generator_preset("tiny", vocab_size=model.vocab_size, n_tokens=N, num_classes=3, class_names=("a", "b", "c"))
    backend = ARGeneratorBackend(Generator(cfg).eval(), model, DecodeConfig(steps=1))
    app = create_app(
        model, DemoConfig(max_upload_bytes=64 * 1024, max_pixels=512 * 512, decode=DecodeConfig(steps=1)), backend
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (5, 100, 200)).save(buf, format="PNG")
        image_id = client.post("/api/images", files={"file": ("a.png", buf.getvalue(), "image/png")}).json()["id"]
        yield client, image_id


_INT_TEXT = st.one_of(st.integers(-(2**70), 2**70).map(str), st.sampled_from(["", "x", "1.5", "nan", "--1", "1 2"]))


@st.composite
def demo_request(draw, image_id: str):
    """(method, url, kwargs, valid)."""
    kind = draw(st.sampled_from(["upload", "upload", "recon", "recon", "generate", "generate", "sample", "raw"]))
    if kind == "upload":
        content, suffix, valid = draw(image_file())
        if not isinstance(content, bytes):
            content, valid = b"", False
        ctype = draw(st.sampled_from(["image/png", "application/octet-stream", "text/plain", ""]))
        valid &= ctype != "text/plain"
        if draw(st.integers(0, 5)) == 0:  # decodes to 600 x 600 (> 512^2 pixels): refused before decoding
            buf = io.BytesIO()
            Image.new("L", (600, 600)).save(buf, format="PNG")
            content, valid = buf.getvalue(), False
        if draw(st.integers(0, 8)) == 0:
            content, valid = b"\0" * (64 * 1024 + 1), False
        field = draw(st.sampled_from(["file", "file", "file", "other"]))
        valid &= field == "file"
        files = {field: ("up" + suffix, content, ctype)} if ctype else {field: ("up" + suffix, content)}
        return "POST", "/api/images", {"files": files}, valid and bool(content)
    if kind == "recon":
        k = draw(st.one_of(st.integers(1, N).map(str), _INT_TEXT))
        seed = draw(st.one_of(st.integers(0, 2**32 - 1).map(str), _INT_TEXT, st.none()))
        ident = image_id if draw(st.integers(0, 4)) else draw(st.text(max_size=40).map(lambda t: t or "x"))
        ok = ident == image_id and re.fullmatch(r"-?[0-9]+", k) is not None and 1 <= int(k) <= N
        if seed is not None:
            ok = ok and re.fullmatch(r"-?[0-9]+", seed) is not None and 0 <= int(seed) <= 2**32 - 1
        params = {"k": k} | ({} if seed is None else {"seed": seed})
        return "GET", f"/api/images/{quote(ident, safe='')}/reconstruction", {"params": params}, ok
    if kind == "generate":
        body = {
            "k": draw(st.one_of(st.integers(1, N), st.integers(-(2**70), 2**70), st.sampled_from(["3", 2.5, None]))),
            "seed": draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(-(2**70), 2**70), st.sampled_from([1.5]))),
        }
        cond = draw(st.sampled_from(["class", "class", "bad_class", "prompt", "none"]))
        if cond == "class":
            body["class_index"] = draw(st.integers(0, 2))
        elif cond == "bad_class":
            body["class_index"] = draw(st.one_of(st.integers(3, 2**70), st.integers(max_value=-1), st.just("1")))
        elif cond == "prompt":
            body["prompt"] = draw(st.text(max_size=20))
        k, seed = body["k"], body["seed"]
        ok = isinstance(k, int) and 1 <= k <= N and isinstance(seed, int) and 0 <= seed <= 2**32 - 1
        ok = ok and cond == "class"
        if draw(st.integers(0, 6)) == 0:
            return "POST", "/api/generate", {"content": draw(st.binary(max_size=50))}, False
        return "POST", "/api/generate", {"json": body}, ok
    if kind == "sample":
        return "POST", f"/api/samples/{quote(draw(st.text(min_size=1, max_size=30)), safe='')}", {}, False
    path = draw(st.sampled_from(["/api/images", "/api/generate", "/api/info/x", "/api/images/x"]))
    return draw(st.sampled_from(["PUT", "DELETE", "PATCH"])), path, {"content": draw(st.binary(max_size=30))}, False


@settings(FUZZ, max_examples=budget(120))
@given(data=st.data())
def test_fuzz_demo_endpoints(demo_client, data) -> None:
    client, image_id = demo_client
    method, url, kwargs, valid = data.draw(demo_request(image_id))
    try:
        with alarm(30):
            r = client.request(method, url, **kwargs)
    except BaseException as e:  # noqa: BLE001
        record("demo http", "hang" if type(e).__name__ == "Hang" else "traceback", f"{type(e).__name__}: {e}")
        return
    outcome, why = classify_http(r.status_code, r.content, valid)
    record("demo http", outcome, f"{why}\n{method} {url} {str(kwargs)[:300]}")
