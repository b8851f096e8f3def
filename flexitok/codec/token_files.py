"""Token files written by ``flexitok tokenize`` and read by ``flexitok detokenize``.

Two formats, chosen by suffix:

* ``.json``: ``{"model": str, "image_size": [H, W], "vocab_size": int, "n_registers": int, "files": [str, ...],
  "tokens": [[id, ...], ...]}``; one row per image, rows may have different lengths. Images of different sizes
  record ``"image_sizes": [[H, W], ...]`` (one per row) instead of ``image_size``. Only ``tokens`` is required
  when reading (a bare list of rows is accepted too).
* ``.npy``: an integer array ``[B, K]`` (or ``[K]`` for one image), no metadata.

Writes are atomic. Reading validates the structure; :func:`validate_tokens` checks ids and lengths against a model.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flexitok.errors import InvalidInputError
from flexitok.utils.files import atomic_write, atomic_write_bytes

TOKEN_SUFFIXES = (".json", ".npy")


@dataclass
class TokenFile:
    """Token sequences (each ``LongTensor [k_i]``) plus optional provenance (written to JSON, not to .npy):
    the ``model`` that made them, the ``image_size`` (or per-sequence ``image_sizes`` when the images' sizes
    differ), the model's ``vocab_size`` and ``n_registers``, the source ``files``. ``extra``: other keys found when
    reading."""

    tokens: list[Tensor]
    model: str | None = None
    image_size: tuple[int, int] | None = None
    vocab_size: int | None = None
    n_registers: int | None = None
    files: list[str] | None = None
    extra: dict[str, object] = field(default_factory=dict)
    image_sizes: list[tuple[int, int]] | None = None  # one per sequence, when the images' sizes differ


def check_token_path(path: str | os.PathLike) -> str:
    """The suffix (``.json`` or ``.npy``) of a token file name; anything else raises InvalidInputError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TOKEN_SUFFIXES:
        raise InvalidInputError(f"{path}: token files must end in .json or .npy, got {suffix or 'no suffix'!r}")
    return suffix


def _rows(tokens: list[Tensor]) -> list[list[int]]:
    return [t.reshape(-1).cpu().tolist() for t in tokens]


def tokens_to_json(token_file: TokenFile) -> str:
    """The JSON text of a token file; each token row is kept on one line so files stay readable."""
    t = token_file
    header: dict[str, object] = {}
    for key, value in (
        ("model", t.model),
        ("image_size", list(t.image_size) if t.image_size else None),
        ("image_sizes", [list(x) for x in t.image_sizes] if t.image_sizes else None),
        ("vocab_size", t.vocab_size),
        ("n_registers", t.n_registers),
        ("files", t.files),
    ):
        if value is not None:
            header[key] = value
    rows = ",\n".join("    " + json.dumps(r) for r in _rows(t.tokens))
    head = "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in header.items())
    return "{\n" + head + '  "tokens": [\n' + rows + "\n  ]\n}\n"


def write_token_file(path: str | os.PathLike, token_file: TokenFile) -> Path:
    """Write the tokens (a list of ``[k_i]``) as .json (with the provenance) or .npy (by suffix), atomically."""
    path = Path(path)
    if check_token_path(path) == ".json":
        atomic_write_bytes(path, tokens_to_json(token_file).encode())
        return path
    rows = _rows(token_file.tokens)
    if len({len(r) for r in rows}) > 1:
        raise InvalidInputError(f"{path}: .npy needs equal-length token sequences; use .json for different lengths")
    arr = np.asarray(rows, dtype=np.int32)  # 64000 codes fit easily; halves the size of int64

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save(path) would append ".npy" to the temp name
            np.save(f, arr)

    atomic_write(path, write)
    return path


# Far above any vocabulary (64000 by default) and inside int32/int64: larger JSON integers are refused here
# instead of overflowing torch's conversion.
MAX_TOKEN_ID = 2**31 - 1
# JSON nesting deeper than this is refused before Python's parser recurses (a token file needs depth 3).
MAX_JSON_DEPTH = 32
MAX_NAME_CHARS = 4096


def _as_id_row(row: object, i: int, source: str) -> Tensor:
    if not isinstance(row, list):
        raise InvalidInputError(f"{source}: tokens[{i}] must be a list of integer ids, got {type(row).__name__}")
    for j, v in enumerate(row):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidInputError(f"{source}: tokens[{i}][{j}] = {str(v)[:40]!r} is not an integer token id")
        if not -MAX_TOKEN_ID <= v <= MAX_TOKEN_ID:  # the sign is checked against the model (validate_tokens)
            shown = str(v) if len(str(v)) <= 24 else str(v)[:20] + "..."
            raise InvalidInputError(f"{source}: tokens[{i}][{j}] = {shown} is far outside any vocabulary")
    return torch.tensor(row, dtype=torch.long)


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _json_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text (brackets inside strings do not count); linear time."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _check_npy_header(path: Path) -> None:
    """Refuse a .npy whose header promises more data than the file holds (before NumPy allocates it)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise InvalidInputError(f"{path}: not a valid .npy integer array ({e})") from None
    if dtype.hasobject:
        raise InvalidInputError(f"{path}: token ids must be integers, got dtype {dtype}")
    count = 1
    for n in shape:
        count *= int(n)
    need = count * dtype.itemsize
    have = path.stat().st_size - offset
    if need != have:
        raise InvalidInputError(
            f"{path}: not a valid .npy array: its header promises {list(shape)} x {dtype} ({need} bytes), "
            f"the file holds {have} bytes of data"
        )


def _check_name(name: object, i: int, source: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
        shown = repr(name)[:60]
        raise InvalidInputError(
            f'{source}: "files"[{i}] must be a file name (a non-empty string of at most {MAX_NAME_CHARS} '
            f"characters without control characters such as NUL), got {shown}"
        )
    return name


def read_token_file(path: str | os.PathLike) -> TokenFile:
    """Read a .json or .npy token file; structural problems raise InvalidInputError naming the file."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such token file")
    if not path.is_file():
        raise InvalidInputError(f"{path}: not a regular file (a folder, pipe or device), not a token file")
    if check_token_path(path) == ".npy":
        _check_npy_header(path)
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InvalidInputError(f"{path}: not a valid .npy integer array ({e})") from None
        if not np.issubdtype(arr.dtype, np.integer):
            raise InvalidInputError(f"{path}: token ids must be integers, got dtype {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise InvalidInputError(f"{path}: expected an array of shape [B, K] or [K], got {list(arr.shape)}")
        return TokenFile(tokens=[torch.from_numpy(np.array(r, dtype=np.int64)) for r in arr])
    try:
        text = path.read_text(encoding="utf-8")
        if _json_depth(text) > MAX_JSON_DEPTH:
            raise InvalidInputError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels is not a token file")
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, integers over 4300 digits
        raise InvalidInputError(f"{path}: not valid JSON ({str(e)[:200]})") from None
    if isinstance(data, list):
        data = {"tokens": data}
    if not isinstance(data, dict) or "tokens" not in data:
        raise InvalidInputError(f'{path}: expected a JSON object with a "tokens" list of id lists')
    raw = data["tokens"]
    if not isinstance(raw, list) or not raw:
        raise InvalidInputError(f'{path}: "tokens" must be a non-empty list of id lists')
    tokens = [_as_id_row(r, i, str(path)) for i, r in enumerate(raw)]
    files = data.get("files")
    if files is not None and (not isinstance(files, list) or len(files) != len(tokens)):
        raise InvalidInputError(f'{path}: "files" must list one name per token sequence ({len(tokens)})')
    if files is not None:
        files = [_check_name(f, i, str(path)) for i, f in enumerate(files)]
    size = data.get("image_size")
    image_size = None
    if size is not None:
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
            raise InvalidInputError(f'{path}: "image_size" must be [H, W], got {size!r}')
        image_size = (size[0], size[1])
    sizes = data.get("image_sizes")
    image_sizes = None
    if sizes is not None:
        ok = isinstance(sizes, list) and len(sizes) == len(tokens)
        ok = ok and all(isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) for v in s) for s in sizes)
        if not ok:
            raise InvalidInputError(f'{path}: "image_sizes" must list one [H, W] per token sequence ({len(tokens)})')
        image_sizes = [(s[0], s[1]) for s in sizes]
    model = data.get("model")
    counts = {}
    for key in ("vocab_size", "n_registers"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInputError(f'{path}: "{key}" must be an integer, got {value!r}')
        counts[key] = value
    known = ("tokens", "files", "image_size", "image_sizes", "model", "vocab_size", "n_registers")
    return TokenFile(
        tokens=tokens,
        model=str(model) if model is not None else None,
        image_size=image_size,
        files=[str(f) for f in files] if files is not None else None,
        extra={k: v for k, v in data.items() if k not in known},
        image_sizes=image_sizes,
        **counts,
    )


def validate_tokens(tokens: list[Tensor], vocab_size: int, n_registers: int, source: str) -> None:
    """Every sequence must hold 1..n_registers ids in [0, vocab_size); errors name the sequence and position."""
    for i, row in enumerate(tokens):
        if row.numel() == 0:
            raise InvalidInputError(f"{source}: token sequence {i} is empty")
        if row.numel() > n_registers:
            raise InvalidInputError(
                f"{source}: token sequence {i} has {row.numel()} tokens; this model takes at most {n_registers}"
            )
        bad = ((row < 0) | (row >= vocab_size)).nonzero()
        if bad.numel():
            j = int(bad[0, 0])
            raise InvalidInputError(
                f"{source}: token sequence {i} has id {int(row[j])} at position {j}; "
                f"ids must lie in [0, {vocab_size}) for this model"
            )
