# Stage 4b: detector validation against planted truth and measured replication; re-trigger test.


rule validate_detection:
    input:
        code("validate_detection"),
        unpack(replication_inputs),
        scores=f"{R}/detect/{{variant}}/scores.parquet",
        samples=f"{R}/samples/{{variant}}/none.parquet",
    output:
        metrics=f"{R}/validation/{{variant}}/detection_metrics.parquet",
        roc=report(
            f"{R}/validation/{{variant}}/roc.png",
            caption="../report/roc.rst",
            category="4. Detection",
            labels={"variant": "{variant}", "figure": "ROC curves"},
        ),
        scatter=report(
            f"{R}/validation/{{variant}}/score_vs_similarity.png",
            caption="../report/scatter.rst",
            category="4. Detection",
            labels={"variant": "{variant}", "figure": "detector score vs similarity"},
        ),
        grid=report(
            f"{R}/validation/{{variant}}/top_bottom_grid.png",
            caption="../report/grid.rst",
            category="4. Detection",
            labels={"variant": "{variant}", "figure": "top and bottom prompts"},
        ),
    params:
        grid_prompts=config["report"]["grid_prompts"],
        grid_detector=config["report"]["grid_detector"],
        grid_guidance=config["report"]["guidance"],
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/validate_detection/{{variant}}.log",
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/validate_detection.py"


rule retrigger:
    input:
        code("retrigger"),
        unpack(primary_descriptor_model),
        model=model_dir,
        neurons=f"{R}/localize/{{variant}}/neurons.parquet",
        prompts=f"{R}/prompts/prompts.parquet",
        cache=f"{R}/cache/train",
        calibration=f"{R}/descriptors/{primary()}/calibration.json",
    output:
        f"{R}/retrigger/{{variant}}.parquet",
    params:
        torch=torch_settings(model=True),
        retrigger=config["retrigger"],
        descriptor_name=primary(),
        descriptor=lambda wc: config["descriptors"][primary()],
        blocks=config["localize"]["blocks"],
        search_mode=config["localize"]["mode"],
        sampling_steps=config["generate"]["steps"],
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/retrigger/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/retrigger/{{variant}}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=gpus(),
    script:
        "../scripts/retrigger.py"
