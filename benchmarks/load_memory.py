"""Peak memory of loading and saving paper-size tokenizers, against the bytes of their weights.

    python benchmarks/load_memory.py --work /tmp/load-memory --presets d12-d12 d18-d28 \\
        [--official-src PATH/ml-flextok --official-deps PATH/deps]

For each preset a random-weight checkpoint in the official format is written once under ``--work`` (from a model
built on the meta device, one tensor at a time: d18-d28 in float32 is 10.2 GB on disk). Each measurement runs in a
fresh process: its figure is the peak resident memory (VmHWM) minus the same process's resident memory after
``import torch, flexitok``, divided by the bytes of the weights in the requested dtype (the last column leaves out
the memory of importing diffusers, about 0.2 GB whatever the model size). For the savers the loaded
model is part of the figure (the peak is reset after loading, so the load itself does not count).

Operations: ``from_official`` and ``from_pretrained`` (float32 and bfloat16), ``save_pretrained``,
``export_official`` and the ``convert-official`` command (float32), and, with ``--official-src``, the official
``load_model_from_safetensors`` (float32; it has no dtype option). Run it with nothing else big running: the
largest preset needs about 11 GB for our loader and 2x that for the official one (``--official-presets`` limits it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

CHILD = r"""
import json, os, sys
import torch, flexitok

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)

def nbytes(model):
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())

op, src, out, dtype = sys.argv[1:5]
dt = {"float32": None, "bfloat16": torch.bfloat16}[dtype]
base = rss("VmRSS:")
from diffusers.models import AutoencoderKL  # imported by the first model built: reported apart
AutoencoderKL  # resolve diffusers' lazy module now (the import cost depends on the extras installed)
libs = rss("VmRSS:") - base
from flexitok import FlexTok
weights = None
if op == "from_official":
    weights = nbytes(FlexTok.from_official(src, dtype=dt))
elif op == "from_pretrained":
    weights = nbytes(FlexTok.from_pretrained(src, dtype=dt))
elif op in ("save_pretrained", "export_official"):
    model = FlexTok.from_pretrained(src, dtype=dt)
    weights = nbytes(model)
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak: count the save, with the model held
    if op == "save_pretrained":
        model.save_pretrained(out)
    else:
        from flexitok.io.official import export_official
        export_official(model, out)
elif op == "convert-official":
    from flexitok.cli.main import main
    assert main(["convert-official", src, out, "--force"]) == 0
    from flexitok.utils.weights import read_safetensors_header
    h = read_safetensors_header(os.path.join(out, "model.safetensors"))
    weights = 4 * h.numel  # the float32 model it converted (every tensor is float32)
elif op == "official":
    import types
    from diffusers.models import AutoencoderKL  # resolved before the placeholder below exists
    # flextok.utils imports torchvision for its demo image helpers only; a placeholder stands in for it.
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    from flextok.utils.checkpoint import load_model_from_safetensors
    os.chdir(os.path.dirname(src))  # the official VAE path is ./vae, relative to the working folder
    model = load_model_from_safetensors(src)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({"peak": rss("VmHWM:") - base, "libs": libs, "weights": weights}))
"""


def write_random_official(preset_name: str, folder: Path) -> None:
    """A random-weight official checkpoint (+ its VAE as a diffusers folder) without holding the model."""
    from flexitok import FlexTok, preset
    from flexitok.io.official import official_state_dict
    from flexitok.models.vae import sd_style_vae_config
    from flexitok.utils.files import atomic_write, atomic_write_json
    from flexitok.utils.weights import parameters_on_meta, write_safetensors_streaming

    config = preset(preset_name)
    config.vae.diffusers_config = sd_style_vae_config(config.vae.latent_channels)  # the released VAEs' layout
    with parameters_on_meta():
        model = FlexTok(config)
    meta, tensors = official_state_dict(model)
    gen = torch.Generator().manual_seed(0)

    def fill(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":  # buffers computed at build time (sin-cos tables)
            return t
        return (torch.randn(t.shape, generator=gen) * 0.02).to(t.dtype)

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "model.safetensors", lambda p: write_safetensors_streaming(p, tensors, meta, fill))
    vae = {k[len("vae.vae.") :]: v for k, v in tensors.items() if k.startswith("vae.vae.")}
    atomic_write(
        folder / "vae" / "diffusion_pytorch_model.safetensors",
        lambda p: write_safetensors_streaming(p, vae, None, fill),
    )
    atomic_write_json(folder / "vae" / "config.json", dict(model.vae.vae.config))


def measure(op: str, src: Path, out: Path, dtype: str, env: dict[str, str]) -> dict[str, float]:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, op, str(src), str(out), dtype], env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise RuntimeError(f"{op} {dtype} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the checkpoints (GBs)")
    p.add_argument("--presets", nargs="+", default=["d12-d12", "d18-d28"])
    p.add_argument("--official-src", type=Path, help="a checkout of apple/ml-flextok, to measure its loader")
    p.add_argument("--official-deps", type=Path, help="a folder with hydra-core/omegaconf/mup (pip --target)")
    p.add_argument("--official-presets", nargs="+", default=["d12-d12"], help="presets for the official loader")
    p.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    p.add_argument("--ops", nargs="+", help="only these operations (e.g. from_official), both dtypes where measured")
    args = p.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from importlib.util import find_spec

    import diffusers

    extras = [m for m in ("transformers", "scipy", "kernels") if find_spec(m) is not None]
    print(f"{sys.executable}: torch {torch.__version__}, diffusers {diffusers.__version__}; "
          f"optional packages diffusers imports when present: {', '.join(extras) or 'none installed'}")  # fmt: skip
    rows = []
    for name in args.presets:
        folder = args.work / name
        official = folder / "official"
        if not (official / "model.safetensors").is_file():
            write_random_official(name, official)
        ours = folder / "ours"
        fp32_weights = float("nan")
        runs = [
            ("from_official", official / "model.safetensors", ours, "float32"),
            ("from_official", official / "model.safetensors", ours, "bfloat16"),
            ("convert-official", official / "model.safetensors", ours, "float32"),
            ("from_pretrained", ours, ours, "float32"),
            ("from_pretrained", ours, ours, "bfloat16"),
            ("save_pretrained", ours, folder / "resaved", "float32"),
            ("export_official", ours, folder / "exported", "float32"),
        ]
        if args.official_src and name in args.official_presets:
            runs.append(("official", official / "model.safetensors", ours, "float32"))
        runs = [r for r in runs if args.ops is None or r[0] in args.ops]
        for op, src, out, dtype in runs:
            run_env = env
            if op == "official":
                paths = [str(args.official_src)] + ([str(args.official_deps)] if args.official_deps else [])
                run_env = {**env, "PYTHONPATH": os.pathsep.join([*paths, env.get("PYTHONPATH", "")])}
            r = measure(op, src, out, dtype, run_env)
            if r["weights"] is None:  # the CLI: the weights are those of the float32 model it converts
                r["weights"] = fp32_weights
            if (op, dtype) == ("from_official", "float32"):
                fp32_weights = r["weights"]
            rows.append((name, op, dtype, r["weights"], r["peak"], r["libs"]))
            print(
                f"{name} {op} {dtype}: weights {r['weights'] / 1e9:.2f} GB, peak {r['peak'] / 1e9:.2f} GB", flush=True
            )
            for tmp in (folder / "resaved", folder / "exported"):
                if tmp.exists() and op in ("save_pretrained", "export_official"):
                    subprocess.run(["rm", "-rf", str(tmp)], check=True)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(folder)], check=True)
    print(
        "\n| preset | operation | dtype | weights (GB) | peak - after import (GB) | ratio | ratio without diffusers' import |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, op, dtype, w, peak, libs in rows:
        print(
            f"| {name} | {op} | {dtype} | {w / 1e9:.2f} | {peak / 1e9:.2f} | {peak / w:.2f}x | {(peak - libs) / w:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
