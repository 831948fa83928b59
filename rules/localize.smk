# Stage 5: NeMo localization of memorization neurons for every prompt the detector flags.


rule localize:
    input:
        code("localize", "detect", "mitigate", "sample", "model", "plots"),
        model=model_dir,
        prompts=f"{R}/prompts/prompts.parquet",
        scores=f"{R}/detect/{{variant}}/scores.parquet",
        threshold=f"{R}/detect/{{variant}}/threshold.json",
    output:
        neurons=f"{R}/localize/{{variant}}/neurons.parquet",
        reference=f"{R}/localize/{{variant}}/reference_stats.parquet",
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
        localize=config["localize"],
        seed=config["generate"]["seed"],
        steps=config["detect"]["steps"],
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
