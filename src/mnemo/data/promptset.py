"""The evaluation prompt set: which prompts every model is sampled, probed and localized on.

Three groups: `planted` (the rare prompts of the planted duplicates: memorized by construction),
`other` (a frequency-weighted sample of ordinary training prompts) and `heldout` (label
combinations that no training image has). Each prompt carries the training images and patients
behind it, so replication and patient-level leakage can be measured against them.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mnemo.data import chexpert
from mnemo.data.privacy import pseudonym
from mnemo.data.prompts import prompt_text

GROUPS = ("planted", "other", "heldout")


@dataclass
class PromptSetConfig:
    other: int = 16
    heldout: int = 8
    seed: int = 0


def prompt_set_schema() -> pa.Schema:
    return pa.schema([
        pa.field("prompt_id", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("group", pa.string()),
        pa.field("memorized_truth", pa.bool_()),
        pa.field("reference", pa.bool_()),
        pa.field("planted_id", pa.int32()),
        pa.field("n_train_images", pa.int32()),
        pa.field("train_image_ids", pa.list_(pa.string())),
        pa.field("train_patient_ids", pa.list_(pa.string())),
        pa.field("source_image_ids", pa.list_(pa.string())),
    ])


def read_planted_manifest(path: str | Path, salt: bytes) -> dict[int, dict]:
    """planted_id -> {'prompt', 'image_ids'}; Paths are pseudonymised exactly as the cache does."""
    planted: dict[int, dict] = {}
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            entry = planted.setdefault(int(row["planted_id"]), {"prompt": row["prompt"], "image_ids": []})
            entry["image_ids"].append(pseudonym(row["Path"].strip(), salt, "img-"))
    return planted


def heldout_prompts(known: set[str], count: int, rng: np.random.Generator, policy: str) -> list[str]:
    """Random view/sex/age/finding combinations that no training image has."""
    views = [("Frontal", "PA"), ("Frontal", "AP"), ("Lateral", None)]
    findings = [o for o in chexpert.OBSERVATIONS if o != "No Finding"]
    out: list[str] = []
    for _ in range(10_000):
        if len(out) == count:
            break
        frontal_lateral, ap_pa = views[rng.integers(len(views))]
        chosen = rng.choice(findings, size=int(rng.integers(1, 3)), replace=False)
        labels = {o: (chexpert.POSITIVE if o in chosen else chexpert.NEGATIVE) for o in chexpert.OBSERVATIONS}
        text = prompt_text(frontal_lateral, ap_pa, ["Female", "Male"][rng.integers(2)],
                           int(rng.integers(2, 9)) * 10 + 5, labels, policy)
        if text not in known and text not in out:
            out.append(text)
    if len(out) < count:
        raise ValueError(f"could only find {len(out)} unseen label combinations, {count} requested")
    return out


def build_prompt_set(cache: pa.Table, config: PromptSetConfig, policy: str,
                     planted: dict[int, dict] | None = None) -> pa.Table:
    """Assemble the prompt table from the training cache (columns prompt, image_id, patient_id)."""
    rng = np.random.default_rng(config.seed)
    prompts = cache.column("prompt").to_pylist()
    image_ids = cache.column("image_id").to_pylist()
    patients = cache.column("patient_id").to_pylist()
    images_of: dict[str, list[int]] = defaultdict(list)
    for row, text in enumerate(prompts):
        images_of[text].append(row)

    rows: list[dict] = []

    def add(group: str, text: str, planted_id: int | None = None, sources: list[str] | None = None) -> None:
        members = images_of.get(text, [])
        rows.append({
            "prompt_id": f"{group}-{sum(r['group'] == group for r in rows):03d}",
            "prompt": text,
            "group": group,
            "memorized_truth": group == "planted",
            "reference": group != "planted",
            "planted_id": planted_id,
            "n_train_images": len(members),
            "train_image_ids": [image_ids[i] for i in members],
            "train_patient_ids": sorted({patients[i] for i in members}),
            "source_image_ids": sources or [],
        })

    planted_texts = set()
    for planted_id, entry in sorted((planted or {}).items()):
        present = set(entry["image_ids"]) & set(image_ids)
        if not present:
            continue  # all copies rejected or filtered out (e.g. max_images); nothing to memorize
        planted_texts.add(entry["prompt"])
        add("planted", entry["prompt"], planted_id, sorted(present))

    candidates = [r for r, text in enumerate(prompts) if text not in planted_texts]
    chosen: list[str] = []
    for row in rng.permutation(candidates):
        if len(chosen) == config.other:
            break
        if prompts[row] not in chosen:
            chosen.append(prompts[row])
    for text in chosen:
        add("other", text, sources=[image_ids[i] for i in images_of[text]])
    for text in heldout_prompts(set(images_of), config.heldout, rng, policy):
        add("heldout", text)
    return pa.Table.from_pylist(rows, schema=prompt_set_schema())


# ---------------------------------------------------------------------------------------------
# Stable Diffusion track: prompts from NeMo's CSVs or Wen's jsonl
# ---------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
NEMO_TYPES = ("VM", "TM")  # Webster's verbatim and template memorization, the `type` of NeMo's memorized CSV
NUMERIC_COLUMNS = ("mean_sscd", "max_sscd")


class PromptFileError(ValueError):
    """A prompt file row that cannot be read as it is meant; the message is `file:line: problem`."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {problem}")


def read_prompt_file(path: str | Path, memorized: bool) -> list[dict]:
    """Rows {index, caption, group} from NeMo's `;`-separated CSVs or Wen's jsonl, every row checked.

    NeMo's memorized file has an unnamed index, Caption, URL, type (VM/TM), mean_sscd, max_sscd,
    Index; the unmemorized one Caption;URL;Index. Wen's jsonl (one {caption, index, url} object per
    line; recognised by its content, whatever the suffix) has no VM/TM split: group 'memorized'.
    A row with the wrong number of fields (an unquoted ';'), a quoted field running over lines (an
    unclosed quote), a type other than VM/TM, a non-integer or repeated Index, an empty caption or
    a file that is not UTF-8 raises PromptFileError naming the file and line: a malformed row never
    becomes a wrong prompt or group silently.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found")
    text = _utf8_text(path)
    if not text.strip():
        raise PromptFileError(path, None, "empty file: no prompts")
    if path.suffix.lower() in (".jsonl", ".json") or text.lstrip()[:1] in ("{", "["):
        rows = _read_json_prompts(path, text, memorized)
    else:
        rows = _read_nemo_csv(path, text, memorized)
    if not rows:
        raise PromptFileError(path, None, "no prompts in the file (a header only?)")
    return rows


def _utf8_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise PromptFileError(path, line, f"not UTF-8 (byte 0x{data[error.start]:02x} at column {column}); "
                              "save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None


def _group(path: Path, line: int, memorized: bool, kind: str | None) -> str:
    if not memorized:
        return "nonmemorized"
    if kind is None:  # no VM/TM split in this file
        return "memorized"
    if kind.strip() not in NEMO_TYPES:
        raise PromptFileError(path, line, f"type {kind!r} is not one of {', '.join(NEMO_TYPES)} (NeMo's verbatim / "
                              "template memorization); a ';' inside an unquoted caption shifts the columns")
    return kind.strip()


def _index(path: Path, line: int, value: object, seen: dict[str, int]) -> str:
    index = str(value).strip()
    if not index.isdigit():
        raise PromptFileError(path, line, f"Index {value!r} is not a non-negative integer (LAION's image index)")
    if index in seen:
        raise PromptFileError(path, line, f"Index {index} repeats line {seen[index]}")
    seen[index] = line
    return index


def _caption(path: Path, line: int, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PromptFileError(path, line, "empty caption")
    return value.strip()


def _read_nemo_csv(path: Path, text: str, memorized: bool) -> list[dict]:
    import io

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";", strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as error:
        raise PromptFileError(path, 1, f"no header row ({error})") from None
    if "Caption" not in header:
        raise PromptFileError(path, 1, f"no 'Caption' column (expected NeMo's ';'-separated prompt CSV); "
                              f"columns are {header}")
    columns = {name: position for position, name in enumerate(header)}
    rows: list[dict] = []
    seen: dict[str, int] = {}
    end = reader.line_num
    while True:
        line = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise PromptFileError(path, line, f"an unclosed or stray quote in the row that starts here "
                                  f"(csv: {error})") from None
        end = reader.line_num
        if not fields:
            continue  # a blank line
        if end > line:
            raise PromptFileError(path, line, f"a quoted field runs over lines {line}-{end}: an unclosed quote "
                                  "(every prompt is one line)")
        if len(fields) != len(header):
            hint = ("an unquoted ';' inside the caption?" if len(fields) > len(header) else "a short row")
            raise PromptFileError(path, line, f"{len(fields)} fields, the header has {len(header)} "
                                  f"({';'.join(header)}): {hint}")
        record = dict(zip(header, fields, strict=True))
        for name in NUMERIC_COLUMNS:
            if name in record:
                try:
                    float(record[name])
                except ValueError:
                    raise PromptFileError(path, line, f"{name} {record[name]!r} is not a number") from None
        if "Index" in columns:
            index = _index(path, line, record["Index"], seen)
        else:
            index = _index(path, line, record.get("") or str(len(rows)), seen)
        rows.append({"index": index, "caption": _caption(path, line, record["Caption"]),
                     "group": _group(path, line, memorized, record.get("type"))})
    return rows


def _read_json_prompts(path: Path, text: str, memorized: bool) -> list[dict]:
    """Wen's jsonl (one object per line), or the same records as one JSON array."""
    import json

    if text.lstrip().startswith("["):
        try:
            records = list(enumerate(json.loads(text), start=1))
        except ValueError as error:
            raise PromptFileError(path, getattr(error, "lineno", None), f"not valid JSON ({error})") from None
        label = "record"
    else:
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((line_number, json.loads(line)))
            except ValueError as error:
                raise PromptFileError(path, line_number, f"not a JSON line ({error}); Wen's file has one "
                                      "{caption, index, url} object per line") from None
        label = "line"
    rows: list[dict] = []
    seen: dict[str, int] = {}
    for number, record in records:
        where = number if label == "line" else None
        if not isinstance(record, dict) or "caption" not in record or "index" not in record:
            raise PromptFileError(path, where, f"{label} {number}: not a {{caption, index}} object")
        rows.append({"index": _index(path, where or number, record["index"], seen),
                     "caption": _caption(path, where or number, record["caption"]),
                     "group": "memorized" if memorized else "nonmemorized"})
    return rows


def original_images(folder: str | Path | None) -> dict[str, list[Path]]:
    """Index -> original training image files: `{Index}.ext`, `{Index}_k.ext` or `{Index}/*.ext`."""
    if not folder:
        return {}
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"originals folder {root} not found")
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        key = path.parent.name if path.parent != root else path.stem.split("_")[0]
        found[key].append(path)
    return dict(found)


def original_image_id(index: str, k: int) -> str:
    return f"orig-{index}-{k}"


def build_prompt_set_from_files(memorized: list[dict], unmemorized: list[dict],
                                originals: dict[str, list[Path]], max_memorized: int | None = None,
                                max_unmemorized: int | None = None) -> pa.Table:
    """Prompt table of the SD track: memorized prompts (VM/TM) and reference (unmemorized) ones."""
    rows = []
    for entries, limit, memorized_flag in ((memorized, max_memorized, True), (unmemorized, max_unmemorized, False)):
        for position, entry in enumerate(entries[:limit] if limit else entries):
            files = originals.get(entry["index"], []) if memorized_flag else []
            ids = [original_image_id(entry["index"], k) for k in range(len(files))]
            prefix = "mem" if memorized_flag else "ref"
            rows.append({
                "prompt_id": f"{prefix}-{position:04d}",
                "prompt": entry["caption"],
                "group": entry["group"],
                "memorized_truth": memorized_flag,
                "reference": not memorized_flag,
                "planted_id": None,
                "n_train_images": len(ids),
                "train_image_ids": ids,
                "train_patient_ids": [],
                "source_image_ids": ids,
            })
    return pa.Table.from_pylist(rows, schema=prompt_set_schema())
