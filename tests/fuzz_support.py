"""Helpers of the property-based fuzz suite (tests/test_fuzz.py): the in-process CLI runner with a hang timeout,
the outcome classifier and the tally that ``pytest`` prints at the end of a run (docs/reliability.md).

Every fuzzed input is built together with its expected validity (the strategies know whether they broke
something), so each run is classified as one of:

* ``clean_error``: an invalid input refused cleanly (CLI: exit 2, exactly one ``error:`` line, no traceback, no
  output file; demo: HTTP 4xx with a JSON ``detail``; API: a ``FlexiTokError`` subclass)
* ``accepted``: a valid input that did its job
* ``traceback``: any other exception, or a traceback printed (demo: a 5xx)
* ``hang``: still running at the timeout
* ``silent``: an invalid input that was accepted
* ``refused_valid``: a valid input that was refused (a false alarm; also a failure)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # hypothesis is a dev dependency; the alarm and the classifiers below work without it
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - test_fuzz.py skips with a reason then
    settings = None  # type: ignore[assignment]

OUTCOMES = ("clean_error", "accepted", "traceback", "hang", "silent", "refused_valid")
BAD = ("traceback", "hang", "silent", "refused_valid")
TALLY: defaultdict[str, Counter[str]] = defaultdict(Counter)

# Deterministic and database-free: the same inputs on every run and machine (derandomize), a fixed example
# budget per test (max_examples, set per test), no wall-clock deadline (the shared CPU is noisy; hangs are caught
# by the alarm below instead).
if settings is not None:
    settings.register_profile(
        "fuzz",
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


def budget(examples: int) -> int:
    """A test's example budget, times ``FLEXITOK_FUZZ_SCALE`` (default 1; e.g. 10 for a longer hunt)."""
    return max(1, int(examples * float(os.environ.get("FLEXITOK_FUZZ_SCALE", "1"))))


class Hang(Exception):
    """Raised by the alarm when a fuzzed call runs past its timeout."""


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise :class:`Hang` in the main thread after ``seconds`` (SIGALRM interrupts blocking system calls such as
    opening a FIFO)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class CliRun:
    rc: int | None
    stdout: str
    stderr: str
    exception: BaseException | None
    hang: bool


_ERROR_LINE = re.compile(r"^(?:error: |\S.*?: error: )")


def run_cli(argv: list[str], timeout: float = 60.0) -> CliRun:
    """``flexitok ARGV`` in this process (``main`` as the console script calls it), with stdout/stderr captured."""
    from flexitok.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    rc: int | None = None
    exc: BaseException | None = None
    hang = False
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            with alarm(timeout):
                rc = main(argv)
        except SystemExit as e:  # argparse's usage errors
            rc = e.code if isinstance(e.code, int) else 2
        except Hang:
            hang = True
        except BaseException as e:  # noqa: BLE001 - anything else is a traceback the user would see
            exc = e
    return CliRun(rc, out.getvalue(), err.getvalue(), exc, hang)


def leftovers(paths: list[Path]) -> list[str]:
    """Output files (or temporary files beside them) that exist."""
    found = []
    for p in paths:
        try:
            if p.exists():
                found.append(str(p))
        except OSError:  # a name too long to exist
            pass
        parent = p.parent
        if parent.is_dir():
            found += [str(q) for q in parent.iterdir() if ".tmp-" in q.name]
    return found


def classify_cli(run: CliRun, valid: bool, outputs: list[Path]) -> tuple[str, str]:
    """(outcome, explanation) of one CLI run; ``outputs`` must not exist after a refusal."""
    if run.hang:
        return "hang", "timed out"
    if run.exception is not None:
        return "traceback", f"{type(run.exception).__name__}: {run.exception}"
    if "Traceback (most recent call last)" in run.stderr:
        return "traceback", run.stderr[-2000:]
    if run.rc == 0:
        return ("accepted", "") if valid else ("silent", f"exit 0 for an invalid input; stderr: {run.stderr[-500:]}")
    errors = [line for line in run.stderr.splitlines() if _ERROR_LINE.match(line)]
    if run.rc != 2 or len(errors) != 1:
        return "traceback", f"exit {run.rc} with {len(errors)} error lines: {run.stderr[-1000:]}"
    left = leftovers(outputs)
    if left:
        return "traceback", f"refused ({errors[0]}) but left {left}"
    return ("clean_error", "") if not valid else ("refused_valid", errors[0])


def classify_http(status: int, body: bytes, valid: bool) -> tuple[str, str]:
    """(outcome, explanation) of one demo request: 2xx for valid input, 4xx with a JSON ``detail`` otherwise
    (503 with JSON counts as a clean refusal too)."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = None
    if status >= 500 and status != 503:
        return "traceback", f"HTTP {status}: {body[:300]!r}"
    if status < 300:
        return ("accepted", "") if valid else ("silent", f"HTTP {status} for an invalid request")
    if not isinstance(payload, dict) or "detail" not in payload:
        return "traceback", f"HTTP {status} without a JSON detail: {body[:300]!r}"
    return ("clean_error", "") if not valid else ("refused_valid", f"HTTP {status}: {payload['detail']}")


def record(target: str, outcome: str, why: str = "") -> None:
    """Count one input and fail the test for a bad outcome."""
    assert outcome in OUTCOMES, outcome
    TALLY[target][outcome] += 1
    assert outcome not in BAD, f"{target}: {outcome}: {why}"


def summary() -> str:
    """The figures for the closing note: per target and in total."""
    if not TALLY:
        return ""
    total: Counter[str] = Counter()
    lines = ["fuzz tally (inputs tried: clean errors / accepted valid / tracebacks / hangs / silent / refused valid)"]
    for target in sorted(TALLY):
        c = TALLY[target]
        total.update(c)
        lines.append(f"  {target:<16} {sum(c.values()):>5}: " + " / ".join(str(c[o]) for o in OUTCOMES))
    lines.append(
        f"  total {sum(total.values())} inputs tried: {total['clean_error']} clean errors, {total['accepted']} valid "
        f"inputs accepted, {total['traceback']} tracebacks, {total['hang']} hangs, {total['silent']} silently "
        f"accepted invalid inputs, {total['refused_valid']} valid inputs refused"
    )
    return "\n".join(lines)


def write_tally(path: str | os.PathLike) -> None:
    data = {t: dict(c) for t, c in TALLY.items()}
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
