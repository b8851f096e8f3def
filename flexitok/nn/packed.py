"""Several bias-free linear maps of one input, computed as ONE matmul.

The layers stay separate ``nn.Linear`` children (so state-dict keys, the official key map, optimizers and FSDP see
ordinary parameters), but their weights are packed as consecutive views of one contiguous storage. Without
autograd the packed ``[sum(out), in]`` weight is then a free view; with autograd (training) it is a differentiable
``torch.cat``, so gradients reach every parameter. Anything that replaces a weight's storage (``.to()``,
``load_state_dict(assign=True)``, FSDP sharding) only makes :func:`packed_weight` fall back to the cat until the
module repacks (on ``.to()``/``._apply`` and after ``load_state_dict``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flexitok.nn.fastpath import eager_inference


def _weights(linears: Sequence[nn.Linear]) -> list[Tensor]:
    for lin in linears:
        if lin.bias is not None:
            raise ValueError("only bias-free linear layers can be packed")
    return [lin.weight for lin in linears]


def _plain(w: Tensor) -> bool:
    # Only ordinary dense tensors are packed; tensor subclasses (FSDP's DTensor shards, fake/meta tensors under
    # tracing) are left exactly as their owner made them.
    return type(w) in (Tensor, nn.Parameter) and type(w.data) is Tensor and w.layout == torch.strided


def is_packed(linears: Sequence[nn.Linear]) -> bool:
    """True when the weights are consecutive, contiguous pieces of one storage (in order)."""
    ws = _weights(linears)
    first = ws[0]
    if not all(_plain(w) for w in ws) or first.device.type == "meta":
        return False
    if not all(w.is_contiguous() and w.dtype == first.dtype and w.device == first.device for w in ws):
        return False
    ptr = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for w in ws:
        if w.untyped_storage().data_ptr() != ptr or w.storage_offset() != offset:
            return False
        offset += w.numel()
    return True


@torch.no_grad()
def pack_(linears: Sequence[nn.Linear]) -> None:
    """Move the weights into one contiguous storage (values unchanged); a no-op when already packed, and for
    weights that are not plain dense tensors (e.g. FSDP-sharded) or not stackable (different dtype/device/width)."""
    ws = _weights(linears)
    if not all(_plain(w) for w in ws) or ws[0].device.type == "meta" or is_packed(linears):
        return
    if len({(w.dtype, w.device, w.shape[1]) for w in ws}) != 1:
        return
    base = torch.cat([w.detach() for w in ws])
    start = 0
    for lin, w in zip(linears, ws, strict=True):
        n = w.shape[0]
        lin.weight.data = base[start : start + n]
        start += n


def packed_weight(linears: Sequence[nn.Linear]) -> Tensor:
    """The stacked weight ``[sum(out), in]`` of ``linears``: a zero-copy view when packed and no gradient is
    needed, otherwise a (differentiable) concatenation."""
    ws = _weights(linears)
    if eager_inference() and is_packed(linears):
        rows = sum(w.shape[0] for w in ws)
        return ws[0].detach().as_strided((rows, ws[0].shape[1]), (ws[0].shape[1], 1))
    return torch.cat(ws)


def _repack_after_load(module: PackedLinearsMixin, _incompatible: object) -> None:
    module._pack_all()  # a module-level function, not a lambda: modules stay picklable


class PackedLinearsMixin(nn.Module):
    """Keeps the groups named in ``_packed_groups`` (tuples of child ``nn.Linear`` names) packed.

    Repacks after construction (call :meth:`_pack_all` at the end of ``__init__``), after every ``_apply``
    (``.to()``, ``.float()``, ``.to_empty()``, ...) and after ``load_state_dict``.
    """

    _packed_groups: tuple[tuple[str, ...], ...] = ()

    def _pack_all(self) -> None:
        for names in self._packed_groups:
            pack_([getattr(self, n) for n in names])
        if not getattr(self, "_pack_hook_registered", False):
            self.register_load_state_dict_post_hook(_repack_after_load)
            self._pack_hook_registered = True

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        self._pack_all()
        return out
