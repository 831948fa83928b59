from pathlib import Path

import pyarrow.parquet as pq
import torch

from mnemo.dataset import cache_images, patient_holdout, read_cache
from mnemo.descriptors import build_descriptor, calibrate
from mnemo.workflow import device_of, job, write_json

with job(snakemake) as log:
    holdout = snakemake.params.holdout
    columns = ["patient_id", "image"]
    first_shard = sorted(Path(snakemake.input.cache).glob("part-*.parquet"))[0]
    has_study = "study" in pq.read_schema(first_shard).names
    cache = read_cache(snakemake.input.cache, columns=columns + (["study"] if has_study else []))
    patients = cache.column("patient_id").to_pylist()
    if snakemake.config["dataset"]["source"] == "prompts":
        held = torch.ones(len(patients), dtype=torch.bool)  # no descriptor is trained on SD originals
    else:
        held = torch.as_tensor(patient_holdout(patients, holdout["fraction"], holdout["seed"]))
    keep = held.tolist()
    studies = [str(s) for s, h in zip(cache.column("study").to_pylist(), keep, strict=True) if h] if has_study else None
    descriptor = build_descriptor(snakemake.wildcards.descriptor, snakemake.params.settings,
                                  snakemake.input.get("descriptor_model"), device_of(snakemake))
    result = calibrate(descriptor, cache_images(cache)[held], [p for p, h in zip(patients, keep, strict=True) if h],
                       studies, seed=holdout["seed"], fpr=holdout["fpr"])
    result["descriptor"] = snakemake.wildcards.descriptor
    write_json(result, snakemake.output[0])
    log.info("calibration of %s on %d held-out images: AUC %.4f, threshold@%.0f%%FPR %.4f (TPR %.3f)",
             snakemake.wildcards.descriptor, int(held.sum()), result["auc"], 100 * holdout["fpr"],
             result["threshold"], result["tpr_at_threshold"])
