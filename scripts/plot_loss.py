from mnemo.report.plots import plot_loss_curve, read_training_log
from mnemo.workflow import job

with job(snakemake):
    plot_loss_curve(read_training_log(snakemake.input.history), snakemake.output[0],
                    title=f"training loss: {snakemake.wildcards.variant}")
