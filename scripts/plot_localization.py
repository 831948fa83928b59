import pyarrow.parquet as pq

from mnemo.nemo.localize import read_localized
from mnemo.report.plots import plot_neuron_counts, plot_neurons_per_layer
from mnemo.workflow import job

with job(snakemake):
    localized = read_localized(snakemake.input.neurons, snakemake.params.search_mode)
    layer_names = list(dict.fromkeys(pq.read_table(snakemake.input.reference, columns=["layer"]).column("layer").to_pylist()))
    plot_neurons_per_layer(localized, layer_names, snakemake.output.layers_plot)
    plot_neuron_counts(localized, snakemake.output.counts_plot)
