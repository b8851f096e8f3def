"""An ImageNet-style folder tree for tests: ``root/{train,val}/<class>/*.{jpg,JPEG,png}``, mixed sizes and modes.

Each class has its own colour and shape, so a model can tell them apart; files vary in size (wider, taller,
smaller than the model), mode (RGB, L, RGBA, P, CMYK JPEG) and suffix case, as a user's real folder does.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASS_NAMES = ("n01440764_tench", "n02102040_springer", "n02979186_cassette", "n03000684_chainsaw")
_COLOURS = ((200, 40, 40), (40, 160, 60), (40, 60, 200), (210, 190, 40))
_SUFFIXES = (".jpg", ".JPEG", ".png")
_MODES = ("RGB", "L", "RGBA", "P", "CMYK")


def _image(cls: int, rng: random.Random) -> Image.Image:
    w, h = rng.choice(((48, 40), (40, 64), (24, 24), (80, 60), (33, 47)))
    bg = tuple(int(c * 0.3) + rng.randrange(30) for c in _COLOURS[cls])
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    x0, y0 = rng.randrange(w // 4), rng.randrange(h // 4)
    box = (x0, y0, x0 + w // 2, y0 + h // 2)
    (draw.ellipse, draw.rectangle, draw.polygon, draw.pieslice)[cls](
        *((box,) if cls != 2 else ([(x0, y0 + h // 2), (x0 + w // 4, y0), (x0 + w // 2, y0 + h // 2)],)),
        **({"start": 30, "end": 300} if cls == 3 else {}),
        fill=_COLOURS[cls],
    )
    return img


def make_imagenet_tree(
    root: Path, per_class: dict[str, int] | None = None, classes: tuple[str, ...] = CLASS_NAMES, seed: int = 0
) -> Path:
    """Write the tree; ``per_class`` maps split -> images per class (default train 6, val 2). Returns ``root``."""
    rng = random.Random(seed)
    per_class = per_class or {"train": 6, "val": 2}
    for split, n in per_class.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = _image(c % len(_COLOURS), rng)
                suffix = _SUFFIXES[(i + c) % len(_SUFFIXES)]
                mode = _MODES[(i + 2 * c) % len(_MODES)]
                if suffix == ".png" and mode == "CMYK":
                    mode = "RGB"
                if mode == "P":
                    img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
                elif mode != "RGB":
                    img = img.convert(mode)
                if suffix.lower() in (".jpg", ".jpeg") and img.mode in ("RGBA", "P"):
                    img = img.convert("RGB")
                img.save(folder / f"{name.split('_')[0]}_{split}_{i}{suffix}")
    return root
