"""Where does a FlexTok tokenizer lose its later tokens? Diagnostics for one model on held-out images.

Prints, per number of kept tokens k:

* ``mmse``: PSNR of the decoder's one-step x0 estimate from pure noise (``x0 = noise - v(noise, t=1)``), i.e.
  how much the first k tokens tell the decoder about the image, without the sampler;
* ``loss@t``: the flow-matching loss at fixed t (what training optimises), per k;
* ``sample g``: PSNR of the full Euler decode at guidance scale g (APG), and ``chroma``: the mean per-pixel
  standard deviation over RGB (0-255 units) of those decodes (0 for a grayscale image);

and the entropy (bits) of the code used at each register position. Example (the bundled default)::

    python benchmarks/tokenizer_study.py --model default -n 128 --guidance 1,3,7.5 --steps 20
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from flexitok import DecodeConfig, FlexTok
from flexitok.data import DataConfig, build_dataset
from flexitok.eval.metrics import psnr


def load(name: str) -> FlexTok:
    """A bundled name / model folder, or a training checkpoint folder (its EMA weights, config from the run)."""
    ckpt = Path(name)
    if (ckpt / "ema.safetensors").is_file():
        from safetensors.torch import load_file

        from flexitok.train.config import load_run_config
        from flexitok.train.tokenizer import TokenizerTrainConfig

        run = load_run_config(TokenizerTrainConfig, ckpt.parent.parent / "config.yaml")
        model = FlexTok(run.model)
        model.load_state_dict(load_file(ckpt / "model.safetensors"))  # buffers; EMA holds parameters only
        model.load_state_dict(load_file(ckpt / "ema.safetensors"), strict=False)
        return model.eval()
    return FlexTok.from_pretrained(name)


def chroma(images: torch.Tensor) -> float:
    """Mean over pixels of the std across RGB, in 0-255 units; ``images [B, 3, H, W]`` in [-1, 1]."""
    return float(((images.clamp(-1, 1) + 1) * 127.5).std(dim=1).mean())


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="bundled name, model folder or training checkpoint")
    p.add_argument("-n", type=int, default=128)
    p.add_argument("--ks", default="1,2,4,8,16,32")
    p.add_argument("--guidance", default="1,3", help="comma-separated APG scales for the sampled decodes")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sample-ks", default=None, help="ks for the sampled decodes (default: all of --ks)")
    p.add_argument("--loss-ts", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.model)
    ks = [int(k) for k in args.ks.split(",") if int(k) <= model.n_registers]
    guidance = [float(g) for g in args.guidance.split(",") if g]
    sample_ks = set(ks) if args.sample_ks is None else {int(k) for k in args.sample_ks.split(",")}
    loss_ts = [float(t) for t in args.loss_ts.split(",") if t]
    h = model.image_size[0]
    data = build_dataset(DataConfig(kind="fashion_mnist", split="test", image_size=h, limit=args.n))
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    gen = torch.Generator().manual_seed(0)
    ids = model.tokenize(images)
    codes = model.fsq.ids_to_codes(ids)
    noise = model.initial_noise(len(images), gen)
    loss_noise = torch.randn(images.shape, generator=gen)
    res: dict = {"model": args.model, "n": len(images), "steps": args.steps, "rows": []}
    # Per-position code entropy (bits): a position whose code barely varies carries little information.
    ent = []
    for j in range(model.n_registers):
        counts = torch.bincount(ids[:, j], minlength=model.vocab_size).double()
        pr = counts[counts > 0] / counts.sum()
        ent.append(float(-(pr * pr.log2()).sum()))
    res["entropy_bits"] = ent
    b = len(images)
    x0 = images
    for k in ks:
        keep = torch.full((b,), k)
        cond = model.decoder.condition(codes, keep)
        row: dict = {"k": k}
        v1 = model.decoder(noise, torch.ones(b), cond)
        row["mmse"] = float(psnr((noise - v1).clamp(-1, 1), x0).mean())
        row["mmse_chroma"] = chroma(noise - v1)
        for t in loss_ts:
            tt = torch.full((b,), t)
            xt = t * loss_noise + (1 - t) * x0
            v = model.decoder(xt, tt, cond)
            row[f"loss@{t:g}"] = float(((v - (loss_noise - x0)) ** 2).mean())
        for g in guidance if k in sample_ks else []:
            rec = model.detokenize(ids, DecodeConfig(steps=args.steps, guidance_scale=g), noise=noise, keep_k=k)
            row[f"sample{g:g}"] = float(psnr(rec.clamp(-1, 1), x0).mean())
            row[f"chroma{g:g}"] = chroma(rec)
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
    # Redundancy check: decode all N tokens, but with tokens 9..N taken from another image. If the later tokens
    # refine the first 8, this costs little (about the k = 8 quality); if they re-encode the same coarse content,
    # the decoder follows the other image and the PSNR collapses.
    n_reg = model.n_registers
    if n_reg > 8:
        perm = torch.roll(torch.arange(b), 1)
        swapped = codes.clone()
        swapped[:, 8:] = codes[perm, 8:]
        cond = model.decoder.condition(swapped, torch.full((b,), n_reg))
        v1 = model.decoder(noise, torch.ones(b), cond)
        res["mmse_k_all_late_swapped"] = float(psnr((noise - v1).clamp(-1, 1), x0).mean())
        print(f"mmse with tokens 9..{n_reg} from another image: {res['mmse_k_all_late_swapped']:.2f} dB")
    print("entropy bits per position:", " ".join(f"{e:.1f}" for e in ent))
    print(f"input chroma: {chroma(images):.2f}; log2(vocab) = {math.log2(model.vocab_size):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
