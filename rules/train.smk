# Stage 2: one diffusion model per training variant (config `variants`).


rule train:
    input:
        code("train", "model", "prompts", "dataset", "images", "plots"),
        cache=f"{R}/cache/train",
    output:
        model=directory(f"{R}/models/{{variant}}/pipeline"),
        history=f"{R}/models/{{variant}}/training_log.csv",
        summary=f"{R}/models/{{variant}}/train_summary.json",
        loss_plot=report(
            f"{R}/models/{{variant}}/loss.png",
            caption="../report/loss.rst",
            category="2. Training",
            labels={"variant": "{variant}", "figure": "loss curve"},
        ),
    params:
        model=config.get("model", {}),
        train=lambda wc: variant_train_config(config, wc.variant),
        checkpoint_dir=lambda wc: f"{R}/checkpoints/{wc.variant}",
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/train/{{variant}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{variant}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=gpus(),
    script:
        "../scripts/train.py"
