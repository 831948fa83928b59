"""The plan of a phantom data set: every patient, study, label, UID and planted duplicate,
decided up front in the parent process (cheap), so that workers only render and write.

Planted duplicates are the ground truth of the memorization demo: K frontal studies get rare,
distinct prompts and D copies each; no other training study may share one of those prompts
under any uncertainty policy, so a generated image matching a planted prompt can be scored.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field

import numpy as np

from mnemo.data.chexpert import OBSERVATIONS
from mnemo.data.prompts import prompt_text
from mnemo.phantoms.config import (
    _S_META,
    _S_PLANT,
    _S_RELABEL,
    _SPLIT_CODE,
    PhantomConfig,
    _rng,
)
from mnemo.phantoms.dicom import _fake_name, _fake_patient_ids, _uid
from mnemo.phantoms.labels import _planted_labels, _prompts, sample_labels


@dataclass
class _Image:
    view: str  # "Frontal" | "Lateral"
    file: str  # "view1_frontal.dcm"
    monochrome1: bool
    series_uid: str
    sop_uid: str


@dataclass
class _Study:
    number: int
    date: _dt.date
    time: str
    age: int
    ap_pa: str
    labels: dict[str, float]
    images: list[_Image]
    study_uid: str
    accession: str
    planted_id: int | None = None
    copy_of: int | None = None  # study number of the original for planted copies
    copy_index: int = 0


@dataclass
class _Patient:
    split: str
    index: int  # 0-based within the split (drives the RNG)
    number: int  # folder number: patient00001 ...
    sex: str
    birth: _dt.date
    name: str
    pid: str
    studies: list[_Study] = field(default_factory=list)


def _make_study(cfg: PhantomConfig, p: _Patient, number: int, date: _dt.date,
                rng: np.random.Generator, with_lateral: bool) -> _Study:
    age = _age_at(p.birth, date)
    ap_pa = "AP" if rng.random() < 0.58 else "PA"
    labels = sample_labels(rng, ap_pa, age)
    views = ["Frontal", "Lateral"] if with_lateral else ["Frontal"]
    images = []
    for k, v in enumerate(views, start=1):
        images.append(_Image(
            view=v, file=f"view{k}_{v.lower()}.dcm",
            monochrome1=bool(rng.random() < cfg.monochrome1_fraction),
            series_uid=_uid(cfg.seed, p.split, p.index, number, k, "series"),
            sop_uid=_uid(cfg.seed, p.split, p.index, number, k, "sop")))
    return _Study(number=number, date=date, time=f"{int(rng.integers(7, 20)):02d}"
                  f"{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}", age=age,
                  ap_pa=ap_pa, labels=labels, images=images,
                  study_uid=_uid(cfg.seed, p.split, p.index, number, "study"),
                  accession=f"ACC{int(rng.integers(10**7, 10**8))}")


def _age_at(birth: _dt.date, when: _dt.date) -> int:
    return when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))


def _plan(cfg: PhantomConfig) -> dict[str, list[_Patient]]:
    """Decide every patient, study, label and UID up front (so workers only render)."""
    total = cfg.patients + cfg.valid_patients
    ids = _fake_patient_ids(cfg.seed, total)
    splits: dict[str, list[_Patient]] = {"train": [], "valid": []}
    for split, count, offset in (("train", cfg.patients, 0),
                                 ("valid", cfg.valid_patients, cfg.patients)):
        for i in range(count):
            r = _rng(cfg.seed, _SPLIT_CODE[split], i, _S_META)
            sex = "Male" if r.random() < 0.58 else "Female"
            age0 = int(np.clip(round(r.normal(60, 17)), 18, 87))
            first = _dt.date(2002, 1, 1) + _dt.timedelta(days=int(r.integers(0, 15 * 365)))
            birth = first - _dt.timedelta(days=int(age0 * 365.25 + r.integers(1, 364)))
            name = _fake_name(r, sex)
            p = _Patient(split=split, index=i, number=offset + i + 1, sex=sex, birth=birth,
                         name=name, pid=ids[offset + i])
            n = int(r.integers(cfg.studies_per_patient[0], cfg.studies_per_patient[1] + 1))
            date = first
            for k in range(1, n + 1):
                if _age_at(birth, date) > 90:
                    break
                p.studies.append(_make_study(cfg, p, k, date, r,
                                             bool(r.random() < cfg.lateral_fraction)))
                date = date + _dt.timedelta(days=int(r.integers(1, 300)))
            splits[split].append(p)
    _plant(cfg, splits["train"])
    return splits


def _plant(cfg: PhantomConfig, train: list[_Patient]) -> None:
    """Turn K studies into planted ones with unique rare prompts, add their copies, and
    relabel any other train study whose prompt (under any policy) would collide."""
    if cfg.planted_studies == 0:
        return
    r = _rng(cfg.seed, _S_PLANT)
    chosen = sorted(int(i) for i in r.choice(len(train), size=cfg.planted_studies, replace=False))
    planted_prompts: set[str] = set()
    for k, pi in enumerate(chosen):
        p = train[pi]
        st = p.studies[int(r.integers(len(p.studies)))]
        st.ap_pa = "AP" if r.random() < 0.5 else "PA"
        st.images = st.images[:1]  # frontal only
        for _ in range(1000):
            labels = _planted_labels(r)
            prompt = prompt_text("Frontal", st.ap_pa, p.sex, st.age, labels, "ones")
            if prompt not in planted_prompts:
                break
        else:  # pragma: no cover - 1000 misses would need an absurdly small label space
            raise RuntimeError("could not find distinct planted prompts")
        planted_prompts.add(prompt)
        st.labels, st.planted_id = labels, k
        base_n = len(p.studies)
        for c in range(1, cfg.planted_copies + 1):
            number = base_n + c
            img = st.images[0]
            p.studies.append(_Study(
                number=number, date=st.date,
                time=f"{(int(st.time[:2]) + c // 60) % 24:02d}{c % 60:02d}00", age=st.age,
                ap_pa=st.ap_pa, labels=dict(labels),
                images=[_Image(view="Frontal", file="view1_frontal.dcm",
                               monochrome1=img.monochrome1,
                               series_uid=_uid(cfg.seed, p.split, p.index, number, 1, "series"),
                               sop_uid=_uid(cfg.seed, p.split, p.index, number, 1, "sop"))],
                study_uid=_uid(cfg.seed, p.split, p.index, number, "study"),
                accession=f"ACC{int(r.integers(10**7, 10**8))}", planted_id=k,
                copy_of=st.number, copy_index=c))
    for p in train:
        for st in p.studies:
            if st.planted_id is not None:
                continue
            attempt = 0
            while any(_prompts(im.view, st.ap_pa if im.view == "Frontal" else None, p.sex,
                               st.age, st.labels) & planted_prompts for im in st.images):
                rr = _rng(cfg.seed, _SPLIT_CODE[p.split], p.index, _S_RELABEL, st.number, attempt)
                attempt += 1
                if attempt > 50:  # "no finding" can never equal a planted prompt
                    st.labels = {o: math.nan for o in OBSERVATIONS}
                    st.labels["No Finding"] = 1.0
                else:
                    st.labels = sample_labels(rr, st.ap_pa, st.age)

