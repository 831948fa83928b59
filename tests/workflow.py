"""Running the workflow from tests: snakemake in a subprocess, in a scratch working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, configfiles: tuple[Path, ...] = (), check: bool = True,
              timeout: int = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake -s REPO/Snakefile -d workdir ...`; returns the completed process (stdout+stderr)."""
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    if configfiles:  # one flag for all: a repeated --configfile replaces the earlier ones
        command += ["--configfile", *map(str, configfiles)]
    command += list(args)
    env = dict(env if env is not None else os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    counts = {}
    block = dry_run_output.split("Job stats:", 1)[-1]
    for line in block.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match and match.group(1) not in ("total", "job"):
            counts[match.group(1)] = int(match.group(2))
    return counts


def rerun_reasons(dry_run_output: str) -> str:
    """The distinct 'reason:' lines of a dry run, for assertion messages."""
    reasons = sorted({line.strip() for line in dry_run_output.splitlines() if line.strip().startswith("reason:")})
    return "\n".join(reasons)
