"""Images as ``data:image/png;base64`` URLs, the form the demo's JSON API carries them in."""

from __future__ import annotations

import base64
import io

from PIL import Image
from torch import Tensor

from flexitok.errors import InvalidInputError
from flexitok.io.images import tensor_to_pil

_PREFIX = "data:image/png;base64,"


def png_data_url(image: Tensor) -> str:
    """``[3, H, W]`` in [-1, 1] -> ``data:image/png;base64,...``."""
    buf = io.BytesIO()
    tensor_to_pil(image).save(buf, format="PNG")
    return _PREFIX + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_data_url(url: str) -> Image.Image:
    """``data:image/png;base64,...`` -> PIL image (for clients and tests)."""
    if not url.startswith(_PREFIX):
        raise InvalidInputError("not a PNG data URL")
    return Image.open(io.BytesIO(base64.b64decode(url[len(_PREFIX) :])))
