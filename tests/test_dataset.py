"""CheXpert CSV parsing, image reading and the Parquet cache, on small generated phantoms."""

from __future__ import annotations

import csv
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import yaml
from PIL import Image

from mnemo.data import chexpert
from mnemo.data.dataset import (
    BadImageError,
    CacheConfig,
    DatasetError,
    build_cache,
    load_image,
    read_cache,
    read_csv,
)
from mnemo.data.privacy import load_salt, pseudonym
from mnemo.phantoms import generate_phantom_dataset
from tests import jpeg_writers
from tests import radiograph_files as rf

REPO = Path(__file__).resolve().parents[1]

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
    assert len(rejected) == 1 and rejected[0]["path"].endswith(broken.name) and rejected[0]["reason"]
    assert rejected[0]["csv_line"] == "3" and rejected[0]["patient_id"].startswith("pat-")


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


# ---------------------------------------------------------------------------------------------
# Your own CheXpert and DICOM files (issue 20): every file made here, nothing downloaded
# ---------------------------------------------------------------------------------------------

def _own_tree(tmp_path: Path, files: dict[str, Callable[[Path], object]], **csv_options) -> tuple[Path, Path]:
    """image_root with `files` (CSV Path -> writer) under it and a train.csv listing them."""
    root = tmp_path / "root"
    for relative, write in files.items():
        write(root / relative)
    return root, rf.chexpert_csv(root / "CheXpert-v1.0-small" / "train.csv", list(files), **csv_options)


def _own_cache(root: Path, csv_path: Path, out: Path, **config):
    """Cache, then check that no row was lost: cached + rejected == the CSV's rows."""
    summary = build_cache(csv_path, root, out / "cache", CacheConfig(resolution=16, workers=1, **config), SALT,
                          rejected_csv=out / "rejected.csv", progress=False)
    rows = len(read_csv(csv_path, root))
    rejected = list(csv.DictReader((out / "rejected.csv").open()))
    assert summary.images_cached + len(rejected) == rows == summary.images_cached + summary.images_rejected
    return summary, rejected


def _view(patient: int, study: int = 1, name: str = "view1_frontal.jpg") -> str:
    return f"CheXpert-v1.0-small/train/patient{patient:05d}/study{study}/{name}"


def test_16bit_png_is_scaled_by_its_declared_bit_depth(tmp_path):
    twelve = rf.ramp(bits=12)
    declared = load_image(rf.png(tmp_path / "sbit12.png", twelve, significant_bits=12))
    assert abs(declared.max() - twelve.max() / 4095) < 1e-6  # 12-bit content is not near-black
    # per the PNG specification, sBIT data may be stored shifted up to 16 bits: the same image
    spec = load_image(rf.png(tmp_path / "shifted.png", twelve << 4, significant_bits=12))
    assert np.abs(spec - declared).max() < 1e-3
    # without sBIT the mode's range (16 bits) is the divisor, whatever the image's own maximum
    low = load_image(rf.png(tmp_path / "low.png", np.full((8, 8), 200, np.uint16)))
    high = load_image(rf.png(tmp_path / "high.png", np.full((8, 8), 4095, np.uint16)))
    assert low.max() == pytest.approx(200 / 65535) and high.max() == pytest.approx(4095 / 65535)
    assert low.max() < high.max()
    eight = load_image(rf.png(tmp_path / "eight.png", np.full((8, 8), 200, np.uint8)))
    assert eight.max() == pytest.approx(200 / 255)


def test_symlinked_folder_under_image_root_is_read_and_dotdot_still_refused(tmp_path):
    elsewhere = tmp_path / "other_disk" / "patient00002"
    rf.dicom(elsewhere / "study1" / "view1_frontal.dcm")
    root, csv_path = _own_tree(tmp_path, {_view(1, name="view1_frontal.dcm"): rf.dicom})
    (root / "CheXpert-v1.0-small/train/patient00002").symlink_to(elsewhere, target_is_directory=True)
    rf.chexpert_csv(csv_path, [_view(1, name="view1_frontal.dcm"), _view(2, name="view1_frontal.dcm")])
    summary, rejected = _own_cache(root, csv_path, tmp_path)
    assert summary.images_cached == 2 and not rejected
    rf.chexpert_csv(csv_path, [_view(1, name="view1_frontal.dcm"), "CheXpert-v1.0-small/../../x/patient1/study1/v.dcm"])
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        read_csv(csv_path, root)


def test_wrong_image_root_under_skip_shows_the_reasons(tmp_path, caplog):
    _root, csv_path = _own_tree(tmp_path, {_view(k, name="view1_frontal.dcm"): rf.dicom for k in range(1, 8)})
    wrong = tmp_path / "not_the_root"
    wrong.mkdir()
    with caplog.at_level(logging.INFO, logger="mnemo"), pytest.raises(DatasetError) as info:
        build_cache(csv_path, wrong, tmp_path / "cache", CacheConfig(resolution=16, workers=1, on_bad_image="skip"),
                    SALT, rejected_csv=tmp_path / "rejected.csv", progress=False)
    message = str(info.value)
    assert "every image was rejected (7 of 7 rows)" in message and "image_root" in message
    assert "line 2 (" in message and "file not found" in message and "2 more" in message
    assert "patient00001" in message and "patient00001" not in info.value.public  # terminal vs log
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 7 and all("file not found" in line for line in skipped)  # all of them in the log


def test_files_are_recognised_by_content_not_extension(tmp_path):
    def jpeg_named_dcm(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rf.ramp(bits=8)).astype(np.uint8)).save(path, format="JPEG")

    files = {
        _view(1, name="view1_frontal.dcm"): jpeg_named_dcm,
        _view(2): lambda p: rf.dicom(p, preamble=False),  # bare DICOM data set named .jpg
        _view(3, name="view1_frontal.jpg"): lambda p: rf.png(p, rf.ramp(bits=8).astype(np.uint8)),
        _view(4, name="view1_frontal.png"): lambda p: p.parent.mkdir(parents=True) or p.write_text("not an image"),
    }
    root, csv_path = _own_tree(tmp_path, files)
    with open(root / _view(2), "rb") as handle:
        assert b"DICM" not in handle.read(132)
    _summary, rejected = _own_cache(root, csv_path, tmp_path, on_bad_image="skip")
    formats = read_cache(tmp_path / "cache", columns=["source_format"]).column("source_format").to_pylist()
    assert formats == ["jpeg", "dicom", "png"]
    assert [r["csv_line"] for r in rejected] == ["5"] and "not recognised" in rejected[0]["reason"]


def _compressed(transfer_syntax: str) -> tuple[bytes | None, str]:
    from pydicom import uid

    image = rf.ramp(bits=12)
    made = {uid.JPEGLosslessSV1: lambda: jpeg_writers.encode_lossless(image, 12),
            uid.JPEGLossless: lambda: jpeg_writers.encode_lossless(image, 12),
            uid.JPEGExtended12Bit: lambda: jpeg_writers.encode_extended12(image)}
    return (made[transfer_syntax]() if transfer_syntax in made else None), transfer_syntax


@pytest.mark.parametrize("name", ["JPEGLSLossless", "JPEGLosslessSV1", "JPEGLossless", "JPEGExtended12Bit",
                                  "RLELossless", "JPEG2000Lossless"])
def test_compressed_dicoms_are_decoded(tmp_path, name):
    from pydicom import dcmread, uid

    transfer_syntax = getattr(uid, name)
    plain = rf.dicom(tmp_path / "plain.dcm")
    frame, _ = _compressed(transfer_syntax)
    if frame is None:  # pydicom encodes these itself (RLE natively, JPEG-LS via pyjpegls, J2K via openjpeg)
        ds = dcmread(plain)
        ds.compress(transfer_syntax)
        ds.save_as(tmp_path / "compressed.dcm")
    else:  # no package writes these: tests/jpeg_writers.py does
        rf.dicom(tmp_path / "compressed.dcm", transfer_syntax=transfer_syntax, frame_bytes=frame)
    assert dcmread(tmp_path / "compressed.dcm").file_meta.TransferSyntaxUID == transfer_syntax
    tolerance = 2 / 4095 if transfer_syntax == uid.JPEGExtended12Bit else 1e-6
    expected = load_image(plain)
    assert np.abs(load_image(tmp_path / "compressed.dcm") - expected).max() <= tolerance


def test_colour_palette_and_multiframe_dicoms(tmp_path):
    grey = rf.ramp(bits=8).astype(np.uint8)
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    as_png = load_image(tmp_path / "colour.png")
    as_dicom = load_image(rf.dicom(tmp_path / "rgb.dcm", rgb, bits=8, photometric="RGB"))
    assert np.abs(as_dicom - as_png).max() <= 1 / 255  # RGB DICOM and RGB PNG: the same luminance
    ybr = load_image(rf.dicom(tmp_path / "ybr.dcm", _rgb_to_ybr(rgb), bits=8, photometric="YBR_FULL"))
    assert np.abs(ybr - as_png).max() <= 3 / 255
    # PALETTE COLOR: index i shows grey 65535 - 4096 i, so the LUT (not the index) is cached
    indices = (np.arange(16 * 16) % 16).reshape(16, 16).astype(np.uint16)
    palette = np.repeat((65535 - 4096 * np.arange(16))[:, None], 3, axis=1)
    shown = load_image(rf.dicom(tmp_path / "palette.dcm", indices, bits=8, photometric="PALETTE COLOR",
                                palette=palette))
    assert np.abs(shown - (65535 - 4096 * indices) / 65535).max() < 1e-4
    # multi-frame: rejected with a reason by default, or the configured frame
    frames = np.stack([np.full((16, 16), 100 * (k + 1), np.uint16) for k in range(3)])
    frames[:, :8] = 0
    multi = rf.dicom(tmp_path / "multi.dcm", frames)
    with pytest.raises(BadImageError, match=r"multi-frame DICOM \(3 frames\).*dataset.multiframe"):
        load_image(multi)
    assert load_image(multi, "middle").max() == 1.0 and load_image(multi, "first").max() == 1.0
    root, csv_path = _own_tree(tmp_path, {_view(1, name="a.dcm"): lambda p: rf.dicom(p, frames),
                                          _view(2, name="b.dcm"): rf.dicom})
    summary, rejected = _own_cache(root, csv_path, tmp_path, on_bad_image="skip")
    assert summary.images_cached == 1 and "multi-frame" in rejected[0]["reason"]
    summary, rejected = _own_cache(root, csv_path, tmp_path, on_bad_image="skip", multiframe="first")
    assert summary.images_cached == 2 and not rejected


def _rgb_to_ybr(rgb: np.ndarray) -> np.ndarray:
    """DICOM's YBR_FULL (ITU-R 601, full range) of 8-bit RGB."""
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("options", [{"bom": True, "crlf": True}, {"bom": True, "crlf": True, "delimiter": ";"}])
def test_csv_saved_by_a_spreadsheet_is_read(tmp_path, options):
    files = {_view(1, name="a.dcm"): rf.dicom, _view(2, name="b.dcm"): rf.dicom}
    root, plain = _own_tree(tmp_path, files)
    saved = rf.chexpert_csv(tmp_path / "excel.csv", list(files), **options)
    assert saved.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [(r.path, r.labels, r.age) for r in read_csv(saved, root)] == \
        [(r.path, r.labels, r.age) for r in read_csv(plain, root)]
    summary, _ = _own_cache(root, saved, tmp_path)
    assert summary.images_cached == 2


def test_no_patient_folder_name_reaches_results(tmp_path, caplog):
    files = {_view(20, name="a.dcm"): rf.dicom, _view(21, name="b.dcm"): lambda p: rf.dicom(p).write_bytes(b"x" * 300),
             _view(22, name="c.dcm"): rf.dicom}
    root, csv_path = _own_tree(tmp_path, files)
    with caplog.at_level(logging.INFO):
        _own_cache(root, csv_path, tmp_path, on_bad_image="skip")
    written = b"".join(p.read_bytes() for p in tmp_path.glob("cache/*")) + (tmp_path / "rejected.csv").read_bytes()
    logged = caplog.text
    for folder in ("patient00020", "patient00021", "patient00022"):
        assert folder.encode() not in written and folder not in logged
    (row,) = csv.DictReader((tmp_path / "rejected.csv").open())
    alias = pseudonym("patient00021", SALT, "pat-")
    assert row["csv_line"] == "3" and row["patient_id"] == alias and row["path"].endswith(f"{alias}/study1/b.dcm")
    with pytest.raises(BadImageError) as info:  # fail: the terminal gets the file, the log does not
        _own_cache(root, csv_path, tmp_path)
    assert "patient00021" in str(info.value) and "line 3" in str(info.value)
    assert "patient00021" not in info.value.public and "line 3" in info.value.public


def test_failed_decodes_write_one_line_per_file(tmp_path, caplog, capfd):
    from pydicom import dcmread, uid

    def broken_jpeg_ls(path: Path) -> None:  # valid header, garbage codestream: every plugin fails
        ds = dcmread(rf.dicom(path))
        ds.compress(uid.JPEGLSLossless)
        ds.PixelData = ds.PixelData[:40] + b"\x13" * 200 + ds.PixelData[-40:]
        ds.save_as(path)

    files = {_view(1, name="a.dcm"): broken_jpeg_ls, _view(2, name="b.dcm"): broken_jpeg_ls,
             _view(3, name="c.dcm"): rf.dicom}
    root, csv_path = _own_tree(tmp_path, files)
    with caplog.at_level(logging.DEBUG):
        summary, rejected = _own_cache(root, csv_path, tmp_path, on_bad_image="skip")
    assert summary.images_rejected == 2
    lines = [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]
    assert [line.split(" (")[0] for line in lines if "skipped" in line] == ["skipped line 2", "skipped line 3"]
    assert all("\n" not in line for line in lines)
    assert "Traceback" not in capfd.readouterr().err
    assert all("\n" not in r["reason"] and r["reason"] for r in rejected)


def test_readme_own_data_example_works_as_written(tmp_path):
    from mnemo.cli import check_config

    readme = (REPO / "README.md").read_text()
    example = readme.split("### Your own CheXpert data", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    settings = yaml.safe_load(example)
    root, csv_path = _own_tree(tmp_path, {_view(1, name="a.dcm"): rf.dicom})
    settings["dataset"]["csv"], settings["dataset"]["image_root"] = str(csv_path), str(root)
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(settings))
    config, _ = check_config([tmp_path / "my.yaml"], REPO)
    assert config["dataset"]["resolution"] == config["model"]["unet"]["resolution"] == 64


def test_free_text_column_becomes_the_prompt(tmp_path, caplog):
    """dataset.text_column: the report text conditions the image (whitespace collapsed, the patient
    folder's name replaced by its pseudonym); an empty cell falls back to the label prompt, counted."""
    files = {_view(30, name="a.dcm"): rf.dicom, _view(31, name="b.dcm"): rf.dicom}
    root, _ = _own_tree(tmp_path, files)
    csv_path = rf.chexpert_csv(tmp_path / "reports.csv", list(files),
                               texts=["Small left\n  effusion; compare patient00030 prior.", "  "])
    summary, _ = _own_cache(root, csv_path, tmp_path, text_column="Report")
    prompts = read_cache(tmp_path / "cache", columns=["prompt"]).column("prompt").to_pylist()
    alias = pseudonym("patient00030", SALT, "pat-")
    assert prompts[0] == f"Small left effusion; compare {alias} prior."
    _own_cache(root, rf.chexpert_csv(tmp_path / "plain.csv", list(files)), tmp_path / "plain")
    assert prompts[1] == read_cache(tmp_path / "plain" / "cache", columns=["prompt"]).column("prompt")[1].as_py()
    assert (summary.prompts_from_text, summary.prompts_from_labels) == (1, 1)
    with pytest.raises(DatasetError, match=r"reports.csv: no column 'Impression' \(dataset.text_column\)"):
        read_csv(csv_path, root, text_column="Impression")
