"""scripts/slurm_train.sbatch (#20.6): valid bash; the flexitok command it launches parses with the CLI's own parser
and its config loads; each srun task gets its rank; a SIGTERM stop (exit 75) requeues the job and the next start
resumes. SLURM itself is replaced by stub ``srun`` / ``scontrol`` programs that record how they were called."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flexitok.cli.main import build_parser
from flexitok.train.config import load_run_config
from flexitok.train.tokenizer import TokenizerTrainConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_train.sbatch"


def _stubs(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(['srun', *sys.argv[1:]]) + '\\n')\n"
        "sys.exit(int(os.environ.get('FAKE_SRUN_EXIT', '0')))\n"
    )
    (bin_dir / "scontrol").write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(['scontrol', *sys.argv[1:]]) + '\\n')\n"
        "if sys.argv[1:3] == ['show', 'hostnames']:\n"
        "    print('node-a')\n"
        "    print('node-b')\n"
    )
    for p in bin_dir.iterdir():
        p.chmod(0o755)


def _submit(tmp_path: Path, srun_exit: int, *overrides: str) -> tuple[int, list[list[str]]]:
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    if not (tmp_path / "bin").exists():
        _stubs(tmp_path / "bin", log)
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "flexitok-train",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "RUN_DIR": str(tmp_path / "run"),
        "FAKE_SRUN_EXIT": str(srun_exit),
    }
    proc = subprocess.run(["bash", str(SCRIPT), *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return proc.returncode, calls


def test_the_sbatch_script_is_valid_bash_and_declares_preemption_handling() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert "#SBATCH --signal=TERM@120" in text and "#SBATCH --requeue" in text


def test_the_launched_command_parses_and_a_sigterm_stop_requeues_then_resumes(tmp_path: Path) -> None:
    rc, calls = _submit(tmp_path, 75, "data.limit=64")
    assert rc == 75
    srun = next(c for c in calls if c[0] == "srun")
    argv = srun[srun.index("-m") + 2 :]  # after "<python> -m flexitok"
    assert srun[srun.index("-m") + 1] == "flexitok"
    args = build_parser().parse_args(argv)
    assert args.target == "tokenizer" and not args.resume
    assert f"train.out_dir={tmp_path / 'run'}" in args.overrides and "data.limit=64" in args.overrides
    cfg = load_run_config(TokenizerTrainConfig, ROOT / args.config, list(args.overrides))
    assert cfg.train.out_dir == str(tmp_path / "run") and cfg.data.limit == 64 and cfg.train.progress is False
    assert ["scontrol", "requeue", "4242"] in calls  # exit 75: stopped with a checkpoint -> requeue

    # Each task gets RANK / WORLD_SIZE / LOCAL_RANK from srun's SLURM_* variables.
    wrapper = srun[srun.index("-c") + 1]
    env = {**os.environ, "SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}
    out = subprocess.run(["bash", "-c", wrapper, "flexitok-rank", "env"], env=env, capture_output=True, text=True)
    assert {"RANK=9", "WORLD_SIZE=16", "LOCAL_RANK=1"} <= set(out.stdout.splitlines())

    # The requeued start finds the run's checkpoint and resumes; a finished or failed run is not requeued.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last").symlink_to("checkpoints/step_00000100")
    (tmp_path / "run" / "checkpoints" / "step_00000100").mkdir(parents=True)
    for code in (0, 2):
        rc, calls = _submit(tmp_path, code)
        srun = next(c for c in calls if c[0] == "srun")
        assert rc == code and build_parser().parse_args(srun[srun.index("-m") + 2 :]).resume
        assert not any(c[:2] == ["scontrol", "requeue"] for c in calls)
