"""``flexitok shards``: write webdataset tar shards from an image folder (for ``data.kind=webdataset`` runs).

flexitok shards /data/imagenet /data/imagenet-shards --shard-size 1000
flexitok shards /data/photos /data/photo-shards --max-side 288
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from flexitok.errors import InvalidInputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shards",
        help="write webdataset tar shards from an image folder",
        description="Write every readable image under IMAGES into tar shards (<key>.jpg|png|webp + <key>.cls + "
        "<key>.json with the original file name) with a shardindex.json. A folder with split sub-folders "
        "(train/, val/, test/, ...) gets one shard folder per split, matching data.kind=webdataset data.path=OUT. "
        "Labels come from class sub-folders (else -1), one mapping for all splits, recorded in OUT/classes.json.",
    )
    p.add_argument("images", help="image folder (class sub-folders give labels)")
    p.add_argument("out", help="output folder for the shards")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="resize the shorter side to this, centre-crop square, re-encode as JPEG (default: keep the bytes)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the write order (shards mix classes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flexitok.data.folder import IMAGE_EXTENSIONS, list_images
    from flexitok.data.splits import list_splits, root_class_names, write_classes_file
    from flexitok.data.webdataset import write_folder_shards

    if args.shard_size < 1:
        raise InvalidInputError(f"--shard-size must be >= 1, got {args.shard_size}")
    if args.max_side is not None and args.max_side < 1:
        raise InvalidInputError(f"--max-side must be >= 1, got {args.max_side}")
    src, out = Path(args.images), Path(args.out)
    if not src.is_dir():
        raise InvalidInputError(f"image folder {src} does not exist or is not a directory")
    splits = list_splits(src)
    jobs = [(s, src / s, out / s) for s in splits] if splits else [("", src, out)]
    for _, folder, dest in jobs:
        if dest.exists() and any(dest.glob("*.tar")):
            raise InvalidInputError(f"{dest} already holds shards; choose an empty output folder")
        if not list_images(folder):  # checked for every split before any is written
            raise InvalidInputError(f"no images under {folder}")
    # One class mapping for every split (the sorted union of their class folders), so val class 3 is train class 3.
    class_names = root_class_names(src, IMAGE_EXTENSIONS) if splits else None
    for split, folder, dest in jobs:
        bar = tqdm(desc=f"shards {split or folder.name}", unit="img", disable=args.no_progress)

        def progress(done: int, total: int, bar: tqdm = bar) -> None:
            bar.total = total
            bar.update(done - bar.n)

        shards, skipped = write_folder_shards(
            folder,
            dest,
            shard_size=args.shard_size,
            max_side=args.max_side,
            shuffle_seed=args.seed,
            progress=progress,
            class_names=class_names,
            file_prefix=f"{split}/" if split else "",
        )
        bar.close()
        index = read_index(dest)
        names = index.get("class_names") or []
        samples = sum(int(e["nsamples"]) for e in index["shardlist"])
        note = f", skipped {skipped} unreadable file(s)" if skipped else ""
        label = f"{split}: " if split else ""
        print(f"{label}{samples} samples in {len(shards)} shard(s), {len(names)} classes -> {dest}{note}")
        if class_names is None and names:
            class_names = names
    if class_names:
        write_classes_file(out, class_names)
        print(f"class names ({len(class_names)}) -> {out / 'classes.json'}")
    return 0


def read_index(folder: Path) -> dict:
    import json

    from flexitok.data.webdataset import SHARD_INDEX

    index: dict = json.loads((folder / SHARD_INDEX).read_text())
    return index
