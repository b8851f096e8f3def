"""The official FlexTok checkpoint format as a reader of :meth:`FlexTok.from_pretrained`, and its short names.

Persistence itself is :class:`flexitok.utils.persistence.PretrainedModel`; this module (imported by the
``flexitok`` package, so always active) registers :func:`flexitok.io.official.load_official` for official
``model.safetensors`` files and folders, and the released checkpoints' short names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flexitok.errors import CheckpointError, FlexiTokError
from flexitok.io.official import load_official
from flexitok.models.flextok import FlexTok
from flexitok.utils.persistence import WEIGHTS_NAME, ForeignFormat

# Released official checkpoints on the Hugging Face hub (need network access).
OFFICIAL_REPOS = {
    "d12-d12-in1k": "EPFL-VILAB/flextok_d12_d12_in1k",
    "d18-d18-in1k": "EPFL-VILAB/flextok_d18_d18_in1k",
    "d18-d28-in1k": "EPFL-VILAB/flextok_d18_d28_in1k",
    "d18-d28-dfn": "EPFL-VILAB/flextok_d18_d28_dfn",
}


def is_official(path: Path) -> bool:
    """A safetensors file, or a folder with ``model.safetensors`` whose config.json is not a flexitok one."""
    if path.is_file():
        return path.suffix == ".safetensors"
    return (path / WEIGHTS_NAME).is_file()


def load_official_model(path: Path, **options: Any) -> FlexTok:
    """``load_official`` on a file or folder, with the options of :meth:`FlexTok.from_official`."""
    try:
        return load_official(path, **options)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        if isinstance(e, FlexiTokError):
            raise
        # A malformed official config (a missing section, a wrong type) surfaces as one of these.
        raise CheckpointError(f"{path} is not a valid official FlexTok checkpoint ({type(e).__name__}: {e})") from e


FlexTok.register_format(
    ForeignFormat(name="official", detect=is_official, load=load_official_model, aliases=OFFICIAL_REPOS)
)
