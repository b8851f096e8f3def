#!/usr/bin/env bash
# Pretokenize CLI figures for docs/generation.md: one process vs torchrun 2 processes, kill -9 + --resume.
# Usage: bash benchmarks/pretokenize_cli.sh [WORKDIR]   (from the repository root; PY defaults to python)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD OMP_NUM_THREADS=1
PY=${PY:-python}
D=${1:-/tmp/pretokenize-cli}; mkdir -p $D
ARGS="pretokenize --model default --data fashion_mnist --limit 2048 --shard-size 256 --batch-size 64 --device cpu --threads 1"
t0=$(date +%s.%N); $PY -m flexitok $ARGS -o $D/one 2>/dev/null; t1=$(date +%s.%N)
echo "one process: $(echo "$t1 - $t0" | bc) s"
t0=$(date +%s.%N); $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m flexitok $ARGS -o $D/two 2>/dev/null >/dev/null; t1=$(date +%s.%N)
echo "torchrun 2 processes: $(echo "$t1 - $t0" | bc) s"
cmp <(python3 -c "import json;print(json.load(open('$D/one/index.json'))['shards'])") <(python3 -c "import json;print(json.load(open('$D/two/index.json'))['shards'])") && echo "index shards (names, counts, sha256) identical"
# kill -9 after the first finished shard, then --resume
$PY -m flexitok $ARGS -o $D/killed 2>/dev/null & pid=$!
while [ ! -e $D/.killed.partial/shard-000000.safetensors.json ]; do sleep 0.2; done
kill -9 $pid; wait $pid; echo "killed with exit $?; finished shards left: $(ls $D/.killed.partial/*.json | grep -c shard-)"
$PY -m flexitok $ARGS -o $D/killed --resume 2>/dev/null
$PY - <<PYEOF
import json
from flexitok.data.tokens import TokenShardDataset
ds = TokenShardDataset("$D/killed")
a = json.load(open("$D/one/index.json"))["shards"]; b = json.load(open("$D/killed/index.json"))["shards"]
print("resumed set: items", len(ds), "shards", len(b), "identical to uninterrupted:", a == b)
import os; print("work folder left:", os.path.exists("$D/.killed.partial"))
PYEOF
