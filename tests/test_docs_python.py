"""Every Python block of the README and docs/ runs as written.

A block fenced ```` ```python ```` is executed in a fresh interpreter in an empty folder (offline, one thread).
Two markers in the fence's info string change that, and both need a reason:

- ```` ```python no-run: needs the official d18-d28 weights ```` : the block is only compiled (its syntax is
  checked), for code that needs what this machine cannot have (hub weights, a GPU, a user's own data);
- ```` ```python slow ```` : the block runs in the slow tier.

API listings that are not Python (signatures with return arrows) are fenced ```` ```text ````.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python(?P<info>[^\n]*)\n(?P<code>.*?)^```", re.S | re.M)
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    info: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def no_run_reason(self) -> str | None:
        m = re.search(r"no-run:\s*(.*)", self.info)
        return m.group(1).strip() if m else None

    @property
    def slow(self) -> bool:
        return re.search(r"\bslow\b", self.info) is not None


def python_blocks() -> list[Block]:
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            line = text[: m.start()].count("\n") + 1
            out.append(Block(str(page.relative_to(ROOT)), line, m.group("info").strip(), m.group("code")))
    return out


BLOCKS = python_blocks()
RUN = [b for b in BLOCKS if b.no_run_reason is None]


def test_docs_have_python_blocks_and_every_block_compiles() -> None:
    assert len(RUN) >= 5, "the docs lost their runnable examples"
    for b in BLOCKS:
        compile(b.code, b.id, "exec")  # a SyntaxError names the page and line


def test_every_no_run_block_says_why() -> None:
    bad = [b.id for b in BLOCKS if b.no_run_reason is not None and len(b.no_run_reason) < 10]
    assert not bad, f"`no-run:` blocks need a reason (what they need that this machine lacks): {bad}"


def _run(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{block.id} failed:\n{block.code}\n--- stderr ---\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("block", [b for b in RUN if not b.slow], ids=lambda b: b.id)
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    _run(block, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in RUN if b.slow], ids=lambda b: b.id)
def test_slow_python_block_runs(block: Block, tmp_path: Path) -> None:
    _run(block, tmp_path)
