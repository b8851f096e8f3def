"""Splits of a dataset root (``root/{train,val,test}/...``) and the class mapping they share.

A root is a *split root* when it has at least one sub-folder with a standard split name (``train``, ``val``,
``validation``, ``valid``, ``test``, ``dev``); then every non-hidden sub-folder is a split and the requested split
must be one of them. A root without any standard split folder (e.g. ``root/<class>/*.jpg`` or a folder of
``*.tar`` shards) is a single-split root, read as split ``train`` only: asking it for ``val`` or ``test`` is an
error, never a silent fallback to the training data.

Class ids come from class folders, with one mapping per root: the sorted union of the class-folder names of
all its splits, so ``val`` class 3 is ``train`` class 3 even when a split lacks a class.
"""

from __future__ import annotations

import json
from pathlib import Path

from flexitok.data.base import DatasetError

STANDARD_SPLITS: tuple[str, ...] = ("train", "val", "validation", "valid", "test", "dev")
# The held-out splits ``eval_source`` looks for, in this order.
EVAL_SPLITS: tuple[str, ...] = ("val", "validation", "valid", "test")
CLASSES_FILE = "classes.json"  # {"class_names": [...]} written by ``flexitok shards`` at the output root


def check_split_name(split: object) -> str:
    """A split is a plain folder name: a non-empty string without path separators or dots-only parts."""
    if not isinstance(split, str) or not split or split in (".", "..") or "/" in split or "\\" in split:
        raise DatasetError(f"split must be a folder name such as 'train', 'val' or 'test', got {split!r}")
    return split


def _subdirs(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DatasetError(f"cannot list {root}: {e}") from e


def list_splits(root: Path) -> list[str]:
    """The split folders of ``root`` (empty for a single-split root; see the module docstring)."""
    subdirs = _subdirs(root)
    if not any(p.name in STANDARD_SPLITS for p in subdirs):
        return []
    return [p.name for p in subdirs]


def available_splits(root: Path) -> list[str]:
    """The splits a config may name for ``root``: its split folders, or ``["train"]`` for a single-split root."""
    return list_splits(root) or ["train"]


def split_dir(path: str | None, split: str, kind: str) -> Path:
    """The folder holding ``split`` of the dataset at ``path`` (see the module docstring for the rule)."""
    if path is None:
        raise DatasetError(f"dataset kind {kind!r} needs DataConfig.path")
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{kind} dataset {root} does not exist or is not a directory")
    splits = list_splits(root)
    if splits:
        if split not in splits:
            raise DatasetError(f"split {split!r} not found under {root}; its splits are: {', '.join(splits)}")
        return root / split
    if split != "train":
        raise DatasetError(
            f"split {split!r} not found: {root} has no split folders ({', '.join(STANDARD_SPLITS[:5])}, ...), so it "
            "is read as split 'train' only; add a split folder, or let the run hold out samples of 'train'"
        )
    return root


def _has_image(folder: Path, extensions: frozenset[str]) -> bool:
    return any(
        p.suffix.lower() in extensions and not any(s.startswith(".") for s in p.relative_to(folder).parts)
        for p in folder.rglob("*")
    )


def class_folders(split_root: Path, extensions: frozenset[str]) -> list[str]:
    """Names of the sub-folders of ``split_root`` that hold at least one image file (sorted)."""
    return [p.name for p in _subdirs(split_root) if _has_image(p, extensions)]


def root_class_names(path: str | Path, extensions: frozenset[str]) -> list[str] | None:
    """The class mapping shared by every split of the folder dataset at ``path``: the sorted union of the class
    folders of its splits (None for a single-split root: the folder's own classes apply)."""
    root = Path(path)
    splits = list_splits(root)
    if not splits:
        return None
    names: set[str] = set()
    for split in splits:
        names.update(class_folders(root / split, extensions))
    return sorted(names)


def read_classes_file(folder: Path) -> list[str] | None:
    """``class_names`` from ``classes.json`` in ``folder`` (None when absent)."""
    path = folder / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())["class_names"]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path} is not a valid class list: {e}") from e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise DatasetError(f"{path}: class_names must be a list of distinct strings")
    return names


def write_classes_file(folder: Path, class_names: list[str]) -> Path:
    path = folder / CLASSES_FILE
    tmp = folder / f".{CLASSES_FILE}.tmp"
    tmp.write_text(json.dumps({"class_names": class_names}, indent=1))
    tmp.replace(path)
    return path
