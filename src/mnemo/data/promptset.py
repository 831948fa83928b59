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


def read_prompt_file(path: str | Path, memorized: bool) -> list[dict]:
    """Rows {index, caption, group} from NeMo's `;`-separated CSVs or Wen's jsonl.

    NeMo's memorized file has Caption, URL, type (VM/TM), ..., Index; the unmemorized one
    Caption;URL;Index; Wen's jsonl has caption, index, url (no VM/TM split: group 'memorized').
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found")
    rows: list[dict] = []
    if path.suffix == ".jsonl":
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append({"index": str(record["index"]), "caption": str(record["caption"]),
                             "group": "memorized" if memorized else "nonmemorized"})
            except (ValueError, KeyError) as error:
                raise ValueError(f"{path}:{line_number}: not a {{caption, index}} JSON line ({error})") from None
        return rows
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=";")
        fields = reader.fieldnames or []
        if "Caption" not in fields:
            raise ValueError(f"{path}: no 'Caption' column (expected NeMo's ';'-separated prompt CSV); "
                             f"columns are {fields}")
        for line_number, record in enumerate(reader, start=2):
            index = record.get("Index") or record.get("") or str(line_number - 2)
            group = "nonmemorized"
            if memorized:
                group = (record.get("type") or "memorized").strip() or "memorized"
            if not (record.get("Caption") or "").strip():
                raise ValueError(f"{path}:{line_number}: empty Caption")
            rows.append({"index": str(index).strip(), "caption": record["Caption"].strip(), "group": group})
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
