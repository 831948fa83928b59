"""Editing a library module reruns the jobs that run it and nothing else, checked without running
the workflow: every job's declared inputs hold exactly the library files its script imports, and a
dry run writes nothing. (The same promise on a finished run: test_workflow.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mnemo.dependencies import library_files
from tests import tiny_sd
from tests.workflow import (
    REPO,
    copy_repo,
    imported_files,
    planned_jobs,
    rule_scripts,
    rules_importing,
    snakemake,
    write_config,
)

SRC = REPO / "src" / "mnemo"
# Modules whose rules are checked by name: plotting, a model module, a search module.
MODULES = {
    "report/plots.py": ({"plot_loss", "plot_localization", "validate_detection"}, {"train", "generate", "tables"}),
    "diffusion/train.py": ({"train"}, {"plot_loss", "generate", "tables"}),
    "nemo/localize.py": ({"localize", "generate", "retrigger"}, {"train", "detect", "tables"}),
}


def _sd_config(tmp_path: Path) -> Path:
    """The Stable Diffusion track config with stand-in files: enough to plan its jobs, not to run them."""
    memorized, unmemorized, originals = tiny_sd.write_prompt_files(tmp_path)
    tiny_sd.build_sscd(tmp_path / "sscd.pt")
    config = yaml.safe_load((REPO / "config" / "sd14.yaml").read_text())
    config["results"] = "results"
    config["prompts"].update(memorized=str(memorized), unmemorized=str(unmemorized), originals=str(originals))
    config["variants"]["sd14"]["pretrained"] = str(tiny_sd.stand_in_pipeline(tmp_path / "sd"))
    config["clip"] = {"model": str(tiny_sd.stand_in_clip(tmp_path / "clip"))}  # plans clip_alignment too
    config["descriptors"]["sscd"]["weights"] = str(tmp_path / "sscd.pt")
    return write_config(tmp_path / "sd.yaml", config)


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> list[dict]:
    """Every job of both tracks (X-ray test config, SD track) and of latent and fine-tuned variants,
    from `snakemake -n --forceall`."""
    jobs = []
    for track, configfiles in (("xray", lambda _: (REPO / "config" / "test.yaml",)),
                               ("sd", lambda path: (_sd_config(path),)),
                               ("latent", lambda path: (REPO / "config" / "test.yaml", write_config(
                                   path / "latent.yaml", tiny_sd.latent_variants_config(path))))):
        base = tmp_path_factory.mktemp(track)
        work = base / "work"
        work.mkdir()
        jobs += planned_jobs(snakemake(work, "-n", "--forceall", configfiles=configfiles(base)).stdout)
    return jobs


def _library_inputs(job: dict) -> set[str]:
    return {path for path in job["input"] if path.startswith(str(SRC)) and path.endswith(".py")}


def test_every_rule_with_a_script_is_planned_in_one_track(planned):
    scripts = rule_scripts()
    declared = sum(len(re.findall(r"^\s+script:", smk.read_text(), re.MULTILINE))
                   for smk in (REPO / "rules").glob("*.smk"))
    assert len(scripts) == declared, "a rule's script: is not of the form \"../scripts/<name>.py\""
    assert set(scripts) <= {job["rule"] for job in planned}


def test_each_job_declares_exactly_the_library_files_its_script_imports(planned):
    scripts = rule_scripts()
    checked = 0
    for job in planned:
        if job["rule"] not in scripts:
            continue
        expected = set(library_files(scripts[job["rule"]], SRC))
        assert expected, job["rule"]
        assert _library_inputs(job) == expected, (job["rule"], _library_inputs(job) ^ expected)
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_library_files_agree_with_the_bytecode_import_finder(script):
    path = REPO / "scripts" / script
    assert set(library_files(path, SRC)) == imported_files(path, REPO / "src")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_is_an_input_of_exactly_the_rules_whose_scripts_import_it(planned, module):
    path = str(SRC / module)
    with_input = {job["rule"] for job in planned if path in job["input"]}
    importing = rules_importing(SRC / module) & {job["rule"] for job in planned}
    assert with_input == importing
    runs, not_runs = MODULES[module]
    assert runs <= with_input and not (not_runs & with_input), sorted(with_input)


def _files(root: Path) -> set[str]:
    """Files under root, but Snakemake's own .snakemake/ and Python's bytecode caches."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and ".snakemake" not in p.relative_to(root).parts and "__pycache__" not in p.parts}


@pytest.mark.parametrize(("flag", "says"), [("-n", "Job stats"), ("--lint", "Congratulations")])
def test_a_dry_run_or_lint_writes_no_file(tmp_path, flag, says):
    """No salt, nothing under results/: the jobs that need the salt create it when they run."""
    repo = copy_repo(tmp_path / "repo")
    before = _files(repo)
    result = snakemake(repo, flag)
    assert says in result.stdout + result.stderr
    assert _files(repo) == before, sorted(_files(repo) - before)
    assert not (repo / ".mnemo-salt").exists() and not (repo / "results").exists()
