from mnemo.dataset import cache_images, patient_holdout, read_cache
from mnemo.descriptors import build_descriptor, calibrate
from mnemo.workflow import device_of, job, write_json

with job(snakemake) as log:
    holdout = snakemake.params.holdout
    cache = read_cache(snakemake.input.cache, columns=["patient_id", "study", "image"])
    patients = cache.column("patient_id").to_pylist()
    held = patient_holdout(patients, holdout["fraction"], holdout["seed"])
    images = cache_images(cache)[held]
    descriptor = build_descriptor(snakemake.wildcards.descriptor, snakemake.params.settings,
                                  snakemake.input.get("descriptor_model"), device_of(snakemake))
    studies = [str(s) for s in cache.column("study").to_pylist()]
    result = calibrate(descriptor, images, [p for p, h in zip(patients, held, strict=True) if h],
                       [s for s, h in zip(studies, held, strict=True) if h], seed=holdout["seed"], fpr=holdout["fpr"])
    result["descriptor"] = snakemake.wildcards.descriptor
    write_json(result, snakemake.output[0])
    log.info("calibration of %s on %d held-out images: AUC %.4f, threshold@%.0f%%FPR %.4f (TPR %.3f)",
             snakemake.wildcards.descriptor, len(images), result["auc"], 100 * holdout["fpr"], result["threshold"],
             result["tpr_at_threshold"])
