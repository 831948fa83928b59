"""The tiny workflow end to end (config/test.yaml) and the promises it makes to its users:
every stage runs, only changed stages recompute, a killed run resumes to the same tables,
runs are deterministic and parallel runs equal serial ones, no patient identifier leaks."""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import duckdb
import pydicom
import pytest

from tests.workflow import (
    REPO,
    copy_repo,
    edited,
    job_counts,
    planned_jobs,
    rerun_reasons,
    rules_importing,
    snakemake,
    summary_problems,
    write_config,
)

TEST_CONFIG = REPO / "config" / "test.yaml"
TIMING_COLUMNS = re.compile(r"seconds|overhead|step_seconds")
# Jobs that train, sample or measure (minutes on a real config), as opposed to figures and tables.
MODEL_RULES = {"phantoms", "cache_dataset", "prompts", "train", "train_copydetect", "calibrate_descriptor",
               "embed_cache", "embed_samples", "match", "detect", "generate", "localize", "retrigger",
               "train_classifier", "fidelity"}


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """One tiny run with two cores, shared by the tests below (about two minutes). It runs in a
    copy of the workflow (its own Snakefile, rules, scripts and src/, imported by its jobs), so
    that tests may edit its code without touching the checkout."""
    work = copy_repo(tmp_path_factory.mktemp("demo") / "repo")
    snakemake(work, "--cores", "2", configfiles=(TEST_CONFIG,))
    return work


@pytest.mark.slow
def test_every_stage_runs_and_the_cache_matches_the_csv(demo):
    results = demo / "results"
    for path in ["data/phantoms/train.csv", "cache/train", "prompts/prompts.parquet",
                 "models/cfg/pipeline/unet/config.json", "models/filtered/loss.png",
                 "samples/cfg/nemo.parquet", "samples/cfg/wen_embedding_info.parquet",
                 "matches/copydetect/cfg/none_prompts.parquet", "detect/cfg/scores.parquet",
                 "localize/cfg/neurons.parquet", "validation/cfg/roc.png", "retrigger/cfg.parquet",
                 "fidelity/cfg/none.json", "tables/summary.md"]:
        assert (results / path).exists(), path
    rows = list(csv.DictReader((results / "data/phantoms/train.csv").open()))
    rejected = list(csv.DictReader((results / "cache/train_rejected.csv").open()))
    cached, labels = duckdb.execute(
        f"SELECT count(*), sum(CAST(cardiomegaly = 1 AS INT)) FROM read_parquet('{results}/cache/train/*.parquet')"
    ).fetchone()
    assert cached == len(rows) - len(rejected)
    assert labels == sum(r["Cardiomegaly"] in ("1.0", "-1.0") for r in rows)
    heldout, margins = duckdb.execute(  # every sample is also compared with patients the model never saw
        "SELECT count(heldout_similarity) = count(*), count(DISTINCT heldout_margin) "
        f"FROM read_parquet('{results}/matches/copydetect/cfg/none.parquet')").fetchone()
    assert heldout and margins == 1
    summary = (results / "tables" / "summary.md").read_text()
    for heading in ("Replication", "Memorization detection", "NeMo localization", "Mitigations",
                    "Label fidelity", "Compute cost"):
        assert heading in summary
    assert summary_problems(summary) == []  # every entry a table or "n/a: why", no error


@pytest.mark.slow
def test_an_unchanged_workflow_has_nothing_to_do(demo):
    assert "Nothing to be done" in snakemake(demo, "-n", configfiles=(TEST_CONFIG,)).stdout


@pytest.mark.slow
def test_a_report_parameter_reruns_no_model_job(demo, tmp_path):
    change = write_config(tmp_path / "report.yaml", {"report": {"grid_prompts": 1}})
    dry = snakemake(demo, "-n", configfiles=(TEST_CONFIG, change)).stdout
    counts = job_counts(dry)
    assert counts, "expected some jobs to rerun"
    assert set(counts) <= {"validate_detection", "tables", "all"}, (counts, rerun_reasons(dry))


@pytest.mark.slow
@pytest.mark.parametrize("module", ["report/plots.py", "diffusion/train.py"])
def test_editing_a_module_reruns_the_jobs_that_run_it_and_what_follows_from_them(demo, module):
    """The jobs rerun for the edited file are all the jobs of the rules whose scripts import it
    (found by the stdlib's bytecode import finder); every other job reruns only because a job
    before it does. Snakemake 9 checksums small inputs: only a real edit counts, not a touch."""
    path = demo / "src" / "mnemo" / module
    every = planned_jobs(snakemake(demo, "-n", "--forceall", configfiles=(TEST_CONFIG,)).stdout)
    importing = rules_importing(path, demo) & {job["rule"] for job in every}
    with edited(path):
        dry = snakemake(demo, "-n", configfiles=(TEST_CONFIG,)).stdout
    jobs = planned_jobs(dry)
    direct = [job for job in jobs if str(path) in job["reasons"].get("Updated input files", [])]
    assert sorted(job["rule"] for job in direct) == sorted(job["rule"] for job in every if job["rule"] in importing)
    for job in jobs:
        reasons = set(job["reasons"]) - {"Input files updated by another job"}
        assert reasons == ({"Updated input files"} if job in direct else set()), (job, rerun_reasons(dry))
        if job in direct:
            assert job["reasons"]["Updated input files"] == [str(path)]
    if module == "report/plots.py":  # plots are their own jobs: no model reruns for a figure
        assert {"plot_loss", "plot_localization"} <= importing
        assert not MODEL_RULES & set(job_counts(dry)), rerun_reasons(dry)
    else:
        assert "train" in importing and "generate" in job_counts(dry)


@pytest.mark.slow
def test_a_generation_parameter_reruns_generation_but_not_training(demo, tmp_path):
    change = write_config(tmp_path / "generate.yaml", {"generate": {"samples_per_prompt": 3}})
    counts = job_counts(snakemake(demo, "-n", configfiles=(TEST_CONFIG, change)).stdout)
    assert counts.get("generate") and "train" not in counts and "train_copydetect" not in counts


def _report_data(html: str, name: str):
    """The JSON the self-contained Snakemake report embeds as `<script id="name"> var name = {...};`."""
    import json

    start = html.index(f'<script id="{name}">')
    begin = html.index(f"var {name} = ", start) + len(f"var {name} = ")
    return json.JSONDecoder().raw_decode(html, begin)[0]


@pytest.mark.slow
def test_the_html_report_is_written(demo):
    import base64

    snakemake(demo, "--report", "report.html", configfiles=(TEST_CONFIG,))
    html = (demo / "report.html").read_text(errors="replace")
    categories, results = _report_data(html, "categories"), _report_data(html, "results")
    expected = {"1. Data": "image/png", "2. Training": "image/png", "3. Generation": "image/png",
                "4. Detection": "image/png", "5. Localization": "image/png", "6. Tables": "text/markdown"}
    assert set(expected) <= set(categories), sorted(categories)
    for category, mime in expected.items():
        entries = [results[path] for paths in categories[category].values() for path in paths]
        figures = [entry for entry in entries if entry["mime_type"] == mime]
        assert figures, f"no {mime} in {category}"
        for entry in figures:  # embedded, with the caption of its rule
            payload = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
            assert payload.startswith(b"\x89PNG") if mime == "image/png" else payload.startswith(b"# ")
            assert entry["caption"].strip(), entry["filename"]
    rules = [entry["job_properties"]["rule"] for entry in results.values()]
    assert rules.count("contact_sheet") == 6  # one per sample set of config/test.yaml
    assert rules.count("data_preview") == 1
    summary = next(entry for entry in results.values() if entry["job_properties"]["rule"] == "tables")
    text = base64.b64decode(summary["data_uri"].split("base64,", 1)[1]).decode()
    assert text.splitlines()[2] == "## The answer"


@pytest.mark.slow
def test_no_patient_identifier_reaches_any_output(demo):
    dataset = demo / "results/data/phantoms"
    secrets = set()
    for dicom in dataset.rglob("*.dcm"):
        ds = pydicom.dcmread(dicom, stop_before_pixels=True)
        secrets |= {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)}
    folders = {Path(row["Path"]).parts[-3] for name in ("train.csv", "valid.csv")
               for row in csv.DictReader((dataset / name).open())}
    assert len(secrets) > 10 and len(folders) > 4 and all(f.startswith("patient") for f in folders)
    secrets |= folders  # patient folder names (CheXpert's patient00020) are identifiers too
    salt = (demo / ".mnemo-salt").read_text().strip()
    scanned = 0
    for path in [*(demo / "results").rglob("*"), *(demo / ".snakemake" / "log").rglob("*")]:
        if not path.is_file() or path.is_relative_to(dataset):
            continue  # the phantom studies and their CSVs are the raw input, like a hospital export
        data = path.read_bytes()
        scanned += 1
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} found in {path}"
        assert salt.encode() not in data, f"the salt is written in {path}"
    assert scanned > 100


# What the serial run below makes: one variant's chain from the phantoms through training,
# generation, embedding and matching, detection and localization (the tables are queries over these).
SERIAL_TARGETS = ("results/matches/copydetect/cfg/none.parquet", "results/localize/cfg/neurons.parquet")


def _comparable(value):
    """NaN as a marker (NaN != NaN), inside lists and structs too."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


def _parquet_rows(path: Path) -> list[dict]:
    """A Parquet file's rows without timing columns, comparable with ==."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table = table.drop_columns([c for c in table.column_names if TIMING_COLUMNS.search(c)])
    return [_comparable(row) for row in table.to_pylist()]


@pytest.mark.slow
@pytest.mark.reliability
def test_killed_jobs_resume_to_the_same_results_serially(demo, tmp_path):
    """kill -9 of the job process during training, generation and embedding; each rerun
    completes what is left. Run serially (--cores 1): every Parquet file it writes (cache, prompts,
    model outputs, samples, embeddings, matches, detection scores, neurons) equals the parallel run's."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(demo / ".mnemo-salt", work / ".mnemo-salt")
    for fault in ("train:3", "generate:1", "embed:1"):
        env = dict(os.environ, MNEMO_FAULT=fault)
        result = snakemake(work, "--cores", "1", *SERIAL_TARGETS, configfiles=(TEST_CONFIG,), check=False, env=env)
        assert result.returncode != 0, f"{fault}: the injected kill did not stop the run"
        assert "Error in rule" in result.stdout + result.stderr
        if fault.startswith("train"):
            assert [p.parent.name for p in (work / "results" / "checkpoints").glob("*/last.pt")] == ["cfg"]
    resumed = snakemake(work, "--cores", "1", *SERIAL_TARGETS, configfiles=(TEST_CONFIG,))
    assert resumed.returncode == 0
    assert "resumed from checkpoint" in (work / "results" / "logs" / "train" / "cfg.log").read_text()
    written = sorted(p.relative_to(work) for p in (work / "results").rglob("*.parquet"))
    assert {Path(target) for target in SERIAL_TARGETS} <= set(written) and len(written) > 10
    for path in written:
        assert _parquet_rows(work / path) == _parquet_rows(demo / path), path


@pytest.mark.slow
@pytest.mark.reliability
def test_bad_config_stops_before_any_job(tmp_path):
    cases = {
        "unknown_key": ({"trian": {"steps": 3}}, "trian"),
        "wrong_type": ({"train": {"steps": "many"}}, "train.steps"),
        "negative_steps": ({"generate": {"steps": -1}}, "generate.steps"),
        "empty_guidance": ({"variants": {"cfg": {"guidance": []}}}, "variants.cfg.guidance"),
        "resolution": ({"dataset": {"resolution": 18}}, "dataset.resolution"),
        "sscd_weights": ({"descriptors": {"sscd": {"kind": "sscd", "weights": "/nope/sscd.pt"}}},
                         "descriptors.sscd.weights"),
    }
    for name, (override, key) in cases.items():
        configfile = write_config(tmp_path / f"{name}.yaml", override)
        result = snakemake(tmp_path, "-n", configfiles=(TEST_CONFIG, configfile), check=False)
        assert result.returncode != 0, name
        assert key in result.stdout + result.stderr, (name, result.stderr[-2000:])
        assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.reliability
def test_unreadable_image_fails_naming_the_file_or_is_skipped_and_counted(tmp_path):
    from mnemo.phantoms import generate_phantom_dataset

    data = tmp_path / "data"
    generate_phantom_dataset(data / "site", {"patients": 4, "valid_patients": 0, "size": 64,
                                             "planted_studies": 0}, workers=1)
    rows = list(csv.DictReader((data / "site" / "train.csv").open()))
    broken = data / rows[2]["Path"]
    broken.write_bytes(broken.read_bytes()[:300])
    config = {"dataset": {"source": "chexpert", "csv": str(data / "site" / "train.csv"),
                          "image_root": str(data), "resolution": 16}}
    target = "results/cache/train_summary.json"
    failing = write_config(tmp_path / "fail.yaml", config)
    result = snakemake(tmp_path, "--cores", "1", target, configfiles=(TEST_CONFIG, failing), check=False)
    assert result.returncode != 0
    log = (tmp_path / "results/logs/cache_dataset/train.log").read_text()
    assert broken.name in log and "line 4" in log and "Traceback" not in log
    patient = Path(rows[2]["Path"]).parts[-3]
    assert patient not in log and rows[2]["Path"] in result.stdout + result.stderr  # the terminal names it
    config["dataset"]["on_bad_image"] = "skip"
    skipping = write_config(tmp_path / "skip.yaml", config)
    result = snakemake(tmp_path, "--cores", "1", target, configfiles=(TEST_CONFIG, skipping))
    assert "1 image(s) skipped" in result.stdout + result.stderr
    rejected = list(csv.DictReader((tmp_path / "results/cache/train_rejected.csv").open()))
    assert [(Path(r["path"]).name, r["csv_line"]) for r in rejected] == [(broken.name, "4")]
    for path in (tmp_path / "results").rglob("*"):
        assert not path.is_file() or patient.encode() not in path.read_bytes(), path
    cached = duckdb.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/results/cache/train/*.parquet')").fetchone()
    assert cached[0] == len(rows) - 1
