"""A linear reference for the Fashion-MNIST tokenizer: PCA with n coefficients, each quantized to b bits.

    python benchmarks/pca_reference.py -n 128 --components 4,8,16,32,64 --bits 10,5

The principal components of ``--train`` Fashion-MNIST train images (32x32, one channel, [-1, 1]); every coefficient
is rounded to one of ``2**b`` values spread evenly over its range on those train images. Prints the mean
per-image PSNR (the evaluation's :func:`flexitok.eval.metrics.psnr`, RGB copies of the gray image) on the first
``-n`` test images, the images the tokenizer study measures. 32 coefficients of 10 bits are 320 bits, the same
budget as 32 tokens of the 1,000-code (9.97-bit) `default` vocabulary.
"""

from __future__ import annotations

import argparse

import torch

from flexitok.data import DataConfig, build_dataset
from flexitok.eval.metrics import psnr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=128, help="test images")
    p.add_argument("--train", type=int, default=20000, help="train images the components are fitted on")
    p.add_argument("--components", default="4,8,16,32,64")
    p.add_argument("--bits", default="10,5", help="bits per coefficient (besides unquantized)")
    args = p.parse_args(argv)
    train = build_dataset(DataConfig(kind="fashion_mnist", split="train", image_size=32, limit=args.train))
    test = build_dataset(DataConfig(kind="fashion_mnist", split="test", image_size=32, limit=args.n))
    x = torch.stack([train[i]["image"][0] for i in range(len(train))]).flatten(1).double()  # [N, 1024]
    y = torch.stack([test[i]["image"] for i in range(len(test))])  # [n, 3, 32, 32]
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    bits = [int(b) for b in args.bits.split(",") if b]
    print("components | " + " | ".join(["unquantized"] + [f"{b} bits each" for b in bits]))
    for n in (int(c) for c in args.components.split(",")):
        basis = vh[:n]  # [n, 1024]
        fit = (x - mean) @ basis.T
        lo, hi = fit.min(0).values, fit.max(0).values
        coef = (y[:, 0].flatten(1).double() - mean) @ basis.T
        cells = []
        for b in [None, *bits]:
            c = coef
            if b is not None:  # uniform quantizer over the train range of each coefficient
                levels = 2**b - 1
                c = ((coef - lo) / (hi - lo)).clamp(0, 1).mul(levels).round().div(levels) * (hi - lo) + lo
            rec = (c @ basis + mean).view(-1, 1, 32, 32).expand(-1, 3, -1, -1).float()
            cells.append(f"{float(psnr(rec, y).mean()):.2f}")
        print(f"{n} | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
