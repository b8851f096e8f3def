"""Cross-check flexitok's FID Inception against pytorch-fid's network on the same random weights (not a test).

Needs pytorch-fid and a torchvision matching torch, installed aside (neither is a flexitok dependency):

    pip install --no-deps --target /tmp/xcheck pytorch-fid==0.3.0 torchvision==<the one matching torch>
    XCHECK=/tmp/xcheck python scripts/check_fid_inception.py

Prints whether flexitok's state dict loads strictly into pytorch-fid's module layout, and the largest
difference of the pool3 features and logits on random images (BN statistics randomised too).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.library
from torch import nn

from flexitok.eval.inception import FIDInceptionV3


def main() -> None:
    sys.path.insert(0, os.environ.get("XCHECK", "/tmp/xcheck"))
    # torchvision's compiled ops may not match this torch build; the model code needs none of them.
    torch.library.register_fake = lambda *a, **k: lambda f: f  # type: ignore[assignment]
    import torchvision.models.inception as tvi  # type: ignore[import-not-found]
    from pytorch_fid import inception as pf  # type: ignore[import-not-found]

    torch.manual_seed(0)
    mine = FIDInceptionV3().eval()
    with torch.no_grad():
        for m in mine.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    state = {k: v for k, v in mine.state_dict().items() if not k.endswith("num_batches_tracked")}

    # pytorch-fid's FID network, assembled as its fid_inception_v3() does but without the weight download.
    ref = tvi.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    ref.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    ref.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    ref.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    ref.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    ref.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    ref.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    ref.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    ref.Mixed_7b = pf.FIDInceptionE_1(1280)
    ref.Mixed_7c = pf.FIDInceptionE_2(2048)
    ref.load_state_dict(state, strict=True)
    print(f"strict load into pytorch-fid's layout: ok, {len(state)} tensors")

    # Its wrapper (resize, [0,1] -> [-1,1], blocks), built without its own download.
    wrapper = pf.InceptionV3.__new__(pf.InceptionV3)
    nn.Module.__init__(wrapper)
    wrapper.resize_input, wrapper.normalize_input = True, True
    wrapper.output_blocks, wrapper.last_needed_block = [3], 3
    pool2 = nn.MaxPool2d(kernel_size=3, stride=2)
    wrapper.blocks = nn.ModuleList(
        [
            nn.Sequential(ref.Conv2d_1a_3x3, ref.Conv2d_2a_3x3, ref.Conv2d_2b_3x3, pool2),
            nn.Sequential(ref.Conv2d_3b_1x1, ref.Conv2d_4a_3x3, pool2),
            nn.Sequential(*(getattr(ref, f"Mixed_{n}") for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"))),
            nn.Sequential(ref.Mixed_7a, ref.Mixed_7b, ref.Mixed_7c, nn.AdaptiveAvgPool2d((1, 1))),
        ]
    ).eval()
    x01 = torch.rand(3, 3, 64, 80)
    with torch.no_grad():
        theirs = wrapper(x01)[0].flatten(1)
        pool, logits = mine(x01 * 2 - 1)
    print(f"pool3 max abs diff {(pool - theirs).abs().max().item():.3g} (values up to {theirs.abs().max().item():.3g})")
    print(f"logits max abs diff {(logits - theirs @ ref.fc.weight.T).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
