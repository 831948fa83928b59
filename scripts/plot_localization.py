import pyarrow.parquet as pq

from mnemo.plots import plot_neuron_counts, plot_neurons_per_layer
from mnemo.workflow import job

with job(snakemake):
    localized = [row for row in pq.read_table(snakemake.input.neurons).to_pylist()
                 if row["mode"] == snakemake.params.mode]
    layer_names = list(dict.fromkeys(pq.read_table(snakemake.input.reference, columns=["layer"]).column("layer").to_pylist()))
    plot_neurons_per_layer(localized, layer_names, snakemake.output.layers_plot)
    plot_neuron_counts(localized, snakemake.output.counts_plot)
