"""The documented command lines are the real ones: every ``flexitok ...`` command in a shell block of the README
or docs/ parses with the real parser, and every command and target of the parser is shown in docs/cli.md."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from flexitok.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def documented_commands(page: Path) -> list[tuple[str, list[str]]]:
    """(source line, argv after ``flexitok``) for each flexitok command in the page's shell code blocks.

    ``$VAR`` / ``${VAR}`` take the value of the page's last ``[export] VAR=value`` line above them (the tutorial
    sets its scale in variables: an int-typed flag given ``$N`` parses with the value the page runs with)."""
    out = []
    env: dict[str, str] = {}
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            assign = re.match(r"\s*(?:export\s+)?([A-Za-z_]\w*)=", line)
            if assign:
                words = shlex.split(line, comments=True)
                env[assign.group(1)] = words[-1].partition("=")[2] if words else ""
                continue
            line = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: env.get(m.group(1), m.group(0)), line)
            words = shlex.split(line, comments=True)
            # `flexitok ...`, `.venv/bin/flexitok ...`, `python -m flexitok ...`, `torchrun ... -m flexitok ...`
            starts = [i for i, w in enumerate(words) if w == "flexitok" or w.endswith("/flexitok")]
            if starts:
                out.append((line.strip(), words[starts[0] + 1 :]))
    return out


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_documented_command_parses(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    bad = []
    for page in PAGES:
        for line, argv in documented_commands(page):
            try:
                parser.parse_args(argv)
            except SystemExit:
                err = capsys.readouterr().err.strip().splitlines()
                bad.append(f"{page.relative_to(ROOT)}: {line}\n    {err[-1] if err else ''}")
    assert not bad, "documented commands that the CLI rejects:\n" + "\n".join(bad)


def test_cli_md_shows_every_command_and_target() -> None:
    shown = {tuple(argv[:2]) for _, argv in documented_commands(ROOT / "docs" / "cli.md")}
    shown |= {(argv[0],) for _, argv in documented_commands(ROOT / "docs" / "cli.md") if argv}
    missing = []
    for name, sub in _subcommands(build_parser()).items():
        targets = _subcommands(sub)
        missing += [f"{name} {t}" for t in targets if (name, t) not in shown]
        if not targets and (name,) not in shown:
            missing.append(name)
    assert not missing, f"docs/cli.md shows no example of: {missing}"
    assert len(documented_commands(ROOT / "docs" / "cli.md")) > 30
