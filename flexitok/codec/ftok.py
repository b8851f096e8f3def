"""Compact token files (``.ftok``): one image as its first k FlexTok token ids, bit-packed.

The byte layout is documented in ``docs/ftok-format.md``. In short (all integers little-endian)::

    magic "FTOK" | version u8 | bits u8 | fingerprint 16B | H u16 | W u16 | N u16 | k u16 | seed u32 |
    steps u16 | guidance f32 | flags u8 | d u8 | levels d x u8 | hint_len u16 | hint utf-8 | tokens | crc32 u32

Token ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of an MSB-first bit stream, so the first ``k' < k`` tokens are
a prefix of the payload: truncating a file only rewrites ``k``, drops the tail bytes and recomputes the CRC.
``bits = ceil(log2(vocab))`` (16 for the default 64000-code FSQ).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flexitok.errors import FlexiTokError
from flexitok.models.flextok import FlexTok
from flexitok.sampling.decode import DecodeConfig
from flexitok.utils.files import atomic_write_bytes

MAGIC = b"FTOK"
VERSION = 1
SUFFIX = ".ftok"
FINGERPRINT_BYTES = 16  # 128-bit prefix of a SHA-256: collisions are not a practical concern here
_FIXED = struct.Struct("<4sBB16sHHHHIHfB")  # magic .. guidance: everything before the FSQ level list
_CRC = struct.Struct("<I")
_FINGERPRINT_ATTR = "_flexitok_fingerprint"
_FLAG_APG = 1  # flags bit 0: decode with adaptive projected guidance (else plain CFG); other bits must be 0


class FtokError(FlexiTokError):
    """A ``.ftok`` file is malformed, truncated, corrupt, of an unknown version, or made for another model."""


def bits_per_token(vocab_size: int) -> int:
    """``ceil(log2(vocab_size))``: the packed width of one token id (at least 1 bit)."""
    if vocab_size < 2:
        raise FtokError(f"vocab size must be >= 2, got {vocab_size}")
    return max(1, math.ceil(math.log2(vocab_size)))


# The config fields that 0.1.0 (the first .ftok release) hashed. A field added since is hashed only when it differs
# from its default, so adding a model option never invalidates the .ftok files of models that do not use it (a
# 0.1.0 file keeps decoding with its 0.1.0 model: tests/fixtures/v0.1.0-tiny). Never add names here.
_TRANSFORMER_V1 = ("attn_scale_base", "depth", "dim", "head_dim", "mlp_hidden", "mlp_ratio", "norm_eps", "qk_norm")
_FINGERPRINT_V1_FIELDS = frozenset(
    ["image_size", "fsq_levels", "vae", "encoder", "decoder"]
    + [f"vae.{k}" for k in ("diffusers_config", "downsample", "kind", "latent_channels", "sample_posterior")]
    + ["vae.scaling_factor", "decoder.posemb_grid", "decoder.time_freq_dim", "decoder.transformer"]
    + [f"encoder.{k}" for k in ("head_bias", "n_registers", "patch_size", "posemb_grid", "transformer")]
    + [f"decoder.{k}" for k in ("adaln_expansion", "learned_null_cond", "max_timestep", "patch_size")]
    + [f"{part}.transformer.{k}" for part in ("encoder", "decoder") for k in _TRANSFORMER_V1]
)
_FINGERPRINT_SKIPPED = frozenset(["vae.pretrained"])  # where the weights came from, not what they are


def _fingerprint_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """``config`` (a dataclass) as a JSON-able dict of the fields the fingerprint covers (see above)."""
    out: dict[str, Any] = {}
    as_dict = config.to_dict() if not prefix and hasattr(config, "to_dict") else None
    for f in dataclasses.fields(config):
        path = prefix + f.name
        if path in _FINGERPRINT_SKIPPED:
            continue
        value = getattr(config, f.name)
        if path not in _FINGERPRINT_V1_FIELDS:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value == default:
                continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = _fingerprint_config(value, path + ".")
        elif as_dict is not None and f.name in as_dict:
            out[f.name] = as_dict[f.name]  # the config's own JSON form (tuples as lists, ...)
        else:
            out[f.name] = json.loads(json.dumps(value, default=str))
    return out


def model_fingerprint(model: nn.Module, refresh: bool = False) -> str:
    """A stable 32-hex-digit (128-bit) fingerprint of ``model``'s config and weights.

    SHA-256 over the canonical JSON of ``model.config`` (the fields 0.1.0 hashed, plus any newer field that differs
    from its default; never the VAE's ``pretrained`` location, which says where weights came from, not what they
    are) and every state-dict entry's name, dtype, shape and raw bytes, in sorted key order. Computing it reads all
    weights once, so the result is cached on the model object; pass ``refresh=True`` after changing the weights in
    place (e.g. during training).
    """
    cached = getattr(model, _FINGERPRINT_ATTR, None)
    if cached is not None and not refresh:
        return cached
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config):
        h.update(json.dumps(_fingerprint_config(config), sort_keys=True, default=str).encode())
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # Raw bytes via a uint8 view: works for every dtype, bfloat16 included (numpy has no bfloat16).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()[: 2 * FINGERPRINT_BYTES]
    object.__setattr__(model, _FINGERPRINT_ATTR, digest)  # plain attribute, not a module/buffer
    return digest


def pack_ids(ids: list[int], bits: int) -> bytes:
    """Pack ids (each ``< 2**bits``) MSB-first into ``ceil(len(ids) * bits / 8)`` bytes, zero-padded at the end.

    Linear time: a small accumulator holds fewer than ``bits + 8`` pending bits (one big integer for the whole
    payload would make every shift cost its length, quadratic in the file size).
    """
    out = bytearray()
    acc = n_acc = 0
    limit = 1 << bits
    for i in ids:
        if not 0 <= i < limit:
            raise FtokError(f"token id {i} does not fit in {bits} bits")
        acc, n_acc = (acc << bits) | i, n_acc + bits
        while n_acc >= 8:
            n_acc -= 8
            out.append((acc >> n_acc) & 0xFF)
        acc &= (1 << n_acc) - 1
    if n_acc:
        out.append((acc << (8 - n_acc)) & 0xFF)
    return bytes(out)


def unpack_ids(data: bytes, k: int, bits: int) -> list[int]:
    """Inverse of :func:`pack_ids` in linear time; non-zero padding bits mean the payload is corrupt."""
    total = k * bits
    pad = 8 * len(data) - total
    if pad < 0 or pad >= 8 or (pad and data[-1] & ((1 << pad) - 1)):
        raise FtokError("corrupt .ftok file: token payload padding is not zero")
    ids = []
    mask = (1 << bits) - 1
    for j in range(k):
        start = j * bits
        first, last = start // 8, (start + bits + 7) // 8  # the bytes that hold token j
        chunk = int.from_bytes(data[first:last], "big")
        ids.append((chunk >> (8 * (last - first) - (start - 8 * first) - bits)) & mask)
    return ids


@dataclass(frozen=True)
class FtokFile:
    """The content of one ``.ftok`` file.

    ``tokens``: the first ``k`` token ids (ordered coarse to fine). ``fingerprint``: :func:`model_fingerprint` of
    the model that made them. ``model_hint``: a name or path to find that model again. ``decode``: the decoder
    settings the encoder used (e.g. when it searched for the smallest k), so decoding with them reproduces that
    exact reconstruction (the header stores the guidance scale as a float32).
    """

    tokens: tuple[int, ...]
    fingerprint: str
    image_size: tuple[int, int]
    n_registers: int
    fsq_levels: tuple[int, ...]
    model_hint: str = ""
    decode: DecodeConfig = DecodeConfig()

    def __post_init__(self) -> None:
        if len(self.fingerprint) != 2 * FINGERPRINT_BYTES:
            raise FtokError(f"fingerprint must be {2 * FINGERPRINT_BYTES} hex digits, got {self.fingerprint!r}")
        if not 1 <= len(self.tokens) <= self.n_registers:
            raise FtokError(f"a .ftok file holds 1..{self.n_registers} tokens, got {len(self.tokens)}")
        if len(self.fsq_levels) == 0 or any(not 2 <= lv <= 255 for lv in self.fsq_levels):
            raise FtokError(f"FSQ levels must each lie in 2..255, got {self.fsq_levels}")
        vocab = self.vocab_size
        bad = [t for t in self.tokens if not 0 <= t < vocab]
        if bad:
            raise FtokError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        for name, v in (("image height", self.image_size[0]), ("image width", self.image_size[1])):
            if not 1 <= v <= 0xFFFF:
                raise FtokError(f"{name} {v} does not fit the .ftok header")
        d = self.decode
        if callable(d.guidance_scale):
            raise FtokError("a .ftok header stores one guidance scale, not a schedule")
        if not d.official:
            raise FtokError(
                "a .ftok header records steps, guidance, APG and seed of the official Euler sampler; "
                f"sampler={d.sampler!r}, guidance_interval={d.guidance_interval} cannot be stored"
            )
        if self.n_registers > 0xFFFF or not 0 <= d.seed <= 0xFFFFFFFF or not 1 <= d.steps <= 0xFFFF:
            raise FtokError("n_registers, seed or steps out of the .ftok header's range")

    # ------------------------------------------------------------------ derived
    @property
    def k(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return math.prod(self.fsq_levels)

    @property
    def bits_per_token(self) -> int:
        return bits_per_token(self.vocab_size)

    def token_tensor(self) -> Tensor:
        """The token ids as ``LongTensor [k]``."""
        return torch.tensor(self.tokens, dtype=torch.long)

    def truncate(self, k: int) -> FtokFile:
        """The same image at a coarser level: only the first ``k`` tokens (1 <= k <= current k)."""
        if not 1 <= k <= self.k:
            raise FtokError(f"can only truncate to 1..{self.k} tokens (the file holds {self.k}), got {k}")
        return replace(self, tokens=self.tokens[:k])

    # ------------------------------------------------------------------ model binding
    @classmethod
    def from_model(
        cls,
        model: FlexTok,
        tokens: Tensor | list[int],
        model_hint: str = "",
        decode: DecodeConfig | None = None,
    ) -> FtokFile:
        """Wrap ``tokens`` (``LongTensor [k]`` or a list) made by ``model`` (a :class:`flexitok.FlexTok`)."""
        ids = tokens.reshape(-1).tolist() if isinstance(tokens, Tensor) else [int(t) for t in tokens]
        cfg = model.config
        return cls(
            tokens=tuple(int(t) for t in ids),
            fingerprint=model_fingerprint(model),
            image_size=(int(cfg.image_size[0]), int(cfg.image_size[1])),
            n_registers=int(cfg.n_registers),
            fsq_levels=tuple(int(x) for x in cfg.fsq_levels),
            model_hint=model_hint,
            decode=decode or DecodeConfig(),
        )

    def check_model(self, model: FlexTok, model_name: str | None = None) -> None:
        """Raise :class:`FtokError` unless ``model`` is the one these tokens were made with."""
        cfg = model.config
        name = f"model {model_name!r}" if model_name else "the given model"
        made_with = f"model {self.model_hint!r}" if self.model_hint else "another model"
        if tuple(cfg.fsq_levels) != self.fsq_levels or int(cfg.n_registers) != self.n_registers:
            raise FtokError(
                f"this .ftok file was made with {made_with} (FSQ levels {list(self.fsq_levels)}, "
                f"{self.n_registers} tokens), but {name} has FSQ levels {list(cfg.fsq_levels)} and "
                f"{cfg.n_registers} tokens; pass --model with the model used for encoding"
            )
        native = (int(cfg.image_size[0]), int(cfg.image_size[1]))
        if tuple(self.image_size) != native:
            # The encoder writes the model's native size, and decoding uses it: any other header size is corrupt.
            raise FtokError(
                f"this .ftok file records {self.image_size[0]}x{self.image_size[1]} images, but {name} makes "
                f"{native[0]}x{native[1]} images; the file is corrupt or was made with another model"
            )
        fp = model_fingerprint(model)
        if fp != self.fingerprint:
            raise FtokError(
                f"this .ftok file was made with {made_with} (fingerprint {self.fingerprint}), but {name} has "
                f"fingerprint {fp}; its tokens mean nothing to a different model. Pass --model with the model "
                "used for encoding"
            )

    # ------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        hint = self.model_hint.encode("utf-8")
        if len(hint) > 0xFFFF:
            raise FtokError(f"model hint is too long ({len(hint)} bytes; at most 65535)")
        head = _FIXED.pack(
            MAGIC,
            VERSION,
            self.bits_per_token,
            bytes.fromhex(self.fingerprint),
            self.image_size[0],
            self.image_size[1],
            self.n_registers,
            self.k,
            self.decode.seed,
            self.decode.steps,
            self.decode.guidance_scale,
            _FLAG_APG if self.decode.apg else 0,
        )
        body = (
            head
            + bytes([len(self.fsq_levels), *self.fsq_levels])
            + struct.pack("<H", len(hint))
            + hint
            + pack_ids(list(self.tokens), self.bits_per_token)
        )
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> FtokFile:
        """Parse and validate a ``.ftok`` byte string; ``source`` names it in error messages."""
        if len(data) < 5 or data[:4] != MAGIC:
            raise FtokError(f"{source}: not a .ftok file (it does not start with the magic bytes 'FTOK')")
        if data[4] != VERSION:
            raise FtokError(f"{source}: unsupported .ftok version {data[4]} (this flexitok reads version {VERSION})")
        reader = _Reader(data, source)
        _, _, bits, fp, h, w, n, k, seed, steps, guidance, flags = reader.unpack(_FIXED)
        d = reader.take(1)[0]
        levels = tuple(reader.take(d))
        (hint_len,) = reader.unpack(struct.Struct("<H"))
        hint_bytes = reader.take(hint_len)
        payload = reader.take((k * bits + 7) // 8)
        (crc,) = reader.unpack(_CRC)
        if reader.pos != len(data):
            raise FtokError(f"{source}: corrupt .ftok file ({len(data) - reader.pos} unexpected bytes after the end)")
        if zlib.crc32(data[: reader.pos - _CRC.size]) != crc:
            raise FtokError(f"{source}: corrupt .ftok file (CRC32 checksum mismatch)")
        if d == 0 or any(lv < 2 for lv in levels) or bits != bits_per_token(math.prod(levels)):
            raise FtokError(f"{source}: corrupt .ftok file (bits per token {bits} do not match FSQ levels {levels})")
        if flags & ~_FLAG_APG:
            raise FtokError(f"{source}: corrupt .ftok file (unknown flag bits {flags:#04x})")
        if not 1 <= k <= n:
            raise FtokError(f"{source}: corrupt .ftok file (k={k} tokens for a model with {n})")
        try:
            hint = hint_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise FtokError(f"{source}: corrupt .ftok file (model hint is not UTF-8)") from None
        tokens = unpack_ids(payload, k, bits)
        try:
            decode = DecodeConfig(steps=steps, guidance_scale=float(guidance), apg=bool(flags & _FLAG_APG), seed=seed)
            return cls(tuple(tokens), fp.hex(), (h, w), n, levels, hint, decode)
        except FlexiTokError as e:
            raise FtokError(f"{source}: corrupt .ftok file ({e})") from None


class _Reader:
    """Sequential reads from a byte string; running off the end is reported as a truncated file."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.source, self.pos = data, source, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FtokError(
                f"{self.source}: truncated .ftok file ({len(self.data)} bytes; the header promises more). "
                "To drop tokens use `flexitok truncate`, not a byte-level cut"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        return st.unpack(self.take(st.size))


def write_ftok(path: str | os.PathLike, ftok: FtokFile) -> int:
    """Write ``ftok`` atomically (temporary file + rename); returns the file size in bytes."""
    data = ftok.to_bytes()
    atomic_write_bytes(Path(path), data)
    return len(data)


def read_ftok(path: str | os.PathLike) -> FtokFile:
    """Read and validate a ``.ftok`` file (clear :class:`FtokError` for every kind of bad file)."""
    p = Path(path)
    if not p.is_file():
        raise FtokError(f"{p}: no such file")
    return FtokFile.from_bytes(p.read_bytes(), str(p))
