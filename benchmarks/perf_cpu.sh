#!/usr/bin/env bash
# The CPU figures of docs/performance.md, as measured for it:
#   bash benchmarks/perf_cpu.sh [OUT_DIR] [THREADS]
# Each command prints its table; the JSON reports and tables go to OUT_DIR (default runs/perf). THREADS (default 1)
# is torch's thread count everywhere. On a machine shared with other jobs, read the ratios (both sides interleaved
# in one run) and the busy-clock figures (CPU time / threads), not the wall-clock ones.
set -euo pipefail
OUT=${1:-runs/perf}
T=${2:-1}
mkdir -p "$OUT"
FT=${FLEXITOK:-.venv/bin/flexitok}
PY=${PYTHON:-.venv/bin/python}
BENCH="$FT bench tokenizer --preset d12-d12 --device cpu --threads $T"

# 1. d12-d12 fp32, batch 1, 20 steps CFG 7.5 + APG: 0.1.0 (9b29af3) vs this tree, interleaved, identical weights
#    and inputs; max |A-B| of the outputs, fractions of peak (wall and busy clock) for every phase.
$BENCH --batch-size 1 --repeats 3 --compare 9b29af3 --json "$OUT/compare-d12-b1.json" | tee "$OUT/compare-d12-b1.txt"
# 1b. the decoder pass alone on 2 threads, more rounds.
$FT bench tokenizer --preset d12-d12 --device cpu --threads 2 --batch-size 1 --phases decoder_pass --repeats 7 \
  --compare 9b29af3 --json "$OUT/compare-d12-pass-t2.json" | tee "$OUT/compare-d12-pass-t2.txt"
# 1c. detokenize and the decoder pass on 2 threads, both revisions (the idle-machine table).
$FT bench tokenizer --preset d12-d12 --device cpu --threads 2 --batch-size 1 --phases detokenize,decoder_pass \
  --repeats 3 --compare 9b29af3 --json "$OUT/compare-d12-t2.json" | tee "$OUT/compare-d12-t2.txt"
# 2. where one decoder trunk pass spends its time; where one detokenize spends it on 2 threads, its ceiling and
#    the split-rows experiment.
$PY benchmarks/trunk_profile.py --preset d12-d12 --threads "$T" | tee "$OUT/profile-d12.txt"
$PY benchmarks/detokenize_profile.py --preset d12-d12 --threads 2 --split-rows 3 | tee "$OUT/detokenize-profile-t2.txt"
# 3. the bench report on this tree alone (images/s, s/image, peak memory, fraction of peak): the bundled default
#    model at batch 64; then one decoder pass fp32 eager, bf16 (autocast) and fp32 compiled (inductor, freezing).
DEF="$FT bench tokenizer --model default --device cpu --threads $T --batch-size 64 --repeats 3"
$DEF --json "$OUT/bench-default-fp32.json" | tee "$OUT/bench-default-fp32.txt"
$DEF --phases decoder_pass --json "$OUT/bench-default-pass-eager.json" | tee "$OUT/bench-default-pass-eager.txt"
$DEF --phases decoder_pass --dtype bf16 --json "$OUT/bench-default-pass-bf16.json" | tee "$OUT/bench-default-pass-bf16.txt"
$DEF --phases decoder_pass --compile --warmup 2 --json "$OUT/bench-default-pass-compiled.json" \
  | tee "$OUT/bench-default-pass-compiled.txt"
# 4. AR generator: tokens/s with and without the KV cache, and their ratio.
$FT bench generator --preset B --tokens 64 --batch-size 1 --repeats 3 --device cpu --threads "$T" \
  --json "$OUT/generator-B.json" | tee "$OUT/generator-B.txt"
# 5. quality against decoder passes on the bundled default model (rewrites the table in docs/performance.md).
$PY benchmarks/quality_vs_passes.py --model default -n 128 --ks 1,4,16,32 --threads "$T" \
  --json "$OUT/quality-default.json" --update-doc docs/performance.md | tee "$OUT/quality-default.md"
