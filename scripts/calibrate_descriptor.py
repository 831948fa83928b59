from mnemo.copydetect.descriptors import build_descriptor, calibrate
from mnemo.data.dataset import calibration_set
from mnemo.workflow import device_of, job, write_json

with job(snakemake) as log:
    holdout = snakemake.params.holdout
    images, patients, studies = calibration_set(snakemake.input.cache, holdout["fraction"], holdout["seed"],
                                                every_image=snakemake.params.every_image)
    descriptor = build_descriptor(snakemake.wildcards.descriptor, snakemake.params.settings,
                                  snakemake.input.get("descriptor_model"), device_of(snakemake))
    result = calibrate(descriptor, images, patients, studies, seed=holdout["seed"], fpr=holdout["fpr"])
    result["descriptor"] = snakemake.wildcards.descriptor
    write_json(result, snakemake.output[0])
    log.info("calibration of %s on %d held-out images: AUC %.4f, threshold@%.0f%%FPR %.4f (TPR %.3f)",
             snakemake.wildcards.descriptor, len(images), result["auc"], 100 * holdout["fpr"],
             result["threshold"], result["tpr_at_threshold"])
