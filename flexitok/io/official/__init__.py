"""Import of official (apple/ml-flextok) checkpoints.

The official ``model.safetensors`` stores the full state dict and, in its header metadata, the Hydra config:
one entry per top-level key whose value is the Python ``str()`` of a dict. We parse it with
``ast.literal_eval`` (never ``eval``, never Hydra ``instantiate``), check every ``_target_`` against an
allow-list, translate the options we understand into :class:`FlexTokConfig`, and refuse anything else with a
clear error. State-dict keys are renamed with an explicit table (:func:`official_key_map`).
"""

from __future__ import annotations

from flexitok.io.official.config import config_from_official
from flexitok.io.official.export import export_official, official_metadata, official_state_dict
from flexitok.io.official.keys import convert_state_dict, official_key_map
from flexitok.io.official.load import load_official
from flexitok.io.official.metadata import KNOWN_TARGETS, parse_metadata, read_safetensors_header
from flexitok.io.official.options import OFFICIAL_OPTIONS, check_options, class_name, option
from flexitok.io.official.vae import infer_vae_config, official_base_vae_config
from flexitok.io.official.wiring import check_wiring

__all__ = [
    "KNOWN_TARGETS",
    "OFFICIAL_OPTIONS",
    "check_options",
    "check_wiring",
    "class_name",
    "config_from_official",
    "convert_state_dict",
    "export_official",
    "infer_vae_config",
    "load_official",
    "official_base_vae_config",
    "official_key_map",
    "official_metadata",
    "official_state_dict",
    "option",
    "parse_metadata",
    "read_safetensors_header",
]
