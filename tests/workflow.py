"""Running the workflow from tests: snakemake in a subprocess, in a scratch working directory."""

from __future__ import annotations

import contextlib
import modulefinder
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# What the workflow is made of: a copy of these runs on its own (its scripts import its src/).
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "src", "config", "config.yaml", "config.schema.yaml",
                  "profiles", "report", "envs")


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def copy_repo(dest: Path) -> Path:
    """A copy of the workflow (WORKFLOW_FILES, without bytecode) at dest, to run and edit in tests."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, configfiles: tuple[Path, ...] = (), check: bool = True,
              timeout: int = 1800, env: dict | None = None, repo: Path | None = None) -> subprocess.CompletedProcess:
    """`snakemake -s repo/Snakefile -d workdir ...`; returns the completed process (stdout+stderr).

    repo defaults to workdir when workdir is a copy of the workflow (copy_repo), else to REPO. A
    copy runs with PYTHONPATH=copy/src, so that its scripts import the copy's mnemo, not the
    editable install's."""
    return started_snakemake(workdir, *args, configfiles=configfiles, check=check, env=env, repo=repo)(timeout)


def started_snakemake(workdir: Path, *args: str, configfiles: tuple[Path, ...] = (), check: bool = True,
                      env: dict | None = None, repo: Path | None = None):
    """`snakemake(...)` started in the background: returns `finish(timeout)`, which waits and returns
    the completed process (so that independent runs share the cores). Output goes to files, not
    pipes, so that a run nobody reads yet never blocks on a full pipe."""
    import tempfile

    if repo is None:
        repo = workdir if (workdir / "Snakefile").is_file() else REPO
    command = [SNAKEMAKE, "-s", str(repo / "Snakefile"), "-d", str(workdir)]
    if configfiles:  # one flag for all: a repeated --configfile replaces the earlier ones
        command += ["--configfile", *map(str, configfiles)]
    command += list(args)
    env = dict(env if env is not None else os.environ, PYTHONUNBUFFERED="1")
    if Path(repo).resolve() != REPO:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(repo) / "src"), env.get("PYTHONPATH")]))
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115 (finish closes them)
    process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)

    def finish(timeout: int = 1800) -> subprocess.CompletedProcess:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        with out, err:
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())
        if check and result.returncode != 0:
            raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-6000:]}\n"
                                 f"{result.stderr[-6000:]}")
        return result

    return finish


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


def planned_jobs(dry_run_output: str) -> list[dict]:
    """The jobs of a dry run: rule, inputs and reasons ({"Updated input files": [...], ...})."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", dry_run_output):
        rule = re.match(r"(?:local)?rule (\w+):\n", block)
        if not rule:
            continue
        inputs = re.search(r"^\s+input: (.*)$", block, re.MULTILINE)
        reason = re.search(r"^\s+reason: (.*)$", block, re.MULTILINE)
        reasons = {}
        for part in (reason.group(1).split("; ") if reason else []):
            kind, _, files = part.partition(": ")
            reasons[kind] = files.split(", ") if files else []
        jobs.append({"rule": rule.group(1), "input": inputs.group(1).split(", ") if inputs else [],
                     "reasons": reasons})
    return jobs


def rule_scripts(repo: Path = REPO) -> dict[str, Path]:
    """Rule -> the script it runs, from rules/*.smk."""
    scripts = {}
    for smk in sorted((repo / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=\s*rule \w+:)", smk.read_text()):
            rule = re.match(r"\s*rule (\w+):", block)
            script = re.search(r"^\s+script:\s*\"\.\./scripts/(\w+\.py)\"", block, re.MULTILINE)
            if rule and script:
                scripts[rule.group(1)] = repo / "scripts" / script.group(1)
    return scripts


class _MnemoFinder(modulefinder.ModuleFinder):
    """The stdlib's bytecode import finder, following mnemo imports only (module level and inside
    functions alike): an oracle for mnemo.dependencies that shares none of its code."""

    def import_hook(self, name, caller=None, fromlist=None, level=-1):
        if level <= 0 and name.split(".")[0] != "mnemo":
            return None
        return super().import_hook(name, caller, fromlist, level)


def imported_files(script: Path, src: Path) -> set[str]:
    """Every mnemo source file (under src) that running `script` may import."""
    finder = _MnemoFinder(path=[str(src)])
    finder.run_script(str(script))
    return {str(Path(module.__file__).resolve()) for name, module in finder.modules.items()
            if name.split(".")[0] == "mnemo" and module.__file__}


def rules_importing(module: Path, repo: Path = REPO) -> set[str]:
    """The rules whose scripts import `module` (a file under repo/src/mnemo), directly or not."""
    target = str(module.resolve())
    return {rule for rule, script in rule_scripts(repo).items()
            if target in imported_files(script, repo / "src")}


@contextlib.contextmanager
def edited(path: Path, text: bytes = b"\n# an edit\n") -> Iterator[None]:
    """`path` with `text` appended, then restored with its old bytes and times."""
    original, stat = path.read_bytes(), path.stat()
    try:
        path.write_bytes(original + text)
        yield
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def summary_problems(text: str) -> list[str]:
    """Sections of a summary.md that are neither a table nor an explicit "n/a: why", and any error
    text (a failed query, an exception) in it: every entry must be a table or say why it is n/a."""
    problems = [line for line in text.splitlines()
                if re.search(r"query failed|not computed|Error|Exception|Traceback|_no rows_", line)]
    for section in text.split("\n## ")[1:]:
        heading, _, body = section.partition("\n")
        if heading != "Figures" and not re.search(r"^(\| |n/a: \S)", body, re.MULTILINE):
            problems.append(f"section {heading!r}: neither a table nor 'n/a: why'")
    return problems
