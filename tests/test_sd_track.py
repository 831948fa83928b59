"""The Stable Diffusion track on tiny random SD-shaped components built here: end to end three ways
(NeMo CSVs with originals, without originals, Wen's jsonl), and every malformed prompt file and
broken model folder stopped at config time, naming the file, the line and the problem."""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from mnemo.config import ConfigError, validate
from tests import tiny_sd
from tests.workflow import REPO, job_counts, started_snakemake, summary_problems, write_config

SCHEMA = REPO / "config.schema.yaml"
NEMO_HEADER = ";Caption;URL;type;mean_sscd;max_sscd;Index\n"


@pytest.fixture(scope="session")
def sd_inputs(tmp_path_factory):
    """A tiny SD pipeline, a TorchScript SSCD stand-in, NeMo's CSVs, originals and Wen's file (as .json)."""
    root = tmp_path_factory.mktemp("sd_inputs")
    memorized, unmemorized, originals = tiny_sd.write_prompt_files(root / "prompts")
    return {"pipeline": tiny_sd.build_pipeline(root / "sd"), "sscd": tiny_sd.build_sscd(root / "sscd.pt"),
            "memorized": memorized, "unmemorized": unmemorized, "originals": originals,
            "wen": tiny_sd.write_wen_file(root / "prompts" / "sdv1_500_memorized.json")}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return tiny_sd.build_clip(tmp_path_factory.mktemp("clip") / "clip")


def _config(inputs, memorized=None, originals=True, mitigations=("none", "nemo")):
    """config/sd14.yaml as shipped, pointed at the tiny inputs and shrunk: one descriptor, one
    guidance scale, 2-3 steps, 2 samples, 7 prompts, the mitigations named."""
    config = yaml.safe_load((REPO / "config" / "sd14.yaml").read_text())
    config.update(results="results", torch_threads=1)
    config["dataset"]["resolution"] = 32
    config["prompts"].update(memorized=str(memorized or inputs["memorized"]), unmemorized=str(inputs["unmemorized"]),
                             originals=str(inputs["originals"]) if originals else None, max_unmemorized=3)
    config["variants"]["sd14"].update(pretrained=str(inputs["pipeline"]), guidance=[3], mitigations=list(mitigations))
    config["descriptors"] = {"sscd": dict(config["descriptors"]["sscd"], weights=str(inputs["sscd"]))}
    config["generate"].update(steps=2, samples_per_prompt=2, batch_size=16)
    config["detect"].update(steps=2, generations=2, wen_n=[1, 2], nemo_samples=3, batch_size=16)
    config["localize"].update(samples=3, theta=1.5, batch_size=32, prompts="memorized")
    config["mitigations"]["wen_embedding"].update(iterations=2)
    config["retrigger"].update(steps=2, batch_size=2, samples=2, max_prompts=1)
    config["report"].update(grid_prompts=2, grid_detector="wen_first_n2", sheet_prompts=4, sheet_seeds=2)
    return config


E2E = "test_sd_track_end_to_end_"  # + the run's name: the tests that read each run


def _run_configs(inputs, request):
    """The three ways to run the track, each as small as its test allows (the suite's time): with
    originals (NeMo CSVs; localization, matching, re-trigger), without originals (only the
    unmitigated set: what differs from the first), Wen's file (saved as .json) with A_CLIP."""
    def wen():
        config = _config(inputs, memorized=inputs["wen"], originals=False, mitigations=("none",))
        return dict(config, clip={"model": str(request.getfixturevalue("tiny_clip"))})

    return {"with_originals": lambda: _config(inputs),
            "without_originals": lambda: _config(inputs, originals=False, mitigations=("none",)),
            "from_wen_jsonl_saved_as_json": wen}


@pytest.fixture(scope="session")
def sd_runs(request, sd_inputs, tmp_path_factory):
    """The selected end-to-end runs, started together so that their jobs share the two cores (each
    run alone is mostly a chain of jobs); `sd_runs[name]()` waits for one: (results, jobs per rule)."""
    selected = {item.name.removeprefix(E2E) for item in request.session.items if item.name.startswith(E2E)}
    configs = {name: make() for name, make in _run_configs(sd_inputs, request).items()
               if name in selected}
    started = {}
    for name, config in configs.items():
        root = tmp_path_factory.mktemp(name)
        (root / "work").mkdir()
        finish = started_snakemake(root / "work", "--cores", "2",
                                   configfiles=(write_config(root / "sd.yaml", config),))
        started[name] = (root / "work" / "results", finish)

    def wait(name):
        results, finish = started[name]
        run = finish(1800)
        return results, job_counts(run.stdout + run.stderr)

    return {name: (lambda name=name: wait(name)) for name in started}


def _table(results, name):
    return list(csv.DictReader((results / "tables" / f"{name}.csv").open()))


def _summary_is_clean(results):
    text = (results / "tables" / "summary.md").read_text()
    assert summary_problems(text) == [], summary_problems(text)
    return text


@pytest.mark.slow
def test_sd_track_end_to_end_with_originals(sd_runs):
    results, jobs = sd_runs["with_originals"]()
    assert "cache_originals" in jobs and not {"train", "cache_dataset", "phantoms"} & set(jobs), jobs
    prompts = pq.read_table(results / "prompts" / "prompts.parquet").to_pylist()
    assert {p["group"] for p in prompts} == {"VM", "TM", "nonmemorized"}
    assert sum(p["memorized_truth"] for p in prompts) == len(tiny_sd.MEMORIZED)
    assert pq.read_table(results / "samples" / "sd14" / "none.parquet").num_rows == len(prompts) * 2
    rows = _table(results, "nemo_paper")
    assert {r["group"] for r in rows} == {"VM", "TM", "nonmemorized"}
    assert {r["mitigation"] for r in rows} == {"none", "nemo"}
    none_vm = [r for r in rows if r["mitigation"] == "none" and r["group"] == "VM"]
    assert all(float(r["sscd_gen_median"]) == pytest.approx(1.0, abs=1e-5) for r in none_vm)  # its own twin
    assert all(r["sscd_orig_median"] not in ("", "nan") for r in none_vm)  # originals were given
    assert all(float(r["sscd_orig_max_median"]) >= float(r["sscd_orig_median"]) for r in none_vm)
    assert {r["truth"] for r in _table(results, "detection")} == {"planted", "replicated", "replicated_own"}
    # the tables speak of the prompt file's groups, not of planted phantoms
    assert {r["prompts_of"] for r in _table(results, "mitigation")} == {"VM", "TM", "nonmemorized"}
    localized = _table(results, "localization")
    assert {r["group"] for r in localized} == {"VM", "TM"}  # localize.prompts: memorized
    assert sum(int(r["prompts"]) for r in localized) == len(tiny_sd.MEMORIZED)
    assert {r["flagged"] for r in localized} <= {"True", "False"}
    text = _summary_is_clean(results)
    assert "n/a: the label classifier" in text


@pytest.mark.slow
def test_sd_track_end_to_end_without_originals(sd_runs):
    """The shipped config's `originals: null`: detection is validated against the listed truth only,
    every table that needs originals says n/a, and nothing crashes."""
    results, jobs = sd_runs["without_originals"]()
    assert not {"cache_originals", "match", "embed_cache", "calibrate_descriptor"} & set(jobs), jobs
    assert {r["truth"] for r in _table(results, "detection")} == {"planted"}
    assert {r["detector"] for r in _table(results, "detection")} >= {"wen_first_n2", "wen_all_n2"}
    headline = _table(results, "headline")
    assert headline[0]["memorizing_prompts"].startswith("n/a (4 listed: ")
    text = _summary_is_clean(results)
    assert "n/a: no training images to match" in text


@pytest.mark.slow
def test_sd_track_end_to_end_from_wen_jsonl_saved_as_json(sd_runs):
    """Wen's file (under a .json name), with A_CLIP from a local CLIP folder."""
    results, jobs = sd_runs["from_wen_jsonl_saved_as_json"]()
    assert jobs.get("clip_alignment") == 1, jobs
    prompts = pq.read_table(results / "prompts" / "prompts.parquet").to_pylist()
    assert {p["group"] for p in prompts} == {"memorized", "nonmemorized"}
    assert [p["prompt"] for p in prompts if p["memorized_truth"]] == [c for c, _ in tiny_sd.MEMORIZED]
    rows = _table(results, "nemo_paper")
    assert {r["group"] for r in rows} == {"memorized", "nonmemorized"}
    assert all(-1 <= float(r["a_clip_median"]) <= 1 and float(r["a_clip_mad"]) >= 0 for r in rows)
    _summary_is_clean(results)


# --- the config check: weights, folders, prompt files ------------------------------------------

def test_sd_config_names_missing_weights(sd_inputs, tmp_path):
    config = _config(sd_inputs)
    bad = copy.deepcopy(config)
    bad["variants"]["sd14"]["pretrained"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="stable-diffusion-v1-4"):
        validate(bad, SCHEMA)
    bad = copy.deepcopy(config)
    bad["descriptors"]["sscd"]["weights"] = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="sscd-copy-detection"):
        validate(bad, SCHEMA)
    validate(copy.deepcopy(config), SCHEMA)


def _broken_pipeline(sd_inputs, tmp_path, remove=None, edit=None):
    """A copy of the tiny pipeline with one component removed or one JSON file edited."""
    folder = shutil.copytree(sd_inputs["pipeline"], tmp_path / "broken")
    if remove:
        shutil.rmtree(folder / remove)
    if edit:
        name, changes = edit
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, **changes}))
    return folder


@pytest.mark.parametrize(("remove", "edit", "message"), [
    ("tokenizer", None, r"broken: no tokenizer/ component .*snapshots/<hash>"),
    ("text_encoder", None, r"broken: no text_encoder/ component"),
    (None, ("unet/config.json", {"in_channels": 9}),
     r"broken/unet/config.json: in_channels 9 but out_channels 4: an inpainting UNet"),
    (None, ("scheduler/scheduler_config.json", {"prediction_type": "v_prediction"}),
     r"scheduler_config.json: prediction_type 'v_prediction' is not supported"),
])
def test_sd_broken_pipeline_folders_stop_at_config_time(sd_inputs, tmp_path, remove, edit, message):
    config = _config(sd_inputs)
    config["variants"]["sd14"]["pretrained"] = str(_broken_pipeline(sd_inputs, tmp_path, remove, edit))
    with pytest.raises(ConfigError, match=r"^config key 'variants.sd14.pretrained': .*" + message):
        validate(config, SCHEMA)


def test_sd_a_hugging_face_cache_entry_names_its_snapshot_folder(sd_inputs, tmp_path):
    cache = tmp_path / "models--CompVis--stable-diffusion-v1-4"
    shutil.copytree(sd_inputs["pipeline"], cache / "snapshots" / "abc123")
    config = _config(sd_inputs)
    config["variants"]["sd14"]["pretrained"] = str(cache)
    with pytest.raises(ConfigError, match=r"Hugging Face cache entry: give its snapshots/<hash> folder.*abc123"):
        validate(config, SCHEMA)


def test_sd_sscd_weights_must_be_torchscript(sd_inputs, tmp_path):
    from safetensors.torch import save_file

    config = _config(sd_inputs)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "sscd.safetensors"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "state_dict.pt")
    for name, message in [("sscd.safetensors", r"sscd.safetensors is not a TorchScript archive \(a safetensors"),
                          ("state_dict.pt", r"state_dict.pt is a torch.save archive .*not TorchScript")]:
        config["descriptors"]["sscd"]["weights"] = str(tmp_path / name)
        with pytest.raises(ConfigError, match=r"^config key 'descriptors.sscd.weights': .*" + message):
            validate(copy.deepcopy(config), SCHEMA)


MALFORMED = {  # file name, content, line, problem
    "semicolon": ("memorized.csv", NEMO_HEADER + "0;a caption; with a semicolon;http://x/0.jpg;VM;0.9;0.95;10\n",
                  2, r"8 fields, the header has 7 .*an unquoted ';' inside the caption"),
    "unclosed quote": ("memorized.csv", NEMO_HEADER + '0;"a caption;http://x/0.jpg;VM;0.9;0.95;10\n'
                       '1;second;http://x/1.jpg;TM;0.9;0.95;11\n2;third";http://x/2.jpg;TM;0.9;0.95;12\n',
                       2, r"a quoted field runs over lines 2-4: an unclosed quote"),
    "quote at the end": ("memorized.csv", NEMO_HEADER + '0;"a caption;http://x/0.jpg;VM;0.9;0.95;10\n'
                         '1;second;http://x/1.jpg;TM;0.9;0.95;11\n', 2, r"an unclosed or stray quote"),
    "short row": ("memorized.csv", NEMO_HEADER + "0;a caption;http://x/0.jpg;VM;0.9;0.95;10\n1;short;http://x/1\n",
                  3, r"3 fields, the header has 7 .*a short row"),
    "bad type": ("memorized.csv", NEMO_HEADER + "0;a caption;http://x/0.jpg;memorized;0.9;0.95;10\n",
                 2, r"type 'memorized' is not one of VM, TM"),
    "bad index": ("memorized.csv", NEMO_HEADER + "0;a caption;http://x/0.jpg;VM;0.9;0.95;ten\n",
                  2, r"Index 'ten' is not a non-negative integer"),
    "repeated index": ("memorized.csv", NEMO_HEADER + "0;a;http://x/0.jpg;VM;0.9;0.95;10\n1;b;http://x/1.jpg;TM;0.9;0.95;10\n",
                       3, r"Index 10 repeats line 2"),
    "bad jsonl line": ("wen.jsonl", '{"caption": "a cat", "index": 7}\n{"caption": "a dog", "index": \n',
                       2, r"not a JSON line"),
    "jsonl without index": ("wen.json", '{"caption": "a cat", "index": 7}\n{"caption": "a dog"}\n',
                            2, r"line 2: not a \{caption, index\} object"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_sd_malformed_prompt_rows_stop_at_config_time(sd_inputs, tmp_path, case):
    name, content, line, problem = MALFORMED[case]
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    config = _config(sd_inputs, memorized=path)
    with pytest.raises(ConfigError, match=rf"^config key 'prompts.memorized': {path}:{line}: {problem}"):
        validate(config, SCHEMA)


def test_sd_a_latin1_prompt_file_names_its_line(sd_inputs, tmp_path):
    path = tmp_path / "unmemorized.csv"
    path.write_bytes("Caption;URL;Index\na cat;http://x/0.jpg;1\ncaf\xe9 au lait;http://x/1.jpg;2\n".encode("latin-1"))
    config = _config(sd_inputs)
    config["prompts"]["unmemorized"] = str(path)
    with pytest.raises(ConfigError, match=rf"^config key 'prompts.unmemorized': {path}:3: not UTF-8 \(byte 0xe9 at "
                                          r"column 4\); save the file as UTF-8"):
        validate(config, SCHEMA)


def test_nemo_and_wen_prompt_files_are_read(tmp_path):
    """Real LAION captions survive: escaped quotes, HTML tags, non-ASCII, a quoted ';'; Wen's file
    is recognised by its content whatever its suffix."""
    from mnemo.data.promptset import build_prompt_set_from_files, original_images, read_prompt_file

    memorized, unmemorized, originals = tiny_sd.write_prompt_files(tmp_path)
    rows = read_prompt_file(memorized, memorized=True)
    assert [r["group"] for r in rows] == [k for _, k in tiny_sd.MEMORIZED] and rows[0]["index"] == "100"
    laion = tmp_path / "laion.csv"
    laion.write_text(NEMO_HEADER + '0;"Le ""Baiser"" <b>Klimt</b>; Öl auf Leinwand";http://x/0.jpg;VM;0.9;0.95;10\n',
                     encoding="utf-8")
    assert read_prompt_file(laion, memorized=True)[0]["caption"] == 'Le "Baiser" <b>Klimt</b>; Öl auf Leinwand'
    for name in ("wen.jsonl", "wen.json", "wen.txt"):
        (tmp_path / name).write_text('{"caption": "a cat", "index": 7, "url": "u"}\n{"caption": "a dog", "index": 8}\n')
        assert [r["group"] for r in read_prompt_file(tmp_path / name, memorized=True)] == ["memorized"] * 2
    (tmp_path / "wen_array.json").write_text('[{"caption": "a cat", "index": 7}]')
    assert read_prompt_file(tmp_path / "wen_array.json", memorized=False)[0]["group"] == "nonmemorized"
    table = build_prompt_set_from_files(rows, read_prompt_file(unmemorized, memorized=False),
                                        original_images(originals), max_unmemorized=3)
    assert table.num_rows == len(tiny_sd.MEMORIZED) + 3
    assert table.column("source_image_ids").to_pylist()[0] == ["orig-100-0"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a;b\n1;2\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: no 'Caption' column"):
        read_prompt_file(bad, memorized=True)


# --- metrics, detectors, localization targets, Wen's iterations ------------------------------------

def test_sd_metrics_without_originals_or_positives_are_nan():
    import pyarrow as pa

    from mnemo.detect import metrics
    from mnemo.detect.validation import detection_metrics

    for scores, labels in [([], []), ([0.1, 0.2], [False, False]), ([0.1, 0.2], [True, True])]:
        assert math.isnan(metrics.roc_auc(scores, labels)) and math.isnan(metrics.tpr_at_fpr(scores, labels))
        assert len(metrics.roc_curve(scores, labels)[0]) == 0
    assert math.isnan(metrics.threshold_at_fpr([], []))
    assert all(math.isnan(v) for v in metrics.median_mad([]))
    scores = pa.table({"prompt_id": ["a", "b", "c"], "memorized_truth": [True, False, False],
                       "wen_first_n3": [3.0, 1.0, 2.0], "wen_all_n3": [3.0, 1.0, 2.0], "nemo_max_ssim": [0.1, 0.2, 0.3]})
    rows = detection_metrics(scores, {}, "sd14").to_pylist()  # no originals: nothing measured
    assert {(r["detector"], r["truth"]) for r in rows} == {("wen_first_n3", "planted"), ("wen_all_n3", "planted"),
                                                          ("nemo_max_ssim", "planted")}
    no_positive = detection_metrics(scores.set_column(1, "memorized_truth", pa.array([False] * 3)), {}, "sd14")
    assert all(math.isnan(r["auc"]) for r in no_positive.to_pylist())


def test_sd_localize_prompts_chooses_flagged_memorized_or_all():
    from mnemo.nemo.targets import prompts_to_localize

    prompts = [{"prompt_id": "mem-0", "memorized_truth": True}, {"prompt_id": "mem-1", "memorized_truth": True},
               {"prompt_id": "ref-0", "memorized_truth": False}]
    scores = [{"prompt_id": "mem-0", "nemo_flagged": True}, {"prompt_id": "mem-1", "nemo_flagged": False},
              {"prompt_id": "ref-0", "nemo_flagged": True}]
    assert prompts_to_localize(prompts, scores, "flagged") == ["mem-0", "ref-0"]  # NeMo: a flagged unmemorized too
    assert prompts_to_localize(prompts, scores, "memorized") == ["mem-0", "mem-1"]
    assert prompts_to_localize(prompts, scores, "all") == ["mem-0", "mem-1", "ref-0"]
    with pytest.raises(ValueError, match="localize.prompts"):
        prompts_to_localize(prompts, scores, "some")


def test_sd_wen_embedding_runs_exactly_the_iterations_asked(tiny_model, monkeypatch):
    """With `iterations: 3` no prompt gets a 4th optimiser step, also when another prompt of its
    batch is done early (it used to run until every prompt had counted 3)."""
    from mnemo.diffusion.sample import sample_seed
    from mnemo.mitigate.wen_embedding import WenEmbeddingConfig, optimize_prompt_embeddings
    from tests.conftest import TINY_PROMPTS

    seeds = [[sample_seed(p, i) for i in range(2)] for p in ("a", "b")]
    config = WenEmbeddingConfig(learning_rate=0.05, iterations=3, prompts_per_batch=2)
    initial = [r["initial_loss"] for r in optimize_prompt_embeddings(tiny_model, TINY_PROMPTS[:2], seeds, 3, config,
                                                                    target=1e9)]
    steps = []
    original_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or original_step(self, *a, **k))
    between = (initial[0] + initial[1]) / 2  # the lower prompt is done before the first step
    results = optimize_prompt_embeddings(tiny_model, TINY_PROMPTS[:2], seeds, 3, config, target=between)
    assert sorted(r["iterations"] for r in results) == [0, 3]
    assert len(steps) == 3


@pytest.mark.parametrize("track", ["xray", "sd_without_originals"])
def test_sd_and_xray_summaries_show_no_error(tmp_path, track):
    """Every table of either track's summary is a table or an explicit "n/a: why": views a run has
    no source for still bind (the SD track has no training summaries, fidelity, calibration; a run
    without originals no matches), so no query error reaches the summary."""
    from mnemo.report.tables import TABLE_NAMES, connect, run_queries, summary_markdown
    from tests.test_tables import SETTINGS, _write

    sources = _write(tmp_path, with_matches=track == "xray", with_fidelity=track == "xray")
    failures = []
    tables = run_queries(connect(sources, SETTINGS), TABLE_NAMES, log=failures.append)
    assert failures == []
    text = summary_markdown(tables, "a run", "copydetect")
    assert summary_problems(text) == []
    if track != "xray":
        assert "n/a: the label classifier and Fréchet distance need labelled training images" in text


def test_sd_trial_config_validates_over_the_shipped_one(sd_inputs):
    """config/sd14-trial.yaml, merged over config/sd14.yaml as `--configfile a b` merges them."""
    from snakemake.utils import update_config

    config = _config(sd_inputs)
    update_config(config, yaml.safe_load((REPO / "config" / "sd14-trial.yaml").read_text()))
    validate(config, SCHEMA)
    assert config["localize"]["prompts"] == "memorized" and config["prompts"]["max_memorized"] == 8


def test_sd_a_clip_scores_each_sample_against_its_prompt(sd_inputs, tiny_clip, tmp_path):
    import numpy as np
    import pyarrow as pa

    from mnemo.data.images import encode_png
    from mnemo.evaluate.clip_alignment import ClipAlignment, clip_alignment_table

    scorer = ClipAlignment(tiny_clip)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    pair = scorer.scores([image, image], ["a cat", "a painting of the great wave"])
    assert all(-1 <= s <= 1 for s in pair) and pair[0] != pytest.approx(pair[1])
    samples = pa.table({"sample_id": ["p0/0", "p1/0"], "prompt_id": ["p0", "p1"], "guidance": [3.0, 3.0],
                        "image": [encode_png(image), encode_png(image)]})
    prompts = pa.table({"prompt_id": ["p0", "p1"], "prompt": ["a cat", "a painting of the great wave"]})
    table = clip_alignment_table(samples, prompts, scorer, batch_size=1)
    assert table.column("a_clip").to_pylist() == pytest.approx(pair, abs=1e-4)
    config = _config(sd_inputs)
    (tmp_path / "not_clip").mkdir()
    (tmp_path / "not_clip" / "config.json").write_text('{"model_type": "bert"}')
    for folder, message in [(tmp_path / "nowhere", "no config.json"), (tmp_path / "not_clip", "not a CLIP model")]:
        config["clip"] = {"model": str(folder)}
        with pytest.raises(ConfigError, match=rf"^config key 'clip.model': {folder}.*{message}"):
            validate(copy.deepcopy(config), SCHEMA)
