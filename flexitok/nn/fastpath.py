"""When the trunk may take its inference-only fast paths (views of packed weights, in-place updates)."""

from __future__ import annotations

import torch


def eager_inference() -> bool:
    """True without autograd and outside ``torch.compile`` tracing.

    Then no intermediate is saved for a backward pass, so the trunk may overwrite the fresh tensors it produced
    (normalised activations, branch outputs) instead of allocating new ones. Compiled graphs take the functional
    path, which inductor fuses by itself.
    """
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()
