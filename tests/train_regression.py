"""Short fixed-seed runs of the shipped training configs, reduced to what a regression test compares.

Each case is the real ``flexitok train <target> --config configs/<name>.yaml`` command with overrides that only
shorten it (steps, data limit, one CPU thread, a log line per step). :func:`run_case` returns the per-step
metrics and a SHA-256 of every tensor file of the final checkpoint, so a refactored trainer can be checked to
reproduce the recorded numbers bit for bit (``tests/test_train_regression.py``). Record (only when the
numerics are meant to change, with the reason in the commit)::

    .venv/bin/python tests/train_regression.py    # rewrites tests/fixtures/train-regression/expected-<ISA>.json

Bit-exact float32 results depend on which kernels torch dispatches to, so the expected values are kept per CPU
capability (``torch.backends.cpu.get_cpu_capability()``: ``AVX512``, ``AVX2``, ...), each recorded on such a
machine. The AVX512 file was recorded with the 0.1.0 trainer; the AVX2 one with a trainer that reproduced the
AVX512 file on an AVX-512 machine (and, for the cases checked, with the 0.1.0 trainer on AVX2).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "train-regression"
CPU_CAPABILITY = torch.backends.cpu.get_cpu_capability()
EXPECTED = FIXTURE / f"expected-{CPU_CAPABILITY}.json"
COMMON = ["train.log_every=1", "train.cpu_threads=1", "train.progress=false"]

# name -> (target, config, overrides). The GAN starts at step 1 so the VAE case covers both phases.
CASES: dict[str, tuple[str, str, list[str]]] = {
    "tokenizer-tiny": ("tokenizer", "tokenizer-tiny-fmnist.yaml", ["train.steps=3", "data.limit=256"]),
    "tokenizer-tiny-accum2": (
        "tokenizer",
        "tokenizer-tiny-fmnist.yaml",
        ["train.steps=2", "train.grad_accum=2", "train.batch_size=32", "data.limit=256"],
    ),
    "vae-tiny": ("vae", "vae-tiny-fmnist.yaml", ["train.steps=3", "task.gan_start=1", "data.limit=128"]),
    "generator-tiny": (
        "generator",
        "generator-tiny-fmnist.yaml",
        ["train.steps=4", f"data.path={FIXTURE / 'fmnist-tokens'}"],
    ),
    "default-fmnist": ("tokenizer", "default-fmnist-tokenizer.yaml", ["train.steps=4", "data.limit=256"]),
}

# Wall-clock and progress fields vary between runs; everything else must be reproduced exactly.
VOLATILE = {"images_per_s"}


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, in key order: independent of file layout."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def trained_tensors(ckpt: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every trained tensor set of a checkpoint folder: model, EMA, auxiliary modules, the GAN discriminator."""
    out = {p.stem: load_file(str(p)) for p in sorted(ckpt.glob("*.safetensors"))}
    task = ckpt / "task.pt"
    if task.is_file():  # 0.1.0 layout: the discriminator inside the task's extra state
        state = torch.load(task, weights_only=True)
        if state.get("disc"):
            out["disc"] = state["disc"]
    return out


def recorded_names(target: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors under the names the expected hashes were recorded with (0.1.0's): the generator's condition
    parameters and MLP weights have moved since (``Generator.upgrade_state_dict`` maps old names to new)."""
    if target != "generator":
        return tensors
    from flexitok.models.generator import Generator

    candidates = ["class_emb.weight", "text_proj.weight", "null_text", "sos"]
    candidates += [re.sub(r"\.mlp\.fc[123]\.", f".mlp.{w}.", k) for k in tensors for w in ("w_gate", "w_up", "w_down")]
    new_to_old = {new: old for old in candidates for new in Generator.upgrade_state_dict({old: 0}) if new != old}
    return {new_to_old.get(k, k): v for k, v in tensors.items()}


def run_case(name: str, out_root: Path) -> dict[str, Any]:
    from flexitok.cli.main import main

    target, config, overrides = CASES[name]
    out = out_root / name
    argv = ["train", target, "--config", str(ROOT / "configs" / config), *overrides, *COMMON, f"train.out_dir={out}"]
    n = torch.get_num_threads()
    try:
        rc = main(argv)
    finally:
        torch.set_num_threads(n)
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {rc}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows if "loss" in r]
    last = (out / "last").resolve()
    hashes = {name: tensors_hash(recorded_names(target, t)) for name, t in trained_tensors(last).items()}
    command = " ".join(["flexitok train", target, "--config", f"configs/{config}", *overrides])
    return {"command": command.replace(str(ROOT) + "/", ""), "metrics": metrics, "hashes": hashes}


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = {"torch": torch.__version__, "cpu_capability": CPU_CAPABILITY}
        for name in sys.argv[1:] or list(CASES):
            results[name] = run_case(name, Path(tmp))
            print(name, [round(m["loss"], 6) for m in results[name]["metrics"]], flush=True)
    EXPECTED.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {EXPECTED}")


if __name__ == "__main__":
    main()
