"""CheXpert-style datasets (CSV + DICOM/JPEG/PNG) -> Parquet shards at the training resolution.

The cache is the only thing later stages read: images are windowed, resized and stored as PNG
bytes next to labels, demographics, the conditioning prompt and salted patient pseudonyms. Every
input problem is reported with the file (and CSV row) it came from; bad images either stop the
run or are listed in a rejected file and counted, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from mnemo.data import chexpert
from mnemo.data.images import decode_pngs, encode_png
from mnemo.data.privacy import IdentifyingError, content_hash, pseudonym, public_path, scrub
from mnemo.data.prompts import prompt_text
from mnemo.data.radiograph import MULTIFRAME_CHOICES, BadImageError, load_image, read_radiograph

__all__ = ["BadImageError", "CacheConfig", "DatasetError", "build_cache", "load_image", "read_csv"]

BAD_IMAGE_POLICIES = ("fail", "skip")
REASONS_IN_ERROR = 5  # rejected files quoted in the error when every image is rejected
LOGGER = logging.getLogger("mnemo.data")


class DatasetError(IdentifyingError):
    """A problem with the dataset as a whole or one CSV row (always fatal)."""


@dataclass
class CacheConfig:
    resolution: int = 32
    uncertainty: str = "ones"
    frontal_only: bool = False
    max_images: int | None = None
    on_bad_image: str = "fail"
    multiframe: str = "reject"
    text_column: str | None = None  # a free-text CSV column (e.g. the report) used as the prompt
    shard_rows: int = 8192
    chunk_rows: int = 128
    workers: int = 2

    def __post_init__(self) -> None:
        if self.uncertainty not in chexpert.UNCERTAINTY_POLICIES:
            raise ValueError(
                f"dataset.uncertainty={self.uncertainty!r}; expected one of {chexpert.UNCERTAINTY_POLICIES}"
            )
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"dataset.on_bad_image={self.on_bad_image!r}; expected one of {BAD_IMAGE_POLICIES}")
        if self.multiframe not in MULTIFRAME_CHOICES:
            raise ValueError(f"dataset.multiframe={self.multiframe!r}; expected one of {MULTIFRAME_CHOICES}")


@dataclass(frozen=True)
class StudyRecord:
    """One CSV row, validated. `row` is the 1-based line number in the CSV (header = line 1)."""

    row: int
    path: str
    file: Path
    patient: str
    study: int
    sex: str
    age: int | None
    frontal_lateral: str
    ap_pa: str | None
    labels: dict[str, float] = field(hash=False)
    text: str | None = field(default=None, hash=False)  # the free-text column's value, if configured


@dataclass
class CacheSummary:
    csv: str
    rows_in_csv: int
    rows_selected: int
    images_cached: int
    images_rejected: int
    patients: int
    seconds: float
    images_per_second: float
    resolution: int
    uncertainty: str
    shards: list[str]
    text_column: str | None = None
    prompts_from_text: int = 0  # cached rows conditioned on the free-text column
    prompts_from_labels: int = 0  # cached rows whose text was empty: conditioned on the label prompt


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------

_STUDY_RE = re.compile(r"^study(\d+)$")


def _parse_age(raw: str, where: str) -> int | None:
    text = (raw or "").strip()
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: Age {raw!r} is not a number") from None
    if math.isnan(value) or not 0 <= value <= 130:
        raise DatasetError(f"{where}: Age {raw!r} is outside 0-130")
    return int(value)


def _open_csv(csv_path: Path) -> csv.DictReader:
    """A DictReader over a CSV as spreadsheet programs save it: UTF-8 with or without a byte-order
    mark, CRLF or LF line ends, comma, semicolon or tab separated, padded header names."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{csv_path}: not UTF-8 text ({error}); save it as CSV UTF-8") from None
    header = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if reader.fieldnames is not None:
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
    return reader


def read_csv(csv_path: str | Path, image_root: str | Path, text_column: str | None = None) -> list[StudyRecord]:
    """Parse and validate a CheXpert CSV. Paths must stay inside `image_root`. With `text_column`,
    each record also carries that column's free text (whitespace collapsed; None where empty).

    Containment is checked on the normalised path as written, not the resolved one: folders under
    the root may be links to other disks, while `..` and absolute paths are still refused.
    """
    csv_path = Path(csv_path)
    root = Path(os.path.abspath(image_root))
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: CSV file not found")
    reader = _open_csv(csv_path)
    missing = [c for c in chexpert.CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{csv_path}: missing CheXpert column(s) {', '.join(missing)}")
    if text_column is not None and text_column not in (reader.fieldnames or []):
        raise DatasetError(f"{csv_path}: no column {text_column!r} (dataset.text_column); the CSV has "
                           f"{', '.join(reader.fieldnames or [])}")
    records = []
    for line, row in enumerate(reader, start=2):
        where = f"{csv_path}:{line}"
        raw_path = (row["Path"] or "").strip()
        if not raw_path:
            raise DatasetError(f"{where}: empty Path")
        file = Path(os.path.normpath(root / raw_path))
        if Path(raw_path).is_absolute() or not file.is_relative_to(root):
            raise DatasetError(f"{where}: Path {raw_path!r} escapes the dataset root {root}",
                               f"{where}: Path escapes the dataset root {root}")
        parts = Path(raw_path).parts
        if len(parts) < 3 or not _STUDY_RE.match(parts[-2]):
            raise DatasetError(
                f"{where}: Path {raw_path!r} is not in the CheXpert layout .../patientX/studyN/viewM.ext",
                f"{where}: Path is not in the CheXpert layout .../patientX/studyN/viewM.ext",
            )
        labels = {}
        for observation in chexpert.OBSERVATIONS:
            try:
                labels[observation] = chexpert.parse_label(row[observation])
            except ValueError as error:
                raise DatasetError(f"{where}: column {observation!r}: {error}") from None
        frontal_lateral = (row["Frontal/Lateral"] or "").strip()
        if frontal_lateral not in ("Frontal", "Lateral"):
            raise DatasetError(f"{where}: Frontal/Lateral {frontal_lateral!r} is not Frontal or Lateral")
        records.append(
            StudyRecord(
                row=line,
                path=raw_path,
                file=file,
                patient=parts[-3],
                study=int(_STUDY_RE.match(parts[-2]).group(1)),
                sex=(row["Sex"] or "").strip(),
                age=_parse_age(row["Age"], where),
                frontal_lateral=frontal_lateral,
                ap_pa=(row["AP/PA"] or "").strip() or None,
                labels=labels,
                text=(" ".join((row[text_column] or "").split()) or None) if text_column else None,
            )
        )
    if not records:
        raise DatasetError(f"{csv_path}: the CSV lists no images")
    return records


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def resize_square(image: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop to a square, resize with antialiasing, quantise to uint8 (H, W)."""
    height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(image[top : top + side, left : left + side]))
    resized = F.interpolate(
        square[None, None], size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
    )[0, 0]
    return (resized.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _preprocess_chunk(args: tuple[list[tuple[int, str]], int, str]) -> list[tuple[int, bytes | None, str, str, str]]:
    """Worker: (row, file) pairs -> (row, png, content hash or '', source format or '', error or '')."""
    items, resolution, multiframe = args
    torch.set_num_threads(1)
    out = []
    for row, file in items:
        try:
            radiograph = read_radiograph(file, multiframe)
            pixels = resize_square(radiograph.pixels, resolution)
        except BadImageError as error:
            out.append((row, None, "", "", error.reason))
            continue
        except Exception as error:  # keep the file in the message whatever broke
            out.append((row, None, "", "", f"{type(error).__name__}: {error}"))
            continue
        out.append((row, encode_png(pixels), content_hash(pixels.tobytes()), radiograph.source_format, ""))
    return out


def _bounded_map(executor: Executor | None, fn: Callable, tasks: Iterable, in_flight: int) -> Iterator:
    """Ordered map that keeps at most `in_flight` tasks queued (bounded memory)."""
    if executor is None:
        yield from map(fn, tasks)
        return
    pending: deque[Future] = deque()
    for task in tasks:
        pending.append(executor.submit(fn, task))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------

def cache_schema() -> pa.Schema:
    fields = [
        pa.field("image_id", pa.string()),
        pa.field("patient_id", pa.string()),
        pa.field("study", pa.int32()),
        pa.field("view", pa.string()),
        pa.field("projection", pa.string()),
        pa.field("sex", pa.string()),
        pa.field("age", pa.int16()),
    ]
    fields += [pa.field(c, pa.float32()) for c in chexpert.LABEL_COLUMNS]
    fields += [
        pa.field("prompt", pa.string()),
        pa.field("content_hash", pa.string()),
        pa.field("source_format", pa.string()),
        pa.field("image", pa.binary()),
    ]
    return pa.schema(fields)


def select_records(records: list[StudyRecord], config: CacheConfig) -> list[StudyRecord]:
    chosen = [r for r in records if not config.frontal_only or r.frontal_lateral == "Frontal"]
    if config.max_images is not None:
        chosen = chosen[: config.max_images]
    return chosen


def _row_values(record: StudyRecord, salt: bytes, policy: str) -> dict:
    """The cache row; the prompt is the record's free text where it has one, else its label prompt."""
    targets = {
        chexpert.column_name(o): chexpert.apply_uncertainty(record.labels[o], policy)
        for o in chexpert.OBSERVATIONS
    }
    patient_id = pseudonym(record.patient, salt, "pat-")
    if record.text:  # a report may quote the patient folder's name: never cache it
        prompt = scrub(record.text, {record.patient: patient_id})
    else:
        prompt = prompt_text(record.frontal_lateral, record.ap_pa, record.sex, record.age, record.labels, policy)
    return {
        "image_id": pseudonym(record.path, salt, "img-"),
        "patient_id": patient_id,
        "study": record.study,
        "view": record.frontal_lateral.lower(),
        "projection": record.ap_pa if record.frontal_lateral == "Frontal" else None,
        "sex": record.sex,
        "age": record.age,
        **targets,
        "prompt": prompt,
    }


@dataclass(frozen=True)
class Rejection:
    """A CSV row whose image was not cached, identified without the patient's folder name."""

    csv_line: int
    patient_id: str
    path: str  # the CSV Path with the patient folder replaced by patient_id
    reason: str
    private_path: str = field(default="", compare=False)  # for the terminal only

    @classmethod
    def of(cls, record: StudyRecord, reason: str, salt: bytes) -> Rejection:
        public = public_path(record.path, record.patient, salt)
        alias = pseudonym(record.patient, salt, "pat-")
        # a decoder's message may quote the file: keep the patient folder out of it
        reason = scrub(" ".join(reason.split()), {str(record.file): public, record.path: public, record.patient: alias})
        return cls(record.row, alias, public, reason, str(record.file))

    def describe(self, private: bool = False) -> str:
        """One line: CSV line, file and reason (the public form unless `private`)."""
        return f"line {self.csv_line} ({self.private_path if private else self.path}): {self.reason}"


REJECTED_COLUMNS = ("csv_line", "patient_id", "path", "reason")


def write_rejected(rejected: list[Rejection], path: str | Path) -> None:
    """The rejected list: CSV line, hashed patient id, path with the patient folder hashed, reason."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REJECTED_COLUMNS)
        writer.writerows((r.csv_line, r.patient_id, r.path, r.reason) for r in rejected)


def _all_rejected(csv_path: str | Path, image_root: str | Path, selected: list[StudyRecord],
                  rejected: list[Rejection]) -> DatasetError:
    """The error when nothing was cached: the first reasons, and a hint when no file exists at all."""
    head = f"{csv_path}: every image was rejected ({len(rejected)} of {len(selected)} rows)"
    if all(r.reason == "file not found" for r in rejected):
        head += f"; none of the listed files exists under dataset.image_root {image_root}: is it the folder the CSV's Path column is relative to?"
    shown = rejected[:REASONS_IN_ERROR]
    more = f"\n  ... and {len(rejected) - len(shown)} more (every one is in the job log)" if len(rejected) > len(shown) else ""
    private = "\n  ".join(r.describe(private=True) for r in shown)
    public = "\n  ".join(r.describe() for r in shown)
    return DatasetError(f"{head}; first reasons:\n  {private}{more}", f"{head}; first reasons:\n  {public}{more}")


def build_cache(
    csv_path: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    config: CacheConfig,
    salt: bytes,
    rejected_csv: str | Path | None = None,
    progress: bool = True,
) -> CacheSummary:
    """Stream a CheXpert CSV into Parquet shards `out_dir/part-NNNNN.parquet`.

    Work is split into chunks decoded by `config.workers` processes while the parent writes
    shards, so memory stays bounded by (workers x chunk) images whatever the dataset size.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    records = read_csv(csv_path, image_root, config.text_column)
    selected = select_records(records, config)
    if not selected:
        raise DatasetError(f"{csv_path}: no image left after frontal_only/max_images selection")
    by_row = {r.row: r for r in selected}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("part-*.parquet"):
        stale.unlink()
    schema = cache_schema().with_metadata(
        {"mnemo.resolution": str(config.resolution), "mnemo.uncertainty": config.uncertainty}
    )

    chunks = [
        ([(r.row, str(r.file)) for r in selected[i : i + config.chunk_rows]], config.resolution, config.multiframe)
        for i in range(0, len(selected), config.chunk_rows)
    ]
    rejected: list[Rejection] = []
    buffer: list[dict] = []
    shards: list[str] = []
    cached = from_text = 0
    patients: set[str] = set()

    def flush() -> None:
        if not buffer:
            return
        path = out / f"part-{len(shards):05d}.parquet"
        table = pa.Table.from_pylist(buffer, schema=schema)
        pq.write_table(table, path, compression="zstd")
        shards.append(path.name)
        buffer.clear()

    executor = ProcessPoolExecutor(config.workers) if config.workers > 1 else None
    try:
        bar = tqdm(total=len(selected), desc="cache", unit="img", disable=not progress, mininterval=2)
        for results in _bounded_map(executor, _preprocess_chunk, chunks, 2 * max(config.workers, 1)):
            for row, png, digest, source_format, reason in results:
                record = by_row[row]
                if png is None:
                    rejection = Rejection.of(record, reason, salt)
                    if config.on_bad_image == "fail":
                        raise BadImageError(record.file, f"{reason} (CSV {csv_path} line {row})",
                                            f"{rejection.describe()} (CSV {csv_path})")
                    LOGGER.warning("skipped %s", rejection.describe())
                    rejected.append(rejection)
                    continue
                values = _row_values(record, salt, config.uncertainty)
                values.update(image=png, content_hash=digest, source_format=source_format)
                buffer.append(values)
                patients.add(values["patient_id"])
                cached += 1
                from_text += record.text is not None
                if len(buffer) >= config.shard_rows:
                    flush()
            bar.update(len(results))
        bar.close()
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    flush()
    if cached + len(rejected) != len(selected):  # the invariant the rejected list exists for
        raise RuntimeError(f"{csv_path}: {cached} cached + {len(rejected)} rejected != {len(selected)} rows selected")
    if cached == 0:
        raise _all_rejected(csv_path, image_root, selected, rejected)

    if rejected_csv is not None:
        write_rejected(rejected, rejected_csv)
    seconds = time.perf_counter() - start
    return CacheSummary(
        csv=str(csv_path),
        rows_in_csv=len(records),
        rows_selected=len(selected),
        images_cached=cached,
        images_rejected=len(rejected),
        patients=len(patients),
        seconds=round(seconds, 3),
        images_per_second=round(len(selected) / seconds, 2),
        resolution=config.resolution,
        uncertainty=config.uncertainty,
        shards=shards,
        text_column=config.text_column,
        prompts_from_text=from_text if config.text_column else 0,
        prompts_from_labels=cached - from_text if config.text_column else 0,
    )


def write_summary(summary: CacheSummary, path: str | Path) -> None:
    Path(path).write_text(json.dumps(asdict(summary), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Reading the cache back
# ---------------------------------------------------------------------------------------------

def read_cache(cache_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """All shards of a cache as one Arrow table (rows in CSV order)."""
    paths = sorted(Path(cache_dir).glob("part-*.parquet"))
    if not paths:
        raise DatasetError(f"{cache_dir}: no part-*.parquet shards (run the cache_dataset rule first)")
    return pa.concat_tables(pq.read_table(p, columns=columns) for p in paths)


def patients_by_image(cache_dir: str | Path) -> dict[str, str]:
    """Image id -> (hashed) patient id of a cache."""
    table = read_cache(cache_dir, columns=["image_id", "patient_id"])
    return dict(zip(table.column("image_id").to_pylist(), table.column("patient_id").to_pylist(), strict=True))


def calibration_set(cache_dir: str | Path, fraction: float, seed: int = 0,
                    every_image: bool = False) -> tuple[torch.Tensor, list[str], list[str] | None]:
    """Images, patient ids and study ids (None where the cache has no studies) that a descriptor
    is calibrated on: the held-out patients, or every image where no descriptor trains on the
    cache (the Stable Diffusion track's originals)."""
    first = sorted(Path(cache_dir).glob("part-*.parquet"))[:1]
    has_study = bool(first) and "study" in pq.read_schema(first[0]).names
    table = read_cache(cache_dir, columns=["patient_id", "image"] + (["study"] if has_study else []))
    patients = table.column("patient_id").to_pylist()
    held = np.ones(len(patients), dtype=bool) if every_image else patient_holdout(patients, fraction, seed)
    rows = np.flatnonzero(held)
    table = table.take(pa.array(rows))
    studies = [str(s) for s in table.column("study").to_pylist()] if has_study else None
    return cache_images(table), table.column("patient_id").to_pylist(), studies


def cache_images(table: pa.Table) -> torch.Tensor:
    """The `image` column -> uint8 tensor (N, 1, H, W)."""
    return decode_pngs(table.column("image").to_pylist())


def patient_holdout(patient_ids: list[str], fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of rows whose patient is held out: whole patients, a fixed fraction, seeded."""
    unique = sorted(set(patient_ids))
    rng = np.random.default_rng(seed)
    count = max(1, round(fraction * len(unique))) if fraction > 0 else 0
    held = set(rng.choice(unique, size=min(count, len(unique)), replace=False).tolist()) if count else set()
    return np.array([p in held for p in patient_ids], dtype=bool)


def build_originals_cache(memorized: list[dict], originals: dict[str, list[Path]], out_dir: str | Path,
                          resolution: int) -> int:
    """Cache the original training images of memorized prompts (Stable Diffusion track), RGB.

    Same layout as the X-ray cache (image_id, patient_id, prompt, content_hash, image), with the
    prompt's index standing in for the patient, so matching and SSCD_Orig run unchanged.
    """
    from PIL import Image, UnidentifiedImageError

    from mnemo.data.promptset import original_image_id

    rows = []
    for entry in memorized:
        for k, path in enumerate(originals.get(entry["index"], [])):
            try:
                with Image.open(path) as image:
                    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as error:
                raise BadImageError(path, f"unreadable image ({type(error).__name__}: {error})") from None
            channels = [resize_square(rgb[..., c], resolution) for c in range(3)]
            pixels = np.stack(channels, axis=-1)
            rows.append({"image_id": original_image_id(entry["index"], k), "patient_id": f"prompt-{entry['index']}",
                         "prompt": entry["caption"], "content_hash": content_hash(pixels.tobytes()),
                         "source_format": path.suffix.lower().lstrip("."), "image": encode_png(pixels)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("image_id", pa.string()), ("patient_id", pa.string()), ("prompt", pa.string()),
                        ("content_hash", pa.string()), ("source_format", pa.string()), ("image", pa.binary())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "part-00000.parquet", compression="zstd")
    return len(rows)
