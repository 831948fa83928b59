"""Phantom generator: determinism, DICOM validity, CheXpert-shaped CSVs, planted duplicates and
images that respond to anatomy and findings the way the demo relies on."""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from mnemo import phantoms as P
from mnemo.data.chexpert import CSV_COLUMNS, OBSERVATIONS, UNCERTAINTY_POLICIES, parse_label
from mnemo.data.prompts import prompt_text

SMALL = {
    "patients": 6,
    "valid_patients": 2,
    "size": 64,
    "planted_studies": 2,
    "planted_copies": 2,
    "lateral_fraction": 0.5,
    "monochrome1_fraction": 0.3,
}


def _make(root: Path, workers: int = 1, **overrides) -> tuple[Path, P.PhantomSummary]:
    out = root / "phantom"  # same basename everywhere: CSV paths start with it
    return out, P.generate_phantom_dataset(out, {**SMALL, **overrides}, workers=workers)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _labels(row: dict[str, str]) -> dict[str, float]:
    return {o: parse_label(row[o]) for o in OBSERVATIONS}


def _pixels(path: Path) -> np.ndarray:
    return P.read_attenuation(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, P.PhantomSummary]:
    return _make(tmp_path_factory.mktemp("ds"), seed=3)


# ------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_bytes_and_worker_count_does_not_matter(dataset, tmp_path):
    out, _ = dataset
    again, _ = _make(tmp_path / "again", workers=2, seed=3)
    a, b = _files(out), _files(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]


def test_different_seed_differs(dataset, tmp_path):
    out, _ = dataset
    other, _ = _make(tmp_path / "other", seed=4)
    assert (out / "train.csv").read_bytes() != (other / "train.csv").read_bytes()
    first = "train/patient00001/study1/view1_frontal.dcm"
    assert not np.array_equal(_pixels(out / first), _pixels(other / first))


def test_existing_dataset_is_not_silently_overwritten(dataset, tmp_path):
    out, _ = _make(tmp_path, patients=2, valid_patients=0, planted_studies=1)
    with pytest.raises(FileExistsError):
        P.generate_phantom_dataset(out, {**SMALL, "patients": 2})
    P.generate_phantom_dataset(out, {**SMALL, "patients": 2, "planted_studies": 0},
                               overwrite=True)
    assert len(_rows(out / "planted.csv")) == 0


def test_config_from_dict_rejects_unknown_keys():
    assert P.PhantomConfig.from_value({"seed": 5, "studies_per_patient": [1, 2]}) == \
        P.PhantomConfig(seed=5, studies_per_patient=(1, 2))
    with pytest.raises(ValueError, match="bogus"):
        P.PhantomConfig.from_value({"bogus": 1})
    with pytest.raises(ValueError):
        P.PhantomConfig(bits_stored=10)


# ------------------------------------------------------------------------------ DICOM


def test_dicom_files_are_valid_and_carry_fake_identifiers(dataset):
    out, summary = dataset
    rows = {r["Path"]: r for r in _rows(out / "train.csv") + _rows(out / "valid.csv")}
    photometric = set()
    for rel, row in rows.items():
        ds = pydicom.dcmread(out.parent / rel)  # no force: the file meta must be valid
        fm = ds.file_meta
        assert fm.TransferSyntaxUID == ExplicitVRLittleEndian
        assert fm.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert fm.MediaStorageSOPClassUID == ds.SOPClassUID
        assert fm.ImplementationClassUID
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.max() <= 4095
        assert ds.pixel_array.shape == (64, 64)
        assert ds.Modality in ("DX", "CR") and ds.BodyPartExamined == "CHEST"
        photometric.add(ds.PhotometricInterpretation)
        expected_view = row["AP/PA"] if row["Frontal/Lateral"] == "Frontal" else "LL"
        assert ds.ViewPosition == expected_view
        assert str(ds.PatientName).startswith("Phantom^")
        assert re.fullmatch(r"PH-\d{6}", ds.PatientID)
        assert ds.PatientSex == row["Sex"][0]
        assert ds.PatientAge == f"{int(row['Age']):03d}Y"
        born = dt.datetime.strptime(ds.PatientBirthDate, "%Y%m%d").date()
        seen = dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()
        age = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
        assert age == int(row["Age"])
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert len(rows) == summary.train_images + summary.valid_images


@pytest.mark.parametrize("monochrome1", [False, True])
@pytest.mark.parametrize("bits", [12, 16])
def test_write_dicom_round_trip(tmp_path, monochrome1, bits):
    img = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    meta = {
        "patient_name": "Phantom^Alice7", "patient_id": "PH-483920", "patient_sex": "Female",
        "birth_date": "19600102", "age": 63, "study_date": "20230601", "study_time": "101500",
        "study_uid": "1.2.3.4", "series_uid": "1.2.3.4.5", "sop_uid": "1.2.3.4.5.6",
        "view_position": "PA", "bits_stored": bits,
    }
    path = P.write_dicom(tmp_path / "x.dcm", img, meta, monochrome1=monochrome1)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == ("MONOCHROME1" if monochrome1 else "MONOCHROME2")
    assert (ds.BitsStored, ds.HighBit) == (bits, bits - 1)
    stored = ds.pixel_array.astype(np.int64) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    if monochrome1:
        stored = (1 << bits) - 1 - stored
    assert np.array_equal(stored, P.quantize(img, bits).astype(np.int64))
    assert np.abs(P.read_attenuation(path) - img).max() <= 0.5 / ((1 << bits) - 1) + 1e-6
    with pytest.raises(ValueError, match="unknown"):
        P.write_dicom(tmp_path / "y.dcm", img, {**meta, "nonsense": 1})


# ------------------------------------------------------------------------------ CSV


def test_csv_has_chexpert_columns_and_coding(dataset):
    out, summary = dataset
    for name, n_rows in (("train.csv", summary.train_images), ("valid.csv", summary.valid_images)):
        with open(out / name, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh))
        assert tuple(header) == CSV_COLUMNS
        rows = _rows(out / name)
        assert len(rows) == n_rows
        for row in rows:
            assert row["Path"].startswith(f"phantom/{name[:-4]}/patient")
            assert (out.parent / row["Path"]).is_file()
            assert row["Sex"] in ("Male", "Female")
            assert 18 <= int(row["Age"]) <= 90
            if row["Frontal/Lateral"] == "Frontal":
                assert row["AP/PA"] in ("AP", "PA")
            else:
                assert row["Frontal/Lateral"] == "Lateral" and row["AP/PA"] == ""
            for o in OBSERVATIONS:
                assert row[o] in ("1.0", "0.0", "-1.0", "")
            labels = _labels(row)
            if labels["No Finding"] == 1.0:
                assert not any(labels[o] == 1.0 for o in OBSERVATIONS[1:])
    assert summary.train_patients == 6 and summary.valid_patients == 2


def test_label_sampler_is_sparse_and_correlated():
    rng = np.random.default_rng(0)
    draws = [P.sample_labels(rng, "AP" if i % 2 else "PA", 65) for i in range(3000)]
    no_finding = sum(d["No Finding"] == 1.0 for d in draws)
    assert 0.1 * len(draws) < no_finding < 0.4 * len(draws)
    for d in draws:
        n_pos = sum(d[o] == 1.0 for o in OBSERVATIONS[1:])
        assert (d["No Finding"] == 1.0) == (n_pos == 0)
        assert n_pos <= 4
    assert any(v == -1.0 for d in draws for v in d.values())
    assert any(math.isnan(v) for d in draws for v in d.values())

    def p(a, b=None):
        sel = [d for d in draws if b is None or d[b] == 1.0]
        return sum(d[a] == 1.0 for d in sel) / max(1, len(sel))

    assert p("Enlarged Cardiomediastinum", "Cardiomegaly") > 2 * p("Enlarged Cardiomediastinum")
    assert p("Consolidation", "Pneumonia") > 2 * p("Consolidation")
    ap = [d for i, d in enumerate(draws) if i % 2]
    pa = [d for i, d in enumerate(draws) if not i % 2]
    assert sum(d["Support Devices"] == 1.0 for d in ap) > 2 * sum(
        d["Support Devices"] == 1.0 for d in pa)


# ------------------------------------------------------------------------------ planted


def test_planted_manifest_copies_and_rare_prompts(dataset):
    out, summary = dataset
    k, d = SMALL["planted_studies"], SMALL["planted_copies"]
    manifest = _rows(out / "planted.csv")
    assert len(manifest) == summary.planted_images == k * (d + 1)
    assert list(manifest[0]) == ["planted_id", "Path", "is_original", "prompt"]
    train = {r["Path"]: r for r in _rows(out / "train.csv")}
    planted_paths = {m["Path"] for m in manifest}
    prompts = {}
    for pid in range(k):
        group = [m for m in manifest if int(m["planted_id"]) == pid]
        originals = [m for m in group if m["is_original"] == "1"]
        assert len(group) == d + 1 and len(originals) == 1
        ref = _pixels(out.parent / originals[0]["Path"])
        for m in group:
            row = train[m["Path"]]
            labels = _labels(row)
            assert row["Frontal/Lateral"] == "Frontal"
            assert not any(v == -1.0 for v in labels.values())
            assert 2 <= sum(v == 1.0 for v in labels.values()) <= 4
            for policy in UNCERTAINTY_POLICIES:
                assert prompt_text("Frontal", row["AP/PA"], row["Sex"], int(row["Age"]), labels,
                                   policy) == m["prompt"]
            assert np.array_equal(_pixels(out.parent / m["Path"]), ref)
            folder = Path(m["Path"]).parent
            assert [p.name for p in (out.parent / folder).iterdir()] == ["view1_frontal.dcm"]
        prompts[pid] = group[0]["prompt"]
    assert len(set(prompts.values())) == k
    for path, row in train.items():
        if path in planted_paths:
            continue
        for policy in UNCERTAINTY_POLICIES:
            text = prompt_text(row["Frontal/Lateral"], row["AP/PA"], row["Sex"], int(row["Age"]),
                               _labels(row), policy)
            assert text not in prompts.values()
    uids = {pydicom.dcmread(out.parent / m["Path"]).SOPInstanceUID for m in manifest}
    assert len(uids) == len(manifest)


def test_near_duplicates_are_close_but_not_identical(tmp_path):
    out, _ = _make(tmp_path, patients=3, valid_patients=0, planted_studies=1, planted_copies=2,
                   near_duplicate_noise=0.01, near_duplicate_shift=2, seed=9)
    manifest = _rows(out / "planted.csv")
    ref = _pixels(out.parent / next(m["Path"] for m in manifest if m["is_original"] == "1"))
    for m in manifest:
        if m["is_original"] == "1":
            continue
        img = _pixels(out.parent / m["Path"])
        assert not np.array_equal(img, ref)
        assert np.corrcoef(img.ravel(), ref.ravel())[0, 1] > 0.9


# ------------------------------------------------------------------------------ images


def test_render_sizes_and_range():
    anatomy = P.sample_anatomy(np.random.default_rng(1), "Female", 70)
    for size in (64, 256, 512):
        for view, ap_pa in (("Frontal", "AP"), ("Frontal", "PA"), ("Lateral", None)):
            img = P.render_study(anatomy, view, ap_pa, {}, np.random.default_rng(2), size)
            assert img.shape == (size, size) and img.dtype == np.float32
            assert img.min() >= 0.0 and img.max() <= 1.0
            assert img.std() > 0.1  # structure, not a flat field
    with pytest.raises(ValueError):
        P.render_study(anatomy, "oblique", None, {}, np.random.default_rng(2), 64)


def test_same_patient_looks_more_alike_than_different_patients():
    size, patients = 64, []
    for i in range(4):
        rng = np.random.default_rng([11, i])
        anatomy = P.sample_anatomy(rng, "Male" if i % 2 else "Female", 40 + 10 * i)
        patients.append([P.render_study(anatomy, "Frontal", "PA", {"No Finding": 1.0},
                                        np.random.default_rng([12, i, k]), size).ravel()
                         for k in range(3)])

    def corr(a, b):
        return float(np.corrcoef(a, b)[0, 1])

    same = [corr(p[a], p[b]) for p in patients for a in range(3) for b in range(a + 1, 3)]
    diff = [corr(p[0], q[0]) for i, p in enumerate(patients) for q in patients[i + 1:]]
    assert np.mean(same) > np.mean(diff) + 0.02


@pytest.mark.parametrize("view", ["Frontal", "Lateral"])
def test_each_finding_has_its_own_visible_effect(view):
    anatomy = P.sample_anatomy(np.random.default_rng(5), "Female", 70)

    def render(labels):
        ap_pa = "AP" if view == "Frontal" else None
        return P.render_study(anatomy, view, ap_pa, labels, np.random.default_rng(1), 96)

    base = render({})
    assert np.array_equal(base, render({"No Finding": 1.0}))  # clean = nothing added
    diffs = {}
    for f in OBSERVATIONS[1:]:
        on = render({f: 1.0})
        d = on - base
        assert np.abs(d).mean() > 2e-4, f
        assert np.abs(d).max() > 0.04, f
        unsure = np.abs(render({f: -1.0}) - base)
        assert 0 < unsure.sum() < np.abs(d).sum() * 1.05, f  # uncertain: milder
        diffs[f] = d.ravel()
    names = list(diffs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(diffs[a], diffs[b], atol=1e-3), (a, b)
            assert np.corrcoef(diffs[a], diffs[b])[0, 1] < 0.95, (a, b)


def _png_tiles(path: Path, cols: int, n_tiles: int, size: int, pad: int) -> list[np.ndarray]:
    """The tiles of a preview sheet, after checking its format, size and black gaps."""
    from PIL import Image

    with Image.open(path) as im:
        assert (im.format, im.mode) == ("PNG", "L")
        rows = -(-n_tiles // cols)
        assert im.size == (cols * (size + pad) + pad, rows * (size + pad) + pad)
        sheet = np.asarray(im).astype(np.int16)
    tiles = []
    for k in range(n_tiles):
        y0, x0 = pad + (k // cols) * (size + pad), pad + (k % cols) * (size + pad)
        assert not sheet[y0 - pad : y0, x0 : x0 + size].any()  # the gap above a tile is black
        tiles.append(sheet[y0 : y0 + size, x0 : x0 + size])
    return tiles


def test_previews_write_pngs(tmp_path):
    size, pad = 64, 2  # tiles are separated (and framed) by black gaps of `pad` pixels
    grid = P.preview_grid(tmp_path / "grid.png", n=4, seed=1, size=size)
    per = P.findings_grid(tmp_path / "findings.png", seed=1, size=size)
    studies = _png_tiles(grid, 2, 4, size, pad)
    findings = _png_tiles(per, 7, len(OBSERVATIONS), size, pad)
    for tiles in (studies, findings):
        for t in tiles:
            assert t.std() > 20 and t.max() - t.min() > 100  # a radiograph, not a flat field
        for a in range(len(tiles)):  # different studies (or findings) give different tiles
            for b in range(a + 1, len(tiles)):
                assert np.abs(tiles[a] - tiles[b]).max() > 8, (a, b)
    # the findings sheet shows one patient and study: its tiles differ only where a finding
    # is drawn, far less than the random studies of the other sheet differ from each other
    same = np.mean([np.abs(t - findings[0]).mean() for t in findings[1:]])
    other = np.mean([np.abs(a - b).mean() for i, a in enumerate(studies) for b in studies[i + 1:]])
    assert same < 0.5 * other, (same, other)
