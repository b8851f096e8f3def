"""Growing a model's native image size for fine-tuning at a higher resolution (e.g. a 256 model to 512)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from flexitok.errors import InvalidInputError
from flexitok.models.flextok import FlexTok
from flexitok.nn.embeddings import PositionEmbedding, resize_table, sincos_2d_table


def grow_table(posemb: PositionEmbedding, grid: tuple[int, int]) -> Tensor:
    """The table of ``posemb`` grown to cover ``grid``, in its stored layout.

    * sin-cos: the formula table of the new size, with the old table copied into its top-left corner, so every
      grid the old table covered is embedded exactly as before (and new positions continue the formula);
    * learned (``learnable_sum`` / ``learnable_prod``): each per-axis vector is stretched by linear
      interpolation (corners aligned), the usual way to start fine-tuning learned position embeddings.
    """
    old = posemb.table.detach()
    if posemb.kind == "sincos":
        rows, cols = max(grid[0], posemb.sizes[0]), max(grid[1], posemb.sizes[1])
        table = sincos_2d_table(old.shape[1], rows, cols).to(old)
        table[:, :, : old.shape[2], : old.shape[3]] = old
        return table
    if len(posemb.sizes) != 2:
        raise InvalidInputError("a 1-D (flatten_patches) position table cannot be grown to a larger grid")
    size = max(max(grid), posemb.sizes[0])
    # [n_axes, 1, D, S] -> [n_axes, 1, D, size]: resize each [D, S] vector as a [1, D, 1, S] image.
    return torch.cat([resize_table(axis[:, :, None, :], (1, size))[:, :, 0, :][None] for axis in old])


def resize_for_finetuning(model: FlexTok, image_size: tuple[int, int]) -> FlexTok:
    """A copy of ``model`` whose native size is ``image_size``, with position tables that cover it.

    Every weight is kept; only tables too small for the new patch grids are grown (:func:`grow_table`). Tables
    with ``posemb_scaling='interpolate'`` already fit any grid and are kept. The result is the starting point of
    fine-tuning at the new size (``init_from`` in a tokenizer run config; see docs/training.md). Without
    fine-tuning, the original model already runs at larger sizes, by interpolation and outside its trained
    regime (:meth:`FlexTok.check_image_size`).
    """
    cfg = model.config
    image_size = (int(image_size[0]), int(image_size[1]))
    parts = {}
    tables = {}
    for name in ("encoder", "decoder"):
        part, module = getattr(cfg, name), getattr(model, name)
        ph, pw = part.patch_size
        d = cfg.vae.downsample
        if image_size[0] % (d * ph) or image_size[1] % (d * pw):
            raise InvalidInputError(f"image size {image_size} is not a multiple of {d * ph}x{d * pw} ({name})")
        grid = (image_size[0] // (d * ph), image_size[1] // (d * pw))
        posemb = module.posemb
        if part.posemb_scaling == "interpolate" or posemb.fits(grid):
            parts[name] = dataclasses.replace(part, posemb_grid=posemb.sizes)
            continue
        tables[name] = grow_table(posemb, grid)
        size = tuple(tables[name].shape[2:]) if posemb.kind == "sincos" else (tables[name].shape[-1],) * 2
        parts[name] = dataclasses.replace(part, posemb_grid=size)
    new_cfg = dataclasses.replace(cfg, image_size=image_size, vae=dataclasses.replace(cfg.vae), **parts)
    new = FlexTok(new_cfg, vae=model.vae)
    state = model.state_dict()
    for name, table in tables.items():
        state[f"{name}.posemb.table"] = table
    new.load_state_dict(state)
    return new.to(model.device).train(model.training)
