"""CheXpert CSV parsing, image reading and the Parquet cache, on small generated phantoms."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pydicom
import pytest

from mnemo.data import chexpert
from mnemo.data.dataset import (
    BadImageError,
    CacheConfig,
    DatasetError,
    build_cache,
    read_cache,
    read_csv,
)
from mnemo.data.privacy import load_salt, pseudonym
from mnemo.phantoms import generate_phantom_dataset

SALT = b"test-salt-0123456789abcdef"


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_phantom_dataset(root / "phantoms", {"patients": 12, "valid_patients": 2, "size": 64,
                                                 "planted_studies": 2, "planted_copies": 2}, workers=1)
    return root


def _copy(phantom_root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(phantom_root, target)
    return target


def _cache(root: Path, out: Path, **config):
    return build_cache(root / "phantoms" / "train.csv", root, out / "cache", CacheConfig(resolution=16, workers=1,
                       **config), SALT, rejected_csv=out / "rejected.csv", progress=False)


def test_csv_parsing_blanks_and_uncertain(phantom_root):
    records = read_csv(phantom_root / "phantoms" / "train.csv", phantom_root)
    assert len(records) > 12
    values = {v for r in records for v in r.labels.values() if not math.isnan(v)}
    assert values <= {1.0, 0.0, -1.0}
    assert any(math.isnan(v) for r in records for v in r.labels.values())
    assert all(r.patient.startswith("patient") for r in records)


def test_uncertainty_policies():
    assert chexpert.apply_uncertainty(-1.0, "ones") == 1.0
    assert chexpert.apply_uncertainty(-1.0, "zeros") == 0.0
    assert math.isnan(chexpert.apply_uncertainty(-1.0, "ignore"))
    assert chexpert.apply_uncertainty(1.0, "zeros") == 1.0
    with pytest.raises(ValueError, match="label value"):
        chexpert.parse_label("2")


def test_cache_rows_labels_and_duckdb_counts(phantom_root, tmp_path):
    summary = _cache(phantom_root, tmp_path)
    rows = list(csv.DictReader((phantom_root / "phantoms" / "train.csv").open()))
    assert summary.images_cached == len(rows) and summary.images_rejected == 0
    con = duckdb.connect()
    glob = str(tmp_path / "cache" / "*.parquet")
    count, patients = con.execute(f"SELECT count(*), count(DISTINCT patient_id) FROM read_parquet('{glob}')").fetchone()
    assert count == len(rows)
    assert patients == len({Path(r["Path"]).parts[-3] for r in rows})
    positives = con.execute(f"SELECT sum(CAST(cardiomegaly = 1 AS INT)) FROM read_parquet('{glob}')").fetchone()[0]
    expected = sum(1 for r in rows if r["Cardiomegaly"].strip() in ("1.0", "-1.0"))  # policy 'ones'
    assert positives == expected
    table = read_cache(tmp_path / "cache")
    assert table.schema.metadata[b"mnemo.resolution"] == b"16"
    assert set(table.column("view").to_pylist()) <= {"frontal", "lateral"}


def test_planted_copies_share_content_hash(phantom_root, tmp_path):
    _cache(phantom_root, tmp_path)
    table = read_cache(tmp_path / "cache", columns=["image_id", "content_hash"])
    hashes = dict(zip(table.column("image_id").to_pylist(), table.column("content_hash").to_pylist(), strict=True))
    manifest = list(csv.DictReader((phantom_root / "phantoms" / "planted.csv").open()))
    by_planted = {}
    for row in manifest:
        by_planted.setdefault(row["planted_id"], set()).add(hashes[pseudonym(row["Path"], SALT, "img-")])
    assert all(len(h) == 1 for h in by_planted.values())


def test_no_patient_identifier_reaches_the_cache(phantom_root, tmp_path):
    _cache(phantom_root, tmp_path)
    secrets = set()
    for path in (phantom_root / "phantoms" / "train").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        secrets |= {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)}
    secrets |= {Path(p).parts[-3] for p in (r["Path"] for r in csv.DictReader(
        (phantom_root / "phantoms" / "train.csv").open()))}  # folder names are pseudonyms of their own
    blob = b"".join(p.read_bytes() for p in (tmp_path / "cache").glob("*.parquet"))
    text = "\n".join(str(v) for v in pq.read_table(next((tmp_path / "cache").glob("*.parquet"))).drop(["image"])
                     .to_pylist())
    for secret in secrets:
        assert secret.encode() not in blob and secret not in text, secret


def _break_first_dicom(root: Path, how: str) -> Path:
    rows = list(csv.DictReader((root / "phantoms" / "train.csv").open()))
    path = root / rows[1]["Path"]
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "no_pixels":
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)
    elif how == "not_an_image":
        path.write_text("this is not an image")
    return path


@pytest.mark.parametrize("how", ["truncate", "no_pixels", "not_an_image"])
def test_bad_dicom_fails_naming_the_file(phantom_root, tmp_path, how):
    root = _copy(phantom_root, tmp_path)
    broken = _break_first_dicom(root, how)
    with pytest.raises(BadImageError) as info:
        _cache(root, tmp_path)
    assert broken.name in str(info.value) and "line 3" in str(info.value)


def test_bad_dicom_is_skipped_and_counted(phantom_root, tmp_path):
    root = _copy(phantom_root, tmp_path)
    broken = _break_first_dicom(root, "truncate")
    summary = _cache(root, tmp_path, on_bad_image="skip")
    assert summary.images_rejected == 1
    assert summary.images_cached == summary.rows_selected - 1
    rejected = list(csv.DictReader((tmp_path / "rejected.csv").open()))
    assert len(rejected) == 1 and rejected[0]["Path"].endswith(broken.name) and rejected[0]["reason"]


def test_monochrome1_is_inverted(tmp_path):
    import numpy as np

    from mnemo.data.dataset import load_image
    from mnemo.phantoms import write_dicom

    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    meta = {"patient_name": "A^B", "patient_id": "X1", "patient_sex": "F", "birth_date": "19600101", "age": 60,
            "study_date": "20200101", "study_time": "101010", "study_uid": "1.2.3.4", "series_uid": "1.2.3.4.1",
            "sop_uid": "1.2.3.4.1.1", "view_position": "PA"}
    write_dicom(tmp_path / "m2.dcm", ramp, meta, monochrome1=False)
    write_dicom(tmp_path / "m1.dcm", ramp, meta, monochrome1=True)
    a, b = load_image(tmp_path / "m2.dcm"), load_image(tmp_path / "m1.dcm")
    assert a[0, -1] > a[0, 0]  # bright = dense after reading, whatever the photometric interpretation
    assert np.abs(a - b).max() < 0.02


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: [{k: v for k, v in r.items() if k != "Cardiomegaly"} for r in rows], "missing CheXpert column"),
        (lambda rows: [dict(rows[0], Edema="2.0"), *rows[1:]], "Edema"),
        (lambda rows: [dict(rows[0], Path="../../etc/passwd"), *rows[1:]], "escapes the dataset root"),
        (lambda rows: [], "lists no images"),
    ],
)
def test_bad_csv_names_row_and_problem(phantom_root, tmp_path, edit, message):
    rows = list(csv.DictReader((phantom_root / "phantoms" / "train.csv").open()))
    changed = edit(rows)
    columns = list(changed[0]) if changed else list(rows[0])
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(changed)
    with pytest.raises(DatasetError, match=message) as info:
        read_csv(path, phantom_root)
    assert str(path) in str(info.value)


def test_salt_file_is_private_and_stable(tmp_path):
    salt = load_salt(tmp_path / "salt")
    assert load_salt(tmp_path / "salt") == salt
    assert (tmp_path / "salt").stat().st_mode & 0o077 == 0
    assert pseudonym("patient00001", salt) != pseudonym("patient00001", b"another-salt-value-xyz")


def test_calibration_set_holds_out_whole_patients_or_takes_every_image(phantom_root, tmp_path):
    from mnemo.data.dataset import calibration_set, patient_holdout

    _cache(phantom_root, tmp_path)
    everyone = read_cache(tmp_path / "cache", columns=["patient_id", "study"])
    patients = everyone.column("patient_id").to_pylist()
    images, held_patients, studies = calibration_set(tmp_path / "cache", 0.3, seed=0)
    expected = [p for p, h in zip(patients, patient_holdout(patients, 0.3, 0), strict=True) if h]
    assert held_patients == expected and len(images) == len(studies) == len(expected) > 0
    assert not set(held_patients) & {p for p in patients if p not in set(expected)}
    images, all_patients, _ = calibration_set(tmp_path / "cache", 0.3, every_image=True)
    assert all_patients == patients and images.shape[0] == len(patients)
