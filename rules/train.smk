# Stage 2: one diffusion model per training variant (config `variants`): from scratch in pixels, in
# a VAE's latent space (its latents cached once by encode_latents), or fine-tuning a pipeline. A job
# whose gpu resource is above 1 trains in that many torchrun processes.


rule train:
    input:
        code("train"),
        unpack(train_inputs),
        cache=f"{R}/cache/train",
    output:
        model=directory(f"{R}/models/{{variant}}/pipeline"),
        history=f"{R}/models/{{variant}}/training_log.csv",
        summary=f"{R}/models/{{variant}}/train_summary.json",
    params:
        torch=torch_settings(),
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


# The loss curve is its own job, so that editing a plot never retrains a model.
rule plot_loss:
    input:
        code("plot_loss"),
        history=f"{R}/models/{{variant}}/training_log.csv",
    output:
        report(
            f"{R}/models/{{variant}}/loss.png",
            caption="../report/loss.rst",
            category="2. Training",
            labels={"variant": "{variant}", "figure": "loss curve"},
        ),
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/plot_loss/{{variant}}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/plot_loss.py"
