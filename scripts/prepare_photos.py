"""Data for the bundled ``photo`` tokenizer: offline natural photos from Debian packages and scikit-image.

Two steps (see docs/model-cards/photo-tokenizer.md)::

    # 1. Resized copies of the source photos: <out>/train (training) and <out>/test (held out).
    python scripts/prepare_photos.py images --out runs/photos
    # 2. After `flexitok train vae`: a latent cache of random crops, encoded once with the frozen VAE.
    python scripts/prepare_photos.py latents --photos runs/photos --vae runs/photo-vae/vae \
        --scaling-factor 1.0 --size 64 -n 40000 --out runs/photo-latents

Training photos: every image of the Debian packages plasma-workspace-wallpapers, lomiri-wallpapers
(16.04 and 20.04 sets) and ukui-wallpapers (one copy per picture: the largest resolution), plus the colour
photos bundled with scikit-image. Held out: the nature photos of mate-backgrounds (never used for training). Copies are stored as
PNG with the longer side at most ``--max-side`` pixels, so random crops load fast.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from flexitok.data.skimage_photos import SKIMAGE_TEST_PHOTOS, SKIMAGE_TRAIN_PHOTOS

TRAIN_PACKAGES = (
    "plasma-workspace-wallpapers",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
    "ukui-wallpapers",
)
TEST_PACKAGES = ("mate-backgrounds",)
# Held-out photos: the nature/ set of mate-backgrounds. Its abstract/ and desktop/ sets are drawings, logos
# and transparent PNGs (blank once composited on white), not photos.
TEST_SUBDIR = "/nature/"
# Every skimage colour photo trains the photo model (its held-out set is mate-backgrounds): the library's
# train and test photos plus the colour wheel.
SKIMAGE_PHOTOS = SKIMAGE_TRAIN_PHOTOS + SKIMAGE_TEST_PHOTOS + ("colorwheel",)
_EXT = (".png", ".jpg", ".jpeg", ".webp")


def package_images(package: str) -> list[tuple[str, Path]]:
    """(name, file) of the images a Debian package installs (``dpkg -L``), one per picture: the largest."""
    try:
        out = subprocess.run(["dpkg", "-L", package], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"error: Debian package {package} is not installed (apt-get install {package})") from e
    files = [Path(line) for line in out.splitlines() if line.lower().endswith(_EXT) and Path(line).is_file()]
    groups: dict[str, list[Path]] = {}
    for f in files:
        if f.stem == "screenshot":  # plasma previews of the same picture
            continue
        if "contents" in f.parts:  # plasma layout: <Name>/contents/images[_dark]/<WxH>.<ext>
            i = f.parts.index("contents")
            key = "/".join(f.parts[i - 1 : i + 2])
        else:  # mate/lomiri/ukui: name[_WxH].<ext>
            key = str(f.parent / re.sub(r"_\d+x\d+$", "", f.stem))
        groups.setdefault(key, []).append(f)
    best = []
    for key in sorted(groups):
        sizes = []
        for f in groups[key]:
            with Image.open(f) as img:
                sizes.append((img.size[0] * img.size[1], str(f.resolve())))
        name = key.replace("/contents/images", "").replace("_dark", "-dark").split("/")[-1]
        best.append((name, Path(max(sizes)[1])))
    return best


def save_resized(img: Image.Image, path: Path, max_side: int) -> None:
    from flexitok.data.transforms import to_rgb

    img = to_rgb(img)
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def cmd_images(args: argparse.Namespace) -> None:
    from flexitok.data.skimage_photos import load_skimage_photo

    out = Path(args.out)
    for split, packages in (("train", TRAIN_PACKAGES), ("test", TEST_PACKAGES)):
        n = 0
        for pkg in packages:
            for name, f in package_images(pkg):
                if split == "test" and TEST_SUBDIR not in str(f):
                    continue
                with Image.open(f) as img:
                    img.load()
                    save_resized(img, out / split / f"{pkg}-{name}.png", args.max_side)
                n += 1
        if split == "train":
            for name in SKIMAGE_PHOTOS:
                save_resized(load_skimage_photo(name), out / split / f"skimage-{name}.png", args.max_side)
                n += 1
        print(f"{split}: {n} images in {out / split}")


class RandomCrops(Dataset):
    """``n`` random-resized crops of the photos in a folder; crop ``i`` is fixed by (seed, i)."""

    def __init__(self, root: Path, n: int, size: int, scale: tuple[float, float], seed: int) -> None:
        from flexitok.data.folder import list_images
        from flexitok.data.transforms import ImageTransform, to_rgb

        self.photos = []
        for p in list_images(root):
            with Image.open(p) as img:
                self.photos.append(to_rgb(img).copy())
        self.n, self.seed = n, seed
        self.transform = ImageTransform(size=size, random_resized_crop=scale, hflip=True)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        from flexitok.data.base import index_generator

        g = index_generator(self.seed, i)
        photo = int(torch.randint(0, len(self.photos), (), generator=g))
        return {"image": self.transform(self.photos[photo], g), "label": photo}


def cmd_latents(args: argparse.Namespace) -> None:
    from flexitok.config import VAEConfig
    from flexitok.data import write_latent_cache
    from flexitok.models.vae import DiffusersVAE

    torch.set_num_threads(args.threads)
    vae = DiffusersVAE(
        VAEConfig(
            kind="diffusers",
            latent_channels=args.latent_channels,
            pretrained=args.vae,
            scaling_factor=args.scaling_factor,
        )
    ).eval()
    crops = RandomCrops(Path(args.photos) / "train", args.n, args.size, (args.min_scale, 1.0), args.seed)
    write_latent_cache(vae, crops, args.out, batch_size=64, meta={"source": "scripts/prepare_photos.py"})
    print(f"wrote {args.n} latents to {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)
    a = sub.add_parser("images", help="resized copies of the training and held-out photos")
    a.add_argument("--out", required=True)
    a.add_argument("--max-side", type=int, default=512)
    a.set_defaults(func=cmd_images)
    b = sub.add_parser("latents", help="latent cache of random crops for the tokenizer")
    b.add_argument("--photos", required=True, help="output folder of the images step")
    b.add_argument("--vae", required=True, help="diffusers AutoencoderKL folder (<out_dir>/vae of flexitok train vae)")
    b.add_argument("--latent-channels", type=int, default=4)
    b.add_argument("--scaling-factor", type=float, default=1.0)
    b.add_argument("--size", type=int, default=64)
    b.add_argument("--min-scale", type=float, default=0.02, help="smallest crop, as a fraction of the photo area")
    b.add_argument("-n", type=int, default=40000)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--out", required=True)
    b.set_defaults(func=cmd_latents)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
