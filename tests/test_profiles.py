"""Snakemake profiles: the SLURM profile parses, and a dry run with it requests GPUs for the model
jobs, in the sbatch flags the SLURM executor plugin builds from those resources."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import yaml

from tests.workflow import REPO, snakemake

GPU_RULES = {"train", "generate", "detect", "localize", "retrigger", "embed_samples", "embed_cache",
             "train_copydetect"}


def _planned_resources(dry_run_output: str) -> dict[str, list[dict[str, str]]]:
    """Rule -> the resources of each of its jobs, from a dry run's job listing."""
    planned: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
        if rule and resources:
            pairs = (item.split("=", 1) for item in resources.group(1).split(", "))
            job = {key: value for key, value in pairs}
            job["threads"] = threads.group(1) if threads else "1"
            planned.setdefault(rule.group(1), []).append(job)
    return planned


class _Resources(dict):
    """The plugin reads `job.resources` both as a mapping and by attribute."""

    __getattr__ = dict.get


def _sbatch_flags(planned_job: dict[str, str]) -> str:
    """The GPU and CPU flags the SLURM plugin puts on this job's sbatch line."""
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm_jobstep")
    typed = _Resources({key: int(value) if value.isdigit() else value for key, value in planned_job.items()})
    job = SimpleNamespace(resources=typed, threads=typed.pop("threads"))
    gpu = bool(typed.get("gpu"))
    return f"{plugin.get_gpu_setting(job)} {plugin.get_cpu_setting(job, gpu)}".strip()


def test_slurm_profile_parses():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert set(profile["set-resources"]) == GPU_RULES
    for rule, resources in profile["set-resources"].items():
        assert resources["gpu"] == 1, rule
    # cpus_per_task wins over cpus_per_gpu in the plugin: a default would starve GPU jobs of CPUs
    assert "cpus_per_task" not in profile["default-resources"]


@pytest.mark.slow
def test_slurm_dry_run_requests_gpus_for_model_jobs(tmp_path):
    dry = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"),
                    configfiles=(REPO / "config" / "test.yaml",))
    planned = _planned_resources(dry.stdout)
    assert set(planned) >= GPU_RULES, sorted(planned)
    for rule in GPU_RULES:
        for resources in planned[rule]:
            assert resources["gpu"] == "1" and resources["slurm_partition"] == "gpu", (rule, resources)
    train = planned["train"][0]
    assert int(train["mem_mb"]) >= 16000 and int(train["runtime"]) >= 60
    assert _sbatch_flags(train) == "--gpus=1 --cpus-per-gpu=8"
    for rule in ("phantoms", "cache_dataset", "tables"):
        for resources in planned[rule]:
            assert resources.get("gpu", "0") == "0" and resources["slurm_partition"] == "cpu", (rule, resources)
            assert _sbatch_flags(resources) == f"--cpus-per-task={resources['threads']}"
