"""Token ids and images of flexitok against the official code (apple/ml-flextok) on one official checkpoint.

    python benchmarks/official_parity.py --checkpoint DIR/model.safetensors \\
        --official-src PATH/ml-flextok --official-deps PATH/deps [--size 128] [--steps 2]

With ``--official-init OUT`` the comparison runs on a checkpoint of the same configuration initialised by the
official code itself (written to ``OUT`` first; its zero-initialised tensors, the adaLN-zero gates and output
projection, drawn from N(0, 0.02) so that the decoder's velocity is not 0): the script's random checkpoints hold
N(0, 0.02) values everywhere, whose images are about 0.01 in size.

``DIR`` holds an official-format checkpoint and its VAE as a diffusers folder ``DIR/vae`` (e.g. one written by
``benchmarks/load_memory.py --keep``). Each side runs in its own process, one after the other (a d18-d28 model
in float32 needs about 11 GB per side): the official side builds the model with Hydra's ``instantiate`` and
copies the weights in one tensor at a time (torchvision, used only by its demo helpers, replaced by a
placeholder module), with SDPA and materialized masks (its CPU fallback); our side loads
with ``FlexTok.from_official``. Both tokenize the same seeded image and decode its tokens with the same seeded
generator, guided with APG (official ``guidance_scale=7.5, perform_norm_guidance=True``) and unguided. The
official code is never imported into flexitok; it is only run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The start of every script that runs the official code: torch, diffusers, and Hydra's instantiate.
OFFICIAL_PRELUDE = r"""
import json, os, sys, time, types
import torch
from diffusers.models import AutoencoderKL  # resolved before the placeholder below exists

# flextok.utils imports torchvision for its demo image helpers only; a placeholder stands in for it.
for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
    sys.modules[name] = types.ModuleType(name)
sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
from hydra.utils import instantiate
from safetensors import safe_open
from flextok.utils.checkpoint import parse_metadata  # the official Hydra-config reader
"""

OFFICIAL = (
    OFFICIAL_PRELUDE
    + r"""
from safetensors.torch import save_file

ckpt, out, size, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
t0 = time.time()
with safe_open(ckpt, framework="pt") as f:
    model = instantiate(parse_metadata(f.metadata()))
    own = model.state_dict()
    with torch.no_grad():
        for k in f.keys():
            own[k].copy_(f.get_tensor(k))
model.eval()
for m in model.modules():  # the official CPU path: SDPA with dense masks
    if hasattr(m, "use_flex_attention"):
        m.use_flex_attention = False
    if hasattr(m, "return_materialized_mask"):
        m.return_materialized_mask = True
load_s = time.time() - t0
img = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
with torch.no_grad():
    tokens = model.tokenize(img)
    res = {"tokens": torch.cat(tokens)}
    for name, g, apg in (("apg", 7.5, True), ("unguided", 1.0, False)):
        res[name] = model.detokenize(tokens, timesteps=steps, guidance_scale=g, perform_norm_guidance=apg,
                                     generator=torch.Generator().manual_seed(1), vae_image_sizes=size // 8,
                                     verbose=False)
save_file({k: v.contiguous() for k, v in res.items()}, out)
print(json.dumps({"load_s": load_s, "total_s": time.time() - t0}))
"""
)

OFFICIAL_INIT = (
    OFFICIAL_PRELUDE
    + r"""
from flexitok.utils.weights import write_safetensors_streaming  # the harness's writer: one tensor at a time

src, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
with safe_open(src, framework="pt") as f:
    meta, names = dict(f.metadata()), list(f.keys())
model = instantiate(parse_metadata(meta))  # the official code's own initialisation
# Its VAE came from ./vae (the source's small random weights): diffusers' default initialisation instead.
vae = next(m for m in model.modules() if isinstance(m, AutoencoderKL))
vae.load_state_dict(AutoencoderKL.from_config(vae.config).state_dict())
# adaLN-zero gates and the output projection start at zero: the velocity would be 0 whatever the tokens, and the
# decode would compare nothing. Those tensors (every all-zero parameter) are drawn from N(0, 0.02) instead.
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for p in model.parameters():
        if p.is_floating_point() and not bool(p.any()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
state = model.state_dict()
assert set(names) <= set(state), sorted(set(names) - set(state))[:5]
write_safetensors_streaming(out, {k: state[k] for k in names}, meta)
"""
)

OURS = r"""
import json, sys, time
import torch
from safetensors.torch import save_file
from flexitok import DecodeConfig, FlexTok

ckpt, out, size, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
t0 = time.time()
model = FlexTok.from_official(ckpt)
load_s = time.time() - t0
img = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
res = {"tokens": model.tokenize(img, deterministic=True)}
for name, g, apg in (("apg", 7.5, True), ("unguided", 1.0, False)):
    res[name] = model.detokenize(res["tokens"], DecodeConfig(steps=steps, guidance_scale=g, apg=apg),
                                 generator=torch.Generator().manual_seed(1), image_size=size)
save_file({k: v.contiguous() for k, v in res.items()}, out)
print(json.dumps({"load_s": load_s, "total_s": time.time() - t0}))
"""


def _peak_run(code: str, args: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-4000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--official-src", type=Path, required=True)
    p.add_argument("--official-deps", type=Path)
    p.add_argument("--size", type=int, default=128, help="image side in pixels (a multiple of 16)")
    p.add_argument("--steps", type=int, default=2, help="decode steps")
    p.add_argument(
        "--official-init",
        type=Path,
        help="first write, into this folder, a checkpoint of the same configuration initialised by the official "
        "code (seed 0; the VAE by diffusers; zero-initialised tensors drawn from N(0, 0.02)), and compare on it: "
        "activations of realistic size",
    )
    args = p.parse_args(argv)
    import torch
    from safetensors.torch import load_file

    ckpt = args.checkpoint.resolve()
    work = ckpt.parent
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    official_path = os.pathsep.join(str(x) for x in (args.official_src, args.official_deps) if x)
    if args.official_init is not None:
        init = args.official_init.resolve()
        init.mkdir(parents=True, exist_ok=True)
        if not (init / "vae").exists():
            (init / "vae").symlink_to(work / "vae")  # the architecture; its weights are in the checkpoint
        if not (init / "model.safetensors").is_file():
            t = time.time()
            r = subprocess.run(
                [sys.executable, "-c", OFFICIAL_INIT, str(ckpt), str(init / "model.safetensors")],
                env={**env, "PYTHONPATH": official_path}, cwd=work, capture_output=True, text=True,
            )  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-4000:])
            print(f"wrote {init / 'model.safetensors'} with the official initialisation in {time.time() - t:.0f} s")
        ckpt, work = init / "model.safetensors", init
    common = [str(ckpt), "", str(args.size), str(args.steps)]
    t = time.time()
    off = _peak_run(
        OFFICIAL, [common[0], str(work / "parity-official.safetensors"), *common[2:]],
        {**env, "PYTHONPATH": official_path}, work,
    )  # fmt: skip
    ours = _peak_run(OURS, [common[0], str(work / "parity-ours.safetensors"), *common[2:]], env, work)
    a, b = load_file(str(work / "parity-official.safetensors")), load_file(str(work / "parity-ours.safetensors"))
    same = int((a["tokens"] == b["tokens"]).sum())
    print(f"checkpoint {ckpt} ({ckpt.stat().st_size / 1e9:.1f} GB), image {args.size}x{args.size}, {args.steps} steps")
    print(f"token ids identical: {same}/{a['tokens'].numel()}")
    for name in ("apg", "unguided"):
        print(f"images {name}: max abs difference {float((a[name] - b[name]).abs().max()):.2e} "
              f"(image values in [{float(a[name].min()):.3f}, {float(a[name].max()):.3f}])")  # fmt: skip
    print(f"for scale: APG vs unguided differ by up to {float((a['apg'] - a['unguided']).abs().max()):.2e}")
    print(f"official: load {off['load_s']:.0f} s, total {off['total_s']:.0f} s; ours: load {ours['load_s']:.0f} s, "
          f"total {ours['total_s']:.0f} s; wall {time.time() - t:.0f} s")  # fmt: skip
    assert torch.equal(a["tokens"], b["tokens"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
