"""The Stable Diffusion track end to end on tiny random SD-shaped components built here."""

from __future__ import annotations

import copy
import csv

import pyarrow.parquet as pq
import pytest
import yaml

from mnemo.config import ConfigError, validate
from tests import tiny_sd
from tests.workflow import REPO, job_counts, snakemake, write_config


def _config(tmp_path):
    pipeline = tiny_sd.build_pipeline(tmp_path / "sd")
    sscd = tiny_sd.build_sscd(tmp_path / "sscd.pt")
    memorized, unmemorized, originals = tiny_sd.write_prompt_files(tmp_path / "prompts")
    config = yaml.safe_load((REPO / "config" / "sd14.yaml").read_text())
    config.update(results="results")
    config["dataset"]["resolution"] = 32
    config["prompts"].update(memorized=str(memorized), unmemorized=str(unmemorized), originals=str(originals))
    config["variants"]["sd14"].update(pretrained=str(pipeline), guidance=[1, 3])
    config["descriptors"]["sscd"]["weights"] = str(sscd)
    config["generate"].update(steps=3, samples_per_prompt=2, batch_size=8)
    config["detect"].update(steps=3, generations=2, wen_n=[1, 2], nemo_samples=3, batch_size=8)
    config["localize"].update(samples=3, theta=1.5, batch_size=16, compare_modes=True)
    config["mitigations"]["wen_embedding"].update(iterations=2)
    config["retrigger"].update(steps=2, batch_size=2, samples=2, max_prompts=1)
    config["report"].update(grid_prompts=2, grid_detector="wen_first_n2")
    return config


@pytest.mark.slow
def test_sd_track_end_to_end(tmp_path):
    config = _config(tmp_path)
    configfile = write_config(tmp_path / "sd.yaml", config)
    work = tmp_path / "work"
    work.mkdir()
    dry = snakemake(work, "-n", configfiles=(configfile,))
    planned = job_counts(dry.stdout)
    assert "cache_originals" in planned and not {"train", "cache_dataset", "phantoms"} & set(planned), planned
    snakemake(work, "--cores", "2", configfiles=(configfile,))
    results = work / "results"
    prompts = pq.read_table(results / "prompts" / "prompts.parquet").to_pylist()
    assert {p["group"] for p in prompts} == {"VM", "TM", "nonmemorized"}
    assert sum(p["memorized_truth"] for p in prompts) == len(tiny_sd.MEMORIZED)
    samples = pq.read_table(results / "samples" / "sd14" / "none.parquet")
    assert samples.num_rows == len(prompts) * 2 * 2
    rows = list(csv.DictReader((results / "tables" / "nemo_paper.csv").open()))
    assert {r["group"] for r in rows} == {"VM", "TM", "nonmemorized"}
    assert {r["mitigation"] for r in rows} == set(config["variants"]["sd14"]["mitigations"])
    none_vm = [r for r in rows if r["mitigation"] == "none" and r["group"] == "VM"]
    assert all(float(r["sscd_gen_median"]) == pytest.approx(1.0, abs=1e-5) for r in none_vm)  # its own twin
    assert all(r["sscd_orig_median"] not in ("", "nan") for r in none_vm)  # originals were given
    detection = list(csv.DictReader((results / "tables" / "detection.csv").open()))
    assert {r["truth"] for r in detection} == {"planted", "replicated", "replicated_own"}  # originals given
    assert (results / "tables" / "summary.md").read_text().count("## ") >= 6


def test_sd_config_names_missing_weights(tmp_path):
    config = _config(tmp_path)
    bad = copy.deepcopy(config)
    bad["variants"]["sd14"]["pretrained"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="stable-diffusion-v1-4"):
        validate(bad, REPO / "config.schema.yaml")
    bad = copy.deepcopy(config)
    bad["descriptors"]["sscd"]["weights"] = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="sscd-copy-detection"):
        validate(bad, REPO / "config.schema.yaml")
    validate(copy.deepcopy(config), REPO / "config.schema.yaml")


def test_nemo_and_wen_prompt_files_are_read(tmp_path):
    from mnemo.data.promptset import build_prompt_set_from_files, original_images, read_prompt_file

    memorized, unmemorized, originals = tiny_sd.write_prompt_files(tmp_path)
    rows = read_prompt_file(memorized, memorized=True)
    assert [r["group"] for r in rows] == [k for _, k in tiny_sd.MEMORIZED] and rows[0]["index"] == "100"
    jsonl = tmp_path / "wen.jsonl"
    jsonl.write_text('{"caption": "a cat", "index": 7, "url": "u"}\n{"caption": "a dog", "index": 8, "url": "u"}\n')
    assert [r["group"] for r in read_prompt_file(jsonl, memorized=True)] == ["memorized", "memorized"]
    table = build_prompt_set_from_files(rows, read_prompt_file(unmemorized, memorized=False),
                                        original_images(originals), max_unmemorized=3)
    assert table.num_rows == len(tiny_sd.MEMORIZED) + 3
    assert table.column("source_image_ids").to_pylist()[0] == ["orig-100-0"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a;b\n1;2\n")
    with pytest.raises(ValueError, match="Caption"):
        read_prompt_file(bad, memorized=True)
