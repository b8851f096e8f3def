"""One persistence mechanism for every flexitok model: :class:`PretrainedModel`.

>>> model.save_pretrained("runs/my-tokenizer")                  # one folder, written atomically as a whole
>>> FlexTok.from_pretrained("runs/my-tokenizer", device="cuda", dtype=torch.bfloat16)

**Folder layout.** ``config.json`` holds ``{"format": "flexitok", "version": 2, "model": <model_type>,
"config": {...}}`` (the model's config dataclass as JSON); ``model.safetensors`` holds the state dict, and its
header metadata repeats format and model type and carries the SHA-256 of ``config.json``, so a folder mixed from
two saves is detected instead of loaded. A save writes a sibling temporary folder and swaps it in
(:func:`flexitok.utils.files.write_folder_atomically`): readers and concurrent savers only ever see one complete
folder. Saving never changes the model or its config. Older layouts (format version 1 tokenizers, the 0.1.0
generator ``{"kind": "flexitok-generator", ...}`` and single-file classifiers) still load; see each model's
:meth:`PretrainedModel.upgrade_config_json`.

**Names.** ``from_pretrained(name_or_path)`` accepts, in this order: a bundled model name (a folder under
``flexitok/assets/<bundled_dir>``, plus aliases such as ``"default"``), an existing local folder or file, a short
name of a registered foreign format (the official FlexTok releases) or a hub repo id ``owner/name``
(downloaded with ``huggingface_hub``). Folders and files in another code base's format are read by the
:class:`ForeignFormat` readers that higher layers register (``flexitok.io`` registers the official format).

**Validation before allocation.** ``config.json`` is size-limited, parsed, and decoded strictly with bounds
(:func:`flexitok.utils.config_json.config_from_json`); the model's state-dict size is estimated from the config
and checked against ``max_parameters`` and against the weights file's header before the model is built; names,
shapes and dtype kinds are compared with the header before any tensor data is read; the weights must be finite.
Every failure is a :class:`flexitok.errors.CheckpointError` naming the file (and the field, for configs).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from flexitok.errors import CheckpointError, InvalidInputError
from flexitok.utils.config_json import config_from_json, config_to_json
from flexitok.utils.files import write_folder_atomically
from flexitok.utils.hub import download_repo, is_repo_id
from flexitok.utils.weights import (
    WeightsFile,
    WeightsHeader,
    all_finite,
    materialize_parameters,
    parameters_on_meta,
    state_dict_problems,
    write_safetensors_streaming,
)

FORMAT = "flexitok"
FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Files besides the model that a save carries over when it replaces a folder (a model card).
KEPT_FILES = ("README.md",)
ASSETS = Path(__file__).resolve().parent.parent / "assets"
# Default ceiling on the state-dict size (parameters + stored buffers) a config may describe: 8e9 values are
# 32 GB in float32, several times the largest released FlexTok; pass max_parameters= to load larger models.
MAX_PARAMETERS = 8_000_000_000
MAX_CONFIG_BYTES = 4 << 20
_TORN_RETRIES = 3

M = TypeVar("M", bound="PretrainedModel")
V = TypeVar("V")

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class ForeignFormat:
    """A checkpoint format of another code base that a model class also reads (e.g. official FlexTok files).

    ``detect(path)`` says whether a local file or folder is in this format; ``load(path, **options)`` returns
    the model on the CPU; ``aliases`` maps short names to hub repo ids (``"d18-d28-dfn"`` -> ``"EPFL-VILAB/..."``).
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., nn.Module]
    aliases: Mapping[str, str] = field(default_factory=dict)


_FORMATS: dict[str, dict[str, ForeignFormat]] = {}  # model_type -> format name -> reader


class _TornFolderError(CheckpointError):
    """config.json and model.safetensors come from different saves (retried: a concurrent save may be swapping)."""


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise InvalidInputError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)} or pass a torch.dtype")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_float_dtype_name(name: str) -> bool:
    # safetensors dtype names: F16, BF16, F32, F64, F8_E4M3, ... for floats; I*, U*, BOOL otherwise.
    return name.startswith(("F", "BF"))


class PretrainedModel(nn.Module):
    """Base class of every flexitok model: ``save_pretrained`` / ``from_pretrained`` (see the module docs).

    A subclass is built as ``cls(config)`` from an instance of ``config_class`` and sets ``model_type``
    (the ``"model"`` tag in config.json), optionally ``bundled_dir`` / ``bundled_aliases``, and implements
    :meth:`estimate_state_size` (used for the size ceiling before anything is allocated).
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type[Any]]
    bundled_dir: ClassVar[str | None] = None
    bundled_aliases: ClassVar[Mapping[str, str]] = {}
    config: Any

    def __init__(self) -> None:
        super().__init__()
        # Weights saved under older parameter names load everywhere (from_pretrained, training checkpoints).
        self.register_load_state_dict_pre_hook(_upgrade_names_on_load)

    # ------------------------------------------------------------------ hooks for subclasses
    @classmethod
    def estimate_state_size(cls, config: Any) -> int:
        """Number of values (parameters and persistent buffers) a model built from ``config`` stores, within a
        factor of about 1.5; computed from the config alone, without building anything."""
        raise NotImplementedError

    def config_for_saving(self) -> Any:
        """The config written to config.json: a copy (saving never changes ``self.config``)."""
        return copy.deepcopy(self.config)

    @classmethod
    def check_loaded_config(cls, config: Any, source: str) -> None:
        """Extra rules for configs read from files (raise CheckpointError naming ``source`` and the field)."""

    @classmethod
    def upgrade_config_json(cls, blob: dict[str, Any]) -> dict[str, Any]:
        """Map an older config.json layout of this model to the current one (returned unchanged if current).

        Subclasses with layouts of their own extend this (calling ``super()``).
        """
        if blob.get("format") == FORMAT and blob.get("version") == 1 and "model" not in blob:
            return {**blob, "model": "tokenizer"}  # format version 1 existed for tokenizers only
        return blob

    @classmethod
    def upgrade_state_dict(cls, state: Mapping[str, V]) -> dict[str, V]:
        """Map the parameter names of an older version of this model to the current ones (values untouched).

        Applied to every weights file :meth:`from_pretrained` reads (before its header is checked) and to every
        ``load_state_dict`` of the model; subclasses whose parameters moved override it.
        """
        return dict(state)

    # ------------------------------------------------------------------ foreign formats and names
    @classmethod
    def register_format(cls, fmt: ForeignFormat) -> None:
        """Let ``from_pretrained`` read ``fmt`` too (called by the layer that implements the format)."""
        _FORMATS.setdefault(cls.model_type, {})[fmt.name] = fmt

    @classmethod
    def foreign_format(cls, name: str) -> ForeignFormat:
        try:
            return _FORMATS[cls.model_type][name]
        except KeyError:
            raise CheckpointError(f"no {name!r} reader is registered for {cls.__name__} (import flexitok.io)") from None

    @classmethod
    def _formats(cls) -> list[ForeignFormat]:
        return list(_FORMATS.get(cls.model_type, {}).values())

    @classmethod
    def bundled_names(cls) -> list[str]:
        """Names of the models of this kind shipped inside the package (``flexitok/assets/<bundled_dir>``)."""
        if cls.bundled_dir is None:
            return []
        root = ASSETS / cls.bundled_dir
        names = set(cls.bundled_aliases)
        if root.is_dir():
            for p in root.iterdir():
                if p.is_dir() and (p / CONFIG_NAME).is_file():
                    names.add(p.name)
                elif p.suffix == ".safetensors" and p.is_file():  # single-file models saved before format 2
                    names.add(p.stem)
        return sorted(names)

    @classmethod
    def _bundled_path(cls, name: str) -> Path | None:
        if cls.bundled_dir is None or name not in cls.bundled_names():
            return None
        name = cls.bundled_aliases.get(name, name)
        folder = ASSETS / cls.bundled_dir / name
        if folder.is_dir():
            return folder
        return folder.with_name(name + ".safetensors")

    @classmethod
    def _resolve(cls, name_or_path: str | os.PathLike[str], revision: str | None) -> Path:
        """A local file or folder for a bundled name, a path, a registered short name or a hub repo id."""
        if isinstance(name_or_path, str):
            bundled = cls._bundled_path(name_or_path)
            if bundled is not None:
                if not bundled.exists():
                    raise CheckpointError(
                        f"bundled {cls.model_type} {name_or_path!r} is missing from this installation"
                    )
                return bundled
        path = Path(name_or_path).expanduser()
        if path.exists():
            return path
        key = str(name_or_path)
        aliases = {k: v for fmt in cls._formats() for k, v in fmt.aliases.items()}
        repo = aliases.get(key, key)
        if isinstance(name_or_path, str) and is_repo_id(repo):
            if key not in aliases and path.parent.is_dir() and str(path.parent) not in ("", "."):
                # ``runs/model`` whose folder ``runs`` exists here is a local path, not a hub repo id.
                raise CheckpointError(f"no {cls.model_type} at {key!r}: no such file or folder")
            try:
                return download_repo(repo, revision)
            except CheckpointError as e:
                if key in aliases:
                    raise
                raise CheckpointError(f"no local folder {key!r}, and as a hub repo id: {e}") from e
        if not isinstance(name_or_path, str) or os.sep in key or key.startswith((".", "~")):
            raise CheckpointError(f"no {cls.model_type} at {key!r}: no such file or folder")
        names = cls.bundled_names() + sorted(aliases)
        raise CheckpointError(
            f"{key!r} is not a bundled model (bundled {cls.model_type}s: {names or 'none'}), an existing file or "
            "folder, or a hub repo id (owner/name)"
        )

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory``, atomically as a whole.

        An existing ``directory`` is replaced only if it holds nothing but a saved model (and a README.md, which
        is kept); anything else is refused rather than deleted. The model and its config are not modified.
        """
        directory = Path(directory)
        config = self.config_for_saving()
        source = f"{directory / CONFIG_NAME} (while saving)"
        payload = config_to_json(config)
        config_from_json(type(config), json.loads(json.dumps(payload)), source)  # what we write must load
        body = {"format": FORMAT, "version": FORMAT_VERSION, "model": self.model_type, "config": payload}
        data = (json.dumps(body, indent=2) + "\n").encode()
        tensors = self.state_dict()  # written one tensor at a time below: no full copy of the model
        for k, v in tensors.items():
            if not all_finite(v):
                raise CheckpointError(f"refusing to save {directory}: weight {k!r} has NaN or infinite values")
        meta = {"format": FORMAT, "model": self.model_type, "config_sha256": _sha256(data)}
        if directory.exists():
            if not directory.is_dir():
                raise CheckpointError(f"cannot save to {directory}: it is a file, not a folder")
            extra = sorted(
                p.name for p in directory.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME, *KEPT_FILES)
            )
            if extra:
                raise CheckpointError(
                    f"refusing to replace {directory}: it holds files other than a saved model ({extra[:5]}); "
                    "save into a new or empty folder"
                )

        def write(tmp: Path) -> None:
            (tmp / CONFIG_NAME).write_bytes(data)
            write_safetensors_streaming(tmp / WEIGHTS_NAME, tensors, meta)
            # Give the weights the umask's permissions, like config.json.
            os.chmod(tmp / WEIGHTS_NAME, (tmp / CONFIG_NAME).stat().st_mode & 0o777)
            for name in KEPT_FILES:
                try:
                    shutil.copy2(directory / name, tmp / name)
                except FileNotFoundError:
                    pass

        return write_folder_atomically(directory, write)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = "cpu",
        dtype: torch.dtype | str | None = None,
        *,
        revision: str | None = None,
        max_parameters: int = MAX_PARAMETERS,
    ) -> M:
        """Load a model in eval mode on ``device``, cast to ``dtype`` (floating-point weights only) if given.

        ``name_or_path``: a bundled name, a folder written by :meth:`save_pretrained` (or in a registered foreign
        format), or a hub repo id (``revision`` picks a branch, tag or commit). See the module docs.
        """
        dt = resolve_dtype(dtype)
        path = cls._resolve(name_or_path, revision)
        # The weights are read one tensor at a time straight into dt on device (no full-size float32 copy).
        model = cls._load_local(path, max_parameters, dt, device)
        if dt is not None:
            model = model.to(dtype=dt)  # what is left: buffers the checkpoint does not hold
        if device is not None:
            model = model.to(device)
        return model.eval()

    @classmethod
    def _load_local(
        cls: type[M],
        path: Path,
        max_parameters: int,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> M:
        if path.is_dir() and (path / CONFIG_NAME).is_file():
            for attempt in range(_TORN_RETRIES):
                try:
                    blob, raw = cls._read_config_blob(path / CONFIG_NAME)
                    if blob is None:
                        break  # not our layout: try the foreign formats below
                    config = cls._config_from_blob(blob, path / CONFIG_NAME, max_parameters)
                    return cls.from_config_and_weights(
                        config,
                        path / WEIGHTS_NAME,
                        max_parameters=max_parameters,
                        config_sha256=_sha256(raw),
                        source=str(path / CONFIG_NAME),
                        dtype=dtype,
                        device=device,
                    )
                except _TornFolderError:
                    if attempt == _TORN_RETRIES - 1:
                        raise
                    time.sleep(0.05 * (attempt + 1))
        for fmt in cls._formats():
            if fmt.detect(path):
                return typing.cast(M, fmt.load(path, **({"dtype": dtype} if dtype is not None else {})))
        if path.is_dir() and (path / CONFIG_NAME).is_file():
            cls.read_config(path / CONFIG_NAME, max_parameters)  # raises the precise error about config.json
        what = "folder" if path.is_dir() else "file"
        raise CheckpointError(
            f"{path}: this {what} holds no flexitok {cls.model_type} (expected a folder with {CONFIG_NAME} and "
            f"{WEIGHTS_NAME} written by save_pretrained)"
        )

    @classmethod
    def _read_config_blob(cls, file: Path) -> tuple[dict[str, Any] | None, bytes]:
        """-> (the upgraded config.json object, or None if it is not a flexitok config.json; its raw bytes)."""
        try:
            size = file.stat().st_size
            if size > MAX_CONFIG_BYTES:
                raise CheckpointError(
                    f"{file}: {size} bytes is too large for a model config (limit {MAX_CONFIG_BYTES})"
                )
            raw = file.read_bytes()
        except OSError as e:
            raise CheckpointError(f"cannot read {file}: {e}") from e
        try:
            blob = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"{file} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(blob, dict):
            raise CheckpointError(f"{file} must hold a JSON object, got {type(blob).__name__}")
        blob = cls.upgrade_config_json(blob)
        return (blob if blob.get("format") == FORMAT else None), raw

    @classmethod
    def _config_from_blob(cls, blob: dict[str, Any], file: Path, max_parameters: int) -> Any:
        version = blob.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{file}: field 'version' must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{file} was written by a newer flexitok (format version {version})")
        kind = blob.get("model")
        if kind != cls.model_type:
            raise CheckpointError(
                f"{file}: field 'model' says {kind!r}, but {cls.__name__} loads a {cls.model_type!r} folder"
            )
        if "config" not in blob:
            raise CheckpointError(f"{file}: field 'config' is missing")
        config = config_from_json(cls.config_class, blob["config"], str(file))
        cls.check_loaded_config(config, str(file))
        cls._check_size(config, str(file), max_parameters)
        return config

    @classmethod
    def _check_size(cls, config: Any, source: str, max_parameters: int) -> int:
        try:
            size = int(cls.estimate_state_size(config))
        except (ValueError, TypeError, ArithmeticError) as e:
            raise CheckpointError(f"{source}: the config does not describe a valid {cls.__name__} ({e})") from None
        if size > max_parameters:
            raise CheckpointError(
                f"{source}: the config describes a model of about {size:.3g} parameters, over the limit of "
                f"{max_parameters:.3g} (pass max_parameters= to load it anyway)"
            )
        return size

    @classmethod
    def read_config(cls, file: str | os.PathLike[str], max_parameters: int = MAX_PARAMETERS) -> Any:
        """Read and validate a ``config.json`` of this model kind without touching weights. -> the config.

        The entry point for validating model folders (e.g. a fuzz suite): raises :class:`CheckpointError`, and
        nothing else, for any content of ``file``.
        """
        file = Path(file)
        if not file.is_file():
            raise CheckpointError(f"{file}: no such file")
        blob, _ = cls._read_config_blob(file)
        if blob is None:
            raise CheckpointError(f"{file}: field 'format' must be {FORMAT!r} (not a flexitok {cls.model_type})")
        return cls._config_from_blob(blob, file, max_parameters)

    @classmethod
    def from_config_and_weights(
        cls: type[M],
        config: Any,
        weights: Path,
        *,
        max_parameters: int = MAX_PARAMETERS,
        config_sha256: str | None = None,
        source: str | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> M:
        """Build ``cls(config)`` and load ``weights`` into it, with the checks of the module docs (eval mode).

        The model is built with its parameters on the meta device (:func:`parameters_on_meta`), and each
        tensor is read from the file into its final dtype (``dtype`` for floating-point weights, else the
        model's) and ``device`` (default CPU): loading needs about the weights' bytes in that dtype.
        """
        source = source or str(weights)
        size = cls._check_size(config, source, max_parameters)
        # One open file for the header checks and the data: a concurrent save may replace the path meanwhile.
        with WeightsFile(weights) as f:
            header = f.header
            header = WeightsHeader(
                cls.upgrade_state_dict(header.shapes), cls.upgrade_state_dict(header.dtypes), header.metadata
            )
            stored = header.metadata.get("config_sha256")
            if config_sha256 is not None and stored is not None and stored != config_sha256:
                raise _TornFolderError(
                    f"{weights.parent}: {CONFIG_NAME} and {WEIGHTS_NAME} come from different saves (another "
                    "process kept replacing the folder while it was read, the folder was assembled from two "
                    f"models, or {CONFIG_NAME} was edited after saving: save the model again)"
                )
            if size > 2 * header.numel + 1_000_000:
                raise CheckpointError(
                    f"{source}: the config describes about {size:.3g} values but {weights.name} holds "
                    f"{header.numel:.3g}"
                )
            try:
                with parameters_on_meta():
                    model = typing.cast(Callable[[Any], M], cls)(config)
            except (ValueError, TypeError, RuntimeError) as e:
                raise CheckpointError(f"{source}: cannot build a {cls.__name__} from this config ({e})") from None
            cls._check_header(model, header, weights)
            materialize_parameters(model, dtype, device)
            # new name -> the file's name (upgrade_state_dict renames keys and leaves values alone)
            file_key = cls.upgrade_state_dict({k: k for k in f.header.shapes})
            for k, v in model.state_dict().items():  # the header check made the names match one to one
                f.read_into(file_key[k], v)
                if not all_finite(v):
                    raise CheckpointError(f"{weights}: weight {k!r} has NaN or infinite values")
        return model.eval()

    @staticmethod
    def _check_header(model: nn.Module, header: WeightsHeader, weights: Path) -> None:
        own: dict[str, Tensor] = model.state_dict()
        problems = state_dict_problems({k: tuple(v.shape) for k, v in own.items()}, header.shapes)
        if problems:
            raise CheckpointError(f"checkpoint {weights} does not match the model: " + "; ".join(problems))
        for k, v in own.items():
            if v.is_floating_point() != _is_float_dtype_name(header.dtypes[k]):
                raise CheckpointError(
                    f"{weights}: tensor {k!r} is stored as {header.dtypes[k]}, the model has {v.dtype}"
                )


def _upgrade_names_on_load(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook of :class:`PretrainedModel`: rename this module's old keys in place."""
    assert isinstance(module, PretrainedModel)
    own = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]
    for new, old in module.upgrade_state_dict({k: k for k in own}).items():
        if new != old and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
