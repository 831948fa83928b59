"""Write a phantom data set: a CheXpert-shaped folder tree of DICOM files plus its CSVs.

The offline demo needs a data set that behaves like CheXpert where it matters for memorization
research: per-patient anatomy (several studies of one person look alike, as in real data), sparse
correlated labels in CheXpert's coding, DICOM files carrying fake identifiers (so that the
de-identification step has something to remove), and a known set of planted duplicates with
rare prompts, so that memorization can be provoked and then scored against ground truth.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnemo.data.chexpert import CSV_COLUMNS
from mnemo.data.prompts import prompt_text
from mnemo.phantoms.anatomy import sample_anatomy
from mnemo.phantoms.config import _S_ANATOMY, _S_COPY, _S_STUDY, _SPLIT_CODE, PhantomConfig, _rng
from mnemo.phantoms.dicom import StudyMeta, write_dicom
from mnemo.phantoms.labels import _csv_rows
from mnemo.phantoms.plan import _Patient, _plan
from mnemo.phantoms.render import render_study


@dataclass(frozen=True)
class PhantomSummary:
    """What was written, for logs and for the workflow's checks."""

    out_dir: Path
    train_patients: int
    valid_patients: int
    train_studies: int
    valid_studies: int
    train_images: int
    valid_images: int
    planted_images: int
    train_csv: Path
    valid_csv: Path
    planted_csv: Path


@dataclass(frozen=True)
class _Job:
    """One worker's share: one patient, with only the settings rendering needs (picklable)."""

    out_dir: str
    seed: int
    size: int
    bits_stored: int
    near_noise: float
    near_shift: int
    patient: _Patient


def _render_patient(job: _Job) -> int:
    """Render and write every image of one patient (the unit of parallel work)."""
    p = job.patient
    code = _SPLIT_CODE[p.split]
    anatomy = sample_anatomy(_rng(job.seed, code, p.index, _S_ANATOMY), p.sex,
                             p.studies[0].age if p.studies else 60)
    originals: dict[int, np.ndarray] = {}
    written = 0
    for st in p.studies:
        folder = Path(job.out_dir) / p.split / f"patient{p.number:05d}" / f"study{st.number}"
        for k, im in enumerate(st.images, start=1):
            if st.copy_of is not None:
                img = originals[st.copy_of]
                img = _near_duplicate(img, job, _rng(job.seed, code, p.index, _S_COPY,
                                                     st.number))
            else:
                rng = _rng(job.seed, code, p.index, _S_STUDY, st.number, k)
                ap_pa = st.ap_pa if im.view == "Frontal" else None
                img = render_study(anatomy, im.view, ap_pa, st.labels, rng, job.size)
                if st.planted_id is not None:
                    originals[st.number] = img
            meta = StudyMeta(
                patient_name=p.name, patient_id=p.pid, patient_sex=p.sex,
                birth_date=p.birth.strftime("%Y%m%d"), age=st.age,
                study_date=st.date.strftime("%Y%m%d"), study_time=st.time,
                study_uid=st.study_uid, series_uid=im.series_uid, sop_uid=im.sop_uid,
                view_position=(st.ap_pa if im.view == "Frontal" else "LL"),
                accession_number=st.accession, study_id=str(st.number), series_number=k,
                instance_number=1, bits_stored=job.bits_stored)
            write_dicom(folder / im.file, img, meta, im.monochrome1)
            written += 1
    return written


def _near_duplicate(img: np.ndarray, job: _Job, rng: np.random.Generator) -> np.ndarray:
    """A planted copy: the original itself, or shifted and noisy when the config asks, so that
    copy detection can be tested against near duplicates as well as exact ones."""
    if job.near_noise <= 0 and job.near_shift <= 0:
        return img
    out = img
    if job.near_shift > 0:
        dy, dx = (int(v) for v in rng.integers(-job.near_shift, job.near_shift + 1, size=2))
        pad = job.near_shift
        padded = np.pad(out, pad, mode="edge")
        out = padded[pad - dy : pad - dy + img.shape[0], pad - dx : pad - dx + img.shape[1]]
    if job.near_noise > 0:
        out = out + rng.normal(0.0, job.near_noise, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _write_csv(path: Path, header: Sequence[str], rows: list[list[str]]) -> None:
    """Write via a temporary file, so that a CSV present on disk is always complete."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def generate_phantom_dataset(out_dir: str | Path,
                             config: PhantomConfig | Mapping[str, Any] | None = None,
                             workers: int | None = 1, overwrite: bool = False) -> PhantomSummary:
    """Write a CheXpert-shaped phantom data set; same config -> byte-identical files.

    The CSVs are written last, so their presence means the DICOM tree is complete. An existing
    data set in out_dir is only replaced when overwrite=True.
    """
    cfg = PhantomConfig.from_value(config)
    out = Path(out_dir)
    names = ("train", "valid", "train.csv", "valid.csv", "planted.csv")
    existing = [n for n in names if (out / n).exists()]
    if existing:
        if not overwrite:
            raise FileExistsError(f"{out} already holds a phantom data set ({existing[0]}); "
                                  "pass overwrite=True to replace it")
        for n in existing:
            target = out / n
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(cfg)
    jobs = [_Job(str(out), cfg.seed, cfg.size, cfg.bits_stored, cfg.near_duplicate_noise,
                 cfg.near_duplicate_shift, p) for split in ("train", "valid") for p in plan[split]]
    n_workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if n_workers == 1 or len(jobs) <= 1:
        for j in jobs:
            _render_patient(j)
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as ex:
            chunk = max(1, len(jobs) // (n_workers * 8))
            for _ in ex.map(_render_patient, jobs, chunksize=chunk):
                pass

    root_name = out.resolve().name
    header = list(CSV_COLUMNS)
    train_rows = _csv_rows(root_name, plan["train"])
    valid_rows = _csv_rows(root_name, plan["valid"])
    planted_rows = []
    for p in plan["train"]:
        for st in p.studies:
            if st.planted_id is None:
                continue
            rel = f"{root_name}/train/patient{p.number:05d}/study{st.number}/{st.images[0].file}"
            prompt = prompt_text("Frontal", st.ap_pa, p.sex, st.age, st.labels, "ones")
            planted_rows.append((st.planted_id, 0 if st.copy_of is not None else 1, rel, prompt))
    planted_rows.sort(key=lambda r: (r[0], -r[1], r[2]))
    planted_csv = out / "planted.csv"
    _write_csv(planted_csv, ["planted_id", "Path", "is_original", "prompt"],
               [[str(k), rel, str(orig), prompt] for k, orig, rel, prompt in planted_rows])
    _write_csv(out / "valid.csv", header, valid_rows)
    _write_csv(out / "train.csv", header, train_rows)
    return PhantomSummary(
        out_dir=out,
        train_patients=len(plan["train"]),
        valid_patients=len(plan["valid"]),
        train_studies=sum(len(p.studies) for p in plan["train"]),
        valid_studies=sum(len(p.studies) for p in plan["valid"]),
        train_images=len(train_rows),
        valid_images=len(valid_rows),
        planted_images=len(planted_rows),
        train_csv=out / "train.csv",
        valid_csv=out / "valid.csv",
        planted_csv=planted_csv,
    )
