# Stage 5: NeMo localization of memorization neurons for the prompts `localize.prompts` chooses
# (default: those the detector flags, as NeMo does).


rule localize:
    input:
        code("localize"),
        unpack(sample_check_inputs),
        published_stats=lambda wc: config["localize"]["reference_stats"] or [],
        published_neurons=lambda wc: config["localize"]["published"] or [],
        model=model_dir,
        prompts=f"{R}/prompts/prompts.parquet",
        scores=f"{R}/detect/{{variant}}/scores.parquet",
        threshold=f"{R}/detect/{{variant}}/threshold.json",
    output:
        neurons=f"{R}/localize/{{variant}}/neurons.parquet",
        reference=f"{R}/localize/{{variant}}/reference_stats.parquet",
        statistics=f"{R}/localize/{{variant}}/memorization_statistics.csv",
        published=f"{R}/localize/{{variant}}/published_comparison.parquet",
    params:
        torch=torch_settings(model=True),
        localize=localize_settings,
        steps=config["detect"]["steps"],
        nemo_signal={key: config["detect"][key] for key in ("nemo_steps", "nemo_timestep")},
        sample_check=sample_check_settings,
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/localize/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/localize/{{variant}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpus(),
    script:
        "../scripts/localize.py"


# The histograms are their own job, so that editing a plot never reruns the search.
rule plot_localization:
    input:
        code("plot_localization"),
        neurons=f"{R}/localize/{{variant}}/neurons.parquet",
        reference=f"{R}/localize/{{variant}}/reference_stats.parquet",
    output:
        layers_plot=report(
            f"{R}/localize/{{variant}}/neurons_per_layer.png",
            caption="../report/neurons_per_layer.rst",
            category="5. Localization",
            labels={"variant": "{variant}", "figure": "neurons per layer"},
        ),
        counts_plot=report(
            f"{R}/localize/{{variant}}/neurons_per_prompt.png",
            caption="../report/neurons_per_prompt.rst",
            category="5. Localization",
            labels={"variant": "{variant}", "figure": "neurons per prompt"},
        ),
    params:
        search_mode=config["localize"]["mode"],
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/plot_localization/{{variant}}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/plot_localization.py"
