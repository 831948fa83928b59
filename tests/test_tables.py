"""The metric tables (mnemo.report.tables and its SQL) on a few hand-written rows per source, with
answers worked out by hand: the headline table first, the tables it summarises, and n/a where a
run has no input for a cell (the Stable Diffusion track without original images)."""

from __future__ import annotations

import csv
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mnemo.copydetect.replication import match_schema, per_prompt
from mnemo.report.tables import (
    TABLE_NAMES,
    benchmark_sources,
    connect,
    markdown,
    run_queries,
    summary_markdown,
    write_csv,
)

THRESHOLD = 0.6  # the primary descriptor's calibrated threshold
PROMPTS = [  # prompt id, group, memorized by construction, own training images
    ("planted-000", "planted", True, ["img-a"]),
    ("other-000", "other", False, ["img-b"]),
    ("other-001", "other", False, ["img-c"]),
    ("heldout-000", "heldout", False, []),
]
# Similarity of each sample (two seeds) to its prompt's own training image, per sample set and
# guidance; None: the prompt has no training image. Worked out below for the calibrated 0.6:
#   cfg/none, memorizing (any guidance above 0.6): planted-000 (0.9) and other-000 (0.65), not
#     other-001 (0.5); heldout-000 is not measurable: "2 of 3 (other 1, planted 1)".
#   copying at guidance 3 (the report's): none 0.8 0.7 0.65 0.4 -> 3/4; nemo 0.5 0.62 0.3 0.2 -> 1/4.
#   nocfg/none: nothing above 0.6.
OWN = {
    ("cfg", "none", 1.0): {"planted-000": (0.9, 0.5), "other-000": (0.3, 0.2), "other-001": (0.1, 0.2)},
    ("cfg", "none", 3.0): {"planted-000": (0.8, 0.7), "other-000": (0.65, 0.4), "other-001": (0.3, 0.5)},
    ("cfg", "nemo", 3.0): {"planted-000": (0.5, 0.62), "other-000": (0.3, 0.2), "other-001": (0.1, 0.1)},
    ("nocfg", "none", 1.0): {"planted-000": (0.2, 0.1), "other-000": (0.2, 0.3), "other-001": (0.1, 0.2)},
}
# Descriptor embeddings: every unmitigated sample is (1, 0); nemo moves the memorizing prompts'
# samples to (0, 1) and the others as below, so the twin similarity of the prompts that do not
# memorize is the median of 1, 0, 0.707, 0.707 = 0.707 (0 if the memorizing ones counted).
NEMO_EMBEDDING = {"other-001": ([1.0, 0.0], [0.0, 1.0]), "heldout-000": ([1.0, 1.0], [1.0, 1.0])}
DETECTION = [  # variant, detector, truth, positives, auc
    ("cfg", "wen_first_n1", "replicated_own", 2, 0.9),
    ("cfg", "wen_all_n4", "replicated_own", 2, 0.95),
    ("cfg", "nemo_max_ssim", "replicated_own", 2, 0.7),
    ("cfg", "wen_first_n1", "planted", 1, 1.0),
    ("nocfg", "wen_first_n1", "replicated_own", 0, math.nan),
    ("nocfg", "wen_first_n1", "planted", 1, 0.6),
    ("nocfg", "nemo_max_ssim", "planted", 1, 0.8),
]
FIDELITY = {  # label AUC of samples of prompts not planted, per guidance
    ("cfg", "none"): {1.0: 0.8, 3.0: 0.85},
    ("cfg", "nemo"): {3.0: 0.8},
}
SETS = [("cfg", "none"), ("cfg", "nemo"), ("nocfg", "none")]


def _samples(variant, mitigation):
    rows = []
    for (v, m, guidance), own in OWN.items():
        if (v, m) != (variant, mitigation):
            continue
        for pid, _, _, _ in PROMPTS:
            for index in range(2):
                rows.append({"sample_id": f"{pid}/g{guidance:g}/{index}", "variant": v, "mitigation": m,
                             "prompt_id": pid, "guidance": guidance, "sample_index": index,
                             "source_similarity": own[pid][index] if pid in own else None, "image": b""})
    return rows


def _write(tmp_path, with_matches=True, with_fidelity=True, descriptors=("copydetect",)):
    """The files of a run (two variants, one mitigation) and the views `table_sources` makes of them.
    A descriptor after the first (primary) one sees every own-image similarity 0.25 lower."""
    prompts = pa.Table.from_pylist([
        {"prompt_id": pid, "prompt": pid, "group": group, "memorized_truth": truth, "reference": not truth,
         "train_patient_ids": [], "source_image_ids": own}
        for pid, group, truth, own in PROMPTS])
    pq.write_table(prompts, tmp_path / "prompts.parquet")
    sources = {"prompts": [(str(tmp_path / "prompts.parquet"), {})], "samples_primary": [],
               "embeddings": [], "match_prompts": [], "matches": [], "detection_metrics": [],
               "fidelity": [], "classifier": []}
    for variant, mitigation in SETS:
        rows = _samples(variant, mitigation)
        name = f"{variant}_{mitigation}"
        pq.write_table(pa.Table.from_pylist([{k: r[k] for k in r if k != "source_similarity"} for r in rows]),
                       tmp_path / f"samples_{name}.parquet")
        sources["samples_primary"].append((str(tmp_path / f"samples_{name}.parquet"), {}))
        embedding = []
        for r in rows:
            vector = [1.0, 0.0]
            if mitigation == "nemo":
                vector = NEMO_EMBEDDING.get(r["prompt_id"], ([0.0, 1.0], [0.0, 1.0]))[r["sample_index"]]
            embedding.append({"id": r["sample_id"], "embedding": vector})
        tags = {"variant": variant, "mitigation": mitigation}
        for descriptor in descriptors:
            shift = 0.0 if descriptor == descriptors[0] else 0.25
            stem = f"{descriptor}_{name}"
            pq.write_table(pa.Table.from_pylist(embedding), tmp_path / f"embeddings_{stem}.parquet")
            sources["embeddings"].append((str(tmp_path / f"embeddings_{stem}.parquet"),
                                          {"descriptor": descriptor, **tags}))
            if not with_matches:
                continue
            own = [None if r["source_similarity"] is None else r["source_similarity"] - shift for r in rows]
            matches = pa.Table.from_pylist([
                {"sample_id": r["sample_id"], "prompt_id": r["prompt_id"], "group": r["prompt_id"].split("-")[0],
                 "guidance": r["guidance"], "nn_image_id": "img-a",
                 "nn_similarity": similarity if similarity is not None else 0.3,
                 "nn_same_patient": False, "source_similarity": similarity,
                 "topk_image_ids": ["img-a"], "topk_similarities": [0.3], "descriptor": descriptor,
                 "recipe": "native"} for r, similarity in zip(rows, own, strict=True)], schema=match_schema())
            pq.write_table(matches, tmp_path / f"matches_{stem}.parquet")
            diversity = pa.table({"prompt_id": pa.array([], pa.string()), "guidance": pa.array([], pa.float32()),
                                  "diversity": pa.array([], pa.float32())})
            pq.write_table(per_prompt(matches, diversity, {"0_5": 0.5, "0_7": 0.7, "calibrated": THRESHOLD}),
                           tmp_path / f"matches_{stem}_prompts.parquet")
            sources["matches"].append((str(tmp_path / f"matches_{stem}.parquet"), tags))
            sources["match_prompts"].append((str(tmp_path / f"matches_{stem}_prompts.parquet"), tags))
        if with_fidelity and (variant, mitigation) in FIDELITY:
            records = [{"guidance": g, "samples": 8, "label_auc_not_planted": auc, "label_auc_all": auc,
                        "label_auc_findings_not_planted": auc, "prompt_accuracy_not_planted": 0.5,
                        "frechet_distance": 1.5, "frechet_real": 10, "frechet_fake": 8,
                        "frechet_feature_space": "copydetect"}
                       for g, auc in FIDELITY[variant, mitigation].items()]
            (tmp_path / f"fidelity_{name}.json").write_text(json.dumps(records))
            sources["fidelity"].append((str(tmp_path / f"fidelity_{name}.json"), tags))
    if with_fidelity:
        (tmp_path / "classifier.json").write_text(json.dumps({"mean_auc": 0.9}))
        sources["classifier"].append((str(tmp_path / "classifier.json"), {}))
    for variant in ("cfg", "nocfg"):  # without training images only the planted (listed) truth
        detection = pa.Table.from_pylist([
            {"variant": v, "detector": d, "n": 1, "steps": "first", "truth": t, "positives": p, "negatives": 4 - p,
             "auc": auc, "tpr_at_1pct_fpr": 0.5, "spearman_vs_similarity": 0.1}
            for v, d, t, p, auc in DETECTION if v == variant and (with_matches or t == "planted")])
        pq.write_table(detection, tmp_path / f"detection_{variant}.parquet")
        sources["detection_metrics"].append((str(tmp_path / f"detection_{variant}.parquet"), {}))
    return sources


SETTINGS = {"primary_descriptor": "copydetect", "primary_mode": "sequential", "report_guidance": 3.0}


def _by(table, *keys):
    return {tuple(row[k] for k in keys): row for row in table.to_pylist()}


@pytest.fixture
def tables(tmp_path):
    return run_queries(connect(_write(tmp_path), SETTINGS), TABLE_NAMES)


def test_the_headline_answers_per_variant_and_mitigation(tables):
    headline = tables["headline"]
    assert headline.column_names[:5] == ["variant", "memorizing_prompts", "detected_against", "best_detector",
                                         "paper_detectors"]
    rows = _by(headline, "variant", "mitigation")
    assert list(rows) == [("cfg", "none"), ("cfg", "nemo"), ("nocfg", "none")]
    none, nemo, nocfg = rows["cfg", "none"], rows["cfg", "nemo"], rows["nocfg", "none"]
    assert none["memorizing_prompts"] == "2 of 3 (other 1, planted 1)"
    assert none["detected_against"] == "replicated_own"
    assert none["best_detector"] == "wen_all_n4 0.95"
    assert none["paper_detectors"] == "wen_first_n1 0.90, nemo_max_ssim 0.70"
    assert (none["guidance"], nemo["guidance"]) == ("3", "3")  # nearest the report's 3
    assert none["copying_before_after"] == "0.75"
    assert nemo["copying_before_after"] == "0.75 → 0.25"
    assert none["label_auc_before_after"] == "0.85"
    assert nemo["label_auc_before_after"] == "0.85 → 0.80"
    assert none["twin_similarity"] == "–"
    assert nemo["twin_similarity"] == "0.71"
    # nothing memorizes: the measured truth has one class, so the detectors are judged on the planted one
    assert nocfg["memorizing_prompts"] == "0 of 3"
    assert nocfg["detected_against"] == "planted"
    assert nocfg["best_detector"] == "nemo_max_ssim 0.80"
    assert nocfg["guidance"] == "1"
    assert nocfg["copying_before_after"] == "no memorizing prompt"
    assert nocfg["label_auc_before_after"] == "n/a"  # no fidelity file for nocfg


def test_the_headline_says_n_a_without_training_images_or_fidelity(tmp_path):
    """The Stable Diffusion track without originals: no matches, no label classifier."""
    tables = run_queries(connect(_write(tmp_path, with_matches=False, with_fidelity=False), SETTINGS),
                         ["headline", "mitigation", "fidelity", "detection"])
    rows = _by(tables["headline"], "variant", "mitigation")
    assert list(rows) == [("cfg", "none"), ("cfg", "nemo"), ("nocfg", "none")]
    nemo = rows["cfg", "nemo"]
    assert nemo["memorizing_prompts"] == "n/a (1 listed: planted 1)"
    assert nemo["detected_against"] == "planted"
    assert nemo["best_detector"] == "wen_first_n1 1.00"
    assert nemo["copying_before_after"] == "n/a"
    assert nemo["label_auc_before_after"] == "n/a"
    # only the listed prompt is left out of the cost: other-000's samples (moved, 0 and 0) count too,
    # median of 0 0 1 0 0.707 0.707
    assert nemo["twin_similarity"] == "0.35"
    assert tables["mitigation"].num_rows == 0 and tables["fidelity"].num_rows == 0
    assert tables["detection"].num_rows == 3  # the planted truth only: nothing measured


def test_the_tables_the_headline_summarises(tables):
    replication = _by(tables["replication"], "variant", "mitigation", "guidance", "group")
    planted = replication["cfg", "none", 3.0, "planted"]
    assert planted["samples"] == 2 and planted["rate_at_calibrated"] == pytest.approx(1.0)
    assert planted["calibrated_threshold"] == pytest.approx(THRESHOLD)
    assert replication["cfg", "nemo", 3.0, "planted"]["rate_at_calibrated"] == pytest.approx(0.5)
    mitigation = _by(tables["mitigation"], "variant", "mitigation", "guidance", "prompts_of")
    assert {row["descriptor"] for row in tables["mitigation"].to_pylist()} == {"copydetect"}
    assert mitigation["cfg", "nemo", 3.0, "planted"]["own_replication_rate"] == pytest.approx(0.5)
    assert mitigation["cfg", "none", 3.0, "not planted"]["prompts"] == 3
    # other-000 (0.65 0.4) and other-001 (0.3 0.5): 1 of 4 samples above 0.6; heldout-000 has no own image
    assert mitigation["cfg", "none", 3.0, "not planted"]["own_replication_rate"] == pytest.approx(0.25)
    detection = _by(tables["detection"], "variant", "detector", "truth")
    assert detection["cfg", "wen_all_n4", "replicated_own"]["auc"] == pytest.approx(0.95)
    fidelity = _by(tables["fidelity"], "variant", "mitigation", "guidance")
    assert fidelity["cfg", "nemo", 3.0]["label_auc_not_planted"] == pytest.approx(0.8)
    assert fidelity["cfg", "nemo", 3.0]["classifier_auc_on_real"] == pytest.approx(0.9)
    # no localization in this run: no rows, and the summary says why (not an error)
    assert tables["localization"].num_rows == 0 and "prompts" in tables["localization"].column_names
    text = summary_markdown(tables, "a run", "copydetect")
    assert "n/a: no prompt was localized" in text


def test_mitigations_are_judged_by_every_descriptor_and_the_rest_by_the_primary(tmp_path):
    """A mitigation chosen with the primary descriptor (the sample check) is also judged by another:
    here the second one sees every own-image similarity 0.25 lower, so nemo's planted samples
    (0.5, 0.62 -> 0.25, 0.37) no longer copy by it, and unblocked ones (0.8, 0.7 -> 0.55, 0.45) neither."""
    tables = run_queries(connect(_write(tmp_path, descriptors=("copydetect", "pixel")), SETTINGS), TABLE_NAMES)
    mitigation = _by(tables["mitigation"], "variant", "mitigation", "guidance", "prompts_of", "descriptor")
    assert mitigation["cfg", "nemo", 3.0, "planted", "copydetect"]["own_replication_rate"] == pytest.approx(0.5)
    assert mitigation["cfg", "nemo", 3.0, "planted", "pixel"]["own_replication_rate"] == pytest.approx(0.0)
    assert mitigation["cfg", "none", 3.0, "planted", "pixel"]["own_replication_rate"] == pytest.approx(0.0)
    # twin similarity in each descriptor's own space (identical embeddings here)
    assert (mitigation["cfg", "nemo", 3.0, "not planted", "pixel"]["median_twin_similarity"]
            == pytest.approx(mitigation["cfg", "nemo", 3.0, "not planted", "copydetect"]["median_twin_similarity"]))
    # the headline still reads the primary descriptor only
    copying = _by(tables["headline"], "variant", "mitigation")["cfg", "nemo"]["copying_before_after"]
    assert copying == "0.75 → 0.25"
    text = summary_markdown(tables, "a run", "copydetect")
    mitigations = text[text.index("## Mitigations"):text.index("## NeMo-style")]
    assert "| pixel |" in mitigations and "| copydetect |" in mitigations
    replication = text[text.index("## Replication"):text.index("## Memorization detection")]
    assert "pixel" not in replication


def test_the_summary_opens_with_the_headline(tables, tmp_path):
    text = summary_markdown(tables, "a run", "copydetect", figures=["samples/cfg/none_sheet.png"])
    lines = text.splitlines()
    assert lines[0] == "# a run"
    first_table = next(i for i, line in enumerate(lines) if line.startswith("| "))
    assert lines[first_table].startswith("| variant | memorizing_prompts |")
    assert text.index("## The answer") < text.index("## Descriptor calibration") < text.index("## Mitigations")
    explanation = next(line for line in lines[first_table:] if line and not line.startswith("|"))
    assert explanation.startswith("Per variant: the prompts that memorize")
    # a variant's facts on its first row only; the mitigation's on every row
    cfg_rows = [line for line in lines if line.startswith("| cfg |") or line.startswith("|  |")]
    assert "| cfg | 2 of 3 (other 1, planted 1) |" in cfg_rows[0]
    assert cfg_rows[1].startswith("|  |  |  |  |  | nemo | 3 | 0.75 → 0.25 |")
    assert "- `samples/cfg/none_sheet.png`" in text
    write_csv(tables["headline"], tmp_path / "headline.csv")
    rows = list(csv.DictReader((tmp_path / "headline.csv").open()))
    assert rows[1]["variant"] == "cfg" and rows[1]["copying_before_after"] == "0.75 → 0.25"


def test_markdown_writes_nulls_and_numbers_readably():
    table = pa.table({"a": ["x", "x", "y"], "b": [1.23456, None, 12345.6], "c": [[1, 2], None, []]})
    assert markdown(table).splitlines()[2:] == ["| x | 1.235 | 1 2 |", "| x | – | – |", "| y | 12346 |  |"]
    assert markdown(table, once=["a"]).splitlines()[3] == "|  | – | – |"


def test_benchmark_files_are_named_by_job(tmp_path):
    path = tmp_path / "benchmarks" / "train" / "cfg.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("s\th:m:s\tmax_rss\tcpu_time\n12.5\t0:00:12\t300.0\t10.0\n")
    con = connect({}, SETTINGS, benchmark_sources([str(path)], tmp_path / "benchmarks"))
    assert con.sql("SELECT job, seconds, max_rss_mb FROM (" + _cost_sql() + ")").fetchall() == [("train/cfg", 12.5, 300.0)]


def _cost_sql():
    from mnemo.report.tables import query

    return query("cost")


def test_mode_agreement_compares_the_run_mode_with_one_by_one_search(tmp_path):
    """A lockstep prompt's calls and seconds are fractional shares; a prompt counts as agreeing
    only when the refined neurons are identical."""
    rows = [  # prompt, mode, initial, refined, calls, seconds
        ("p1", "lockstep", [1, 2, 3], [1, 2], 10.5, 2.0), ("p1", "sequential", [1, 2, 3], [1, 2], 40, 4.0),
        ("p2", "lockstep", [3, 4], [3], 5.5, 1.0), ("p2", "sequential", [3, 4], [4], 20, 4.0),
        ("p3", "lockstep", [5], [5], 3.0, 1.0),  # not compared
    ]
    table = pa.Table.from_pylist([
        {"prompt_id": p, "mode": m, "memorized": True, "initial_neurons": i, "refined_neurons": r,
         "unet_calls": float(c), "seconds": s} for p, m, i, r, c, s in rows])
    pq.write_table(table, tmp_path / "neurons.parquet")
    sources = {"neurons": [(str(tmp_path / "neurons.parquet"), {"variant": "cfg"})]}
    result = run_queries(connect(sources, {**SETTINGS, "primary_mode": "lockstep"}), ["mode_agreement"])
    (row,) = result["mode_agreement"].to_pylist()
    assert (row["mode"], row["compared_with"], row["prompts"]) == ("lockstep", "sequential", 2)
    assert (row["same_initial_neurons"], row["same_neurons"]) == (2, 1)
    assert row["call_ratio"] == pytest.approx(16 / 60, abs=1e-4)
    assert row["seconds_ratio"] == pytest.approx(3 / 8, abs=1e-4)


def test_the_regime_table_says_whether_the_methods_preconditions_hold(tmp_path):
    """Worked out from the rows above at the report's guidance 3 (threshold 0.6): cfg's planted
    prompt copies its image in both samples; 1 of the other prompts' 6 samples is above the
    threshold (other-000's 0.65); nemo takes the planted median to 0.56 (1 of 1 below); the other
    prompts' nemo twins are 0, 0, 1, 0, 0.707, 0.707 (median 0.354). nocfg has only guidance 1."""
    sources = _write(tmp_path)
    neurons = pa.Table.from_pylist([
        {"prompt_id": pid, "mode": "sequential", "memorized": True, "refined_count": count}
        for pid, count in (("planted-000", 3), ("other-000", 30))])
    pq.write_table(neurons, tmp_path / "neurons.parquet")
    pq.write_table(pa.table({"layer": ["down"] * 40, "channel": list(range(40)), "neuron": list(range(40))}),
                   tmp_path / "reference_stats.parquet")
    (tmp_path / "train_summary.json").write_text(json.dumps({"filtered_share_duplicated": 0.5,
                                                             "filtered_share_unique": 0.01}))
    wen_all = pa.Table.from_pylist([{"variant": "cfg", "detector": "wen_all_n4", "n": 4, "steps": "all",
                                     "truth": "planted", "positives": 1, "negatives": 3, "auc": 1.0,
                                     "tpr_at_1pct_fpr": 1.0, "spearman_vs_similarity": 0.5}])
    pq.write_table(wen_all, tmp_path / "wen_all.parquet")
    sources.update(neurons=[(str(tmp_path / "neurons.parquet"), {"variant": "cfg"})],
                   reference_stats=[(str(tmp_path / "reference_stats.parquet"), {"variant": "cfg"})],
                   train_summary=[(str(tmp_path / "train_summary.json"), {"variant": "cfg"})])
    sources["detection_metrics"].append((str(tmp_path / "wen_all.parquet"), {}))
    regime = _by(run_queries(connect(sources, SETTINGS), ["regime"])["regime"], "variant")
    cfg, nocfg = regime["cfg",], regime["nocfg",]
    assert cfg["guidance"] == 3.0 and nocfg["guidance"] == 1.0
    assert cfg["planted_prompts"] == 1 and cfg["planted_own_copy_rate"] == 1.0
    assert cfg["others_copy_rate"] == pytest.approx(1 / 6) and cfg["others_copy_rate_beyond_heldout"] is None
    assert (cfg["planted_neurons"], cfg["searched_neurons"]) == (3, 40)
    assert cfg["planted_neurons_share"] == pytest.approx(3 / 40)
    assert cfg["planted_below_nemo"] == "1 of 1" and cfg["planted_below_random"] is None
    assert cfg["others_twin_nemo"] == pytest.approx((0 + math.sqrt(0.5)) / 2, abs=1e-6)
    assert cfg["wen_all"] == "wen_all_n4 1.00" and cfg["nemo_detection"] is None
    assert (cfg["filter_share_duplicated"], cfg["filter_share_unique"]) == (0.5, 0.01)
    assert nocfg["planted_own_copy_rate"] == 0.0 and nocfg["others_copy_rate"] == 0.0
    assert nocfg["nemo_detection"] == "nemo_max_ssim 0.80" and nocfg["planted_neurons"] is None
