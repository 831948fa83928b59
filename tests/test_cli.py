"""The `mnemo` command: config check as the Snakefile merges, the config reference, run summaries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnemo.cli import main
from tests import tiny_sd

ROOT = Path(__file__).resolve().parents[1]


def _mnemo_script() -> str:
    script = Path(sys.executable).with_name("mnemo")
    return str(script) if script.exists() else shutil.which("mnemo") or pytest.skip("no mnemo script installed")


def test_console_entry_point_loads_without_torch():
    result = subprocess.run([_mnemo_script(), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "config" in result.stdout and "summary" in result.stdout
    probe = "import sys, mnemo.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], timeout=60).returncode == 0, "mnemo.cli imports torch"


@pytest.mark.parametrize("files", [[], ["config/test.yaml"]])
def test_config_check_passes_the_shipped_configs(files, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["config", "check", *files]) == 0
    assert capsys.readouterr().out.startswith("ok")


def test_config_check_names_the_bad_key(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("localize:\n  sample_check:\n    quantile: 1.5\n")
    assert main(["config", "check", "config/test.yaml", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "localize.sample_check.quantile" in err and "1.5" in err, err


def test_config_check_merges_in_order_over_config_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: -5\n")
    assert main(["config", "check", str(bad)]) == 1
    assert "train.steps" in capsys.readouterr().err
    # a later file wins, as with `snakemake --configfile bad.yaml config/test.yaml`
    assert main(["config", "check", str(bad), "config/test.yaml"]) == 0


def test_config_check_does_not_merge_a_prompts_track_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    tiny_sd.stand_in_pipeline(tmp_path / "sd")
    for name in ("memorized.csv", "unmemorized.csv"):
        (tmp_path / name).write_text("Caption;Index\na painting;1\n")
    sd = tmp_path / "sd.yaml"
    sd.write_text(
        "dataset: {source: prompts, resolution: 512}\n"
        f"prompts: {{memorized: {tmp_path / 'memorized.csv'}, unmemorized: {tmp_path / 'unmemorized.csv'}}}\n"
        f"variants: {{sd: {{pretrained: {tmp_path / 'sd'}, guidance: [7.5]}}}}\n"
        "descriptors: {pixel: {kind: pixel, size: 16}}\n"
        "match: {primary: pixel}\n")
    # merged over config.yaml it would fail: the demo's cfg variant has no pretrained folder and its
    # copydetect descriptor needs the X-ray cache
    assert main(["config", "check", str(sd)]) == 0
    assert capsys.readouterr().out.strip() == f"ok ({sd})"


def test_config_check_reports_a_missing_file(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["config", "check", "no/such/config.yaml"]) == 1
    assert "no/such/config.yaml" in capsys.readouterr().err


def test_config_reference_is_the_committed_docs(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    committed = (ROOT / "docs" / "config.md").read_text()
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == committed
    out = tmp_path / "config.md"
    assert main(["config", "reference", "--output", str(out)]) == 0
    assert out.read_text() == committed


def test_summary_prints_a_finished_run_and_names_a_missing_one(tmp_path, capsys):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "summary.md").write_text("# summary\n| a | b |\n")
    assert main(["summary", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "# summary\n| a | b |\n"
    assert main(["summary", str(tmp_path / "missing")]) == 1
    assert "summary.md" in capsys.readouterr().err
