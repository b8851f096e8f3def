#!/usr/bin/env bash
# GPU figures for docs/performance.md (not run yet: no GPU machine was available to this work).
#   bash benchmarks/perf_gpu.sh [OUT_DIR]
# For d12-d12, d18-d18 and d18-d28 in bf16 with torch.compile: tokenize and detokenize (20 steps, CFG 7.5 + APG)
# at batch 1 and over a batch sweep (the best images/s is the throughput figure). Random weights: speed only.
# The goal: d18-d28 detokenize >= 8 images/s on one H100-class GPU.
set -euo pipefail
OUT=${1:-runs/perf-gpu}
mkdir -p "$OUT"
FT=${FLEXITOK:-.venv/bin/flexitok}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
for preset in d12-d12 d18-d18 d18-d28; do
  for b in 1 4 16 32 64; do
    $FT bench tokenizer --preset "$preset" --device cuda --dtype bf16 --compile --batch-size "$b" \
      --phases tokenize,detokenize,decoder_pass --warmup 2 --repeats 5 --json "$OUT/$preset-b$b.json" \
      || echo "$preset batch $b failed (out of memory?)"
  done
done
"${PYTHON:-.venv/bin/python}" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
rows = {}
for f in sorted(Path(sys.argv[1]).glob("*-b*.json")):
    r = json.loads(f.read_text())
    key = r["config"]["model"]
    for phase in ("tokenize", "detokenize"):
        ips = r["phases"][phase]["images_per_second"]
        rows.setdefault((key, phase), []).append((r["config"]["batch_size"], ips))
print("| preset | phase | images/s at batch 1 | best images/s (batch) |")
print("|---|---|---:|---:|")
for (key, phase), v in sorted(rows.items()):
    b1 = dict(v).get(1, float("nan"))
    bb, best = max(v, key=lambda x: x[1])
    print(f"| {key} | {phase} | {b1:.2f} | {best:.2f} ({bb}) |")
PY
