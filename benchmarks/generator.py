"""AR generator throughput with and without the KV cache (same as ``flexitok bench generator``).

python benchmarks/generator.py --preset B --tokens 256 --batch-size 16 --device cuda
"""

from __future__ import annotations

import sys

from flexitok.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "generator", *sys.argv[1:]]))
