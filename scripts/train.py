import sys

from mnemo.diffusion.training_job import TrainingJob, run_training_job
from mnemo.workflow import device_of, fault_point, job

with job(snakemake) as log:
    training = TrainingJob(
        cache=snakemake.input.cache, model_dir=snakemake.output.model, history=snakemake.output.history,
        summary=snakemake.output.summary, checkpoint_dir=snakemake.params.checkpoint_dir,
        model=snakemake.params.model, train=snakemake.params.train, device=str(device_of(snakemake)),
        threads=snakemake.threads, pretrained=snakemake.input.get("pretrained"), vae=snakemake.input.get("vae"),
        latents=snakemake.input.get("latents"), text_encoder=snakemake.input.get("text_encoder"),
    )
    processes = int(snakemake.resources.get("gpu", 0))
    log.info("training %s (%s process(es))", snakemake.wildcards.variant, max(processes, 1))
    if processes > 1:  # one torchrun process per GPU the job was given
        from mnemo.diffusion.distributed import launch

        launch(training, processes, f"{snakemake.params.checkpoint_dir}/job.json", stdout=sys.stdout)
    else:
        run_training_job(training, log=log.info, on_checkpoint=lambda step: fault_point("train", step))
