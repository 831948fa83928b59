from mnemo.data.dataset import read_cache
from mnemo.diffusion.train import write_history
from mnemo.evaluate.fidelity import fit_from_cache
from mnemo.workflow import device_of, job, write_json

with job(snakemake) as log:
    holdout = snakemake.params.holdout
    cache = read_cache(snakemake.input.cache)
    model, history, evaluation = fit_from_cache(cache, {**snakemake.params.fidelity, "progress": False},
                                                holdout_fraction=holdout["fraction"], holdout_seed=holdout["seed"],
                                                device=device_of(snakemake))
    model.save_pretrained(snakemake.output.model)
    write_history(history, snakemake.output.history)
    write_json(evaluation, snakemake.output.evaluation)
    log.info("label classifier on held-out patients: mean AUC %.3f (%d attributes), findings %.3f",
             evaluation["mean_auc"], evaluation["n_auc"], evaluation["mean_auc_findings"])
