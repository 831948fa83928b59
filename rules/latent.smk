# Latent variants: the VAE (trained here, or a local folder) and the cache's latents under it,
# encoded once per VAE and resolution and read by every variant that names the VAE.


rule train_vae:
    wildcard_constraints:
        vae="[A-Za-z0-9_-]+",
    input:
        code("train_vae"),
        cache=f"{R}/cache/train",
    output:
        model=directory(f"{R}/vaes/{{vae}}/model"),
        history=f"{R}/vaes/{{vae}}/training_log.csv",
    params:
        torch=torch_settings(),
        train=lambda wc: config["vaes"][wc.vae]["train"],
        checkpoint_dir=lambda wc: f"{R}/checkpoints/vae-{wc.vae}",
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/train_vae/{{vae}}.log",
    benchmark:
        f"{R}/benchmarks/train_vae/{{vae}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=gpus(),
    script:
        "../scripts/train_vae.py"


rule encode_latents:
    wildcard_constraints:
        vae="[A-Za-z0-9_-]+",
        resolution="[0-9]+",
    input:
        code("encode_latents"),
        cache=f"{R}/cache/train",
        vae=lambda wc: vae_folder(wc.vae),
    output:
        latents=f"{R}/latents/{{vae}}/train_{{resolution}}px.safetensors",
    params:
        torch=torch_settings(),
        batch_size=32,
    conda:
        "../envs/mnemo.yaml"
    log:
        f"{R}/logs/encode_latents/{{vae}}_{{resolution}}px.log",
    benchmark:
        f"{R}/benchmarks/encode_latents/{{vae}}_{{resolution}}px.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpus(),
    script:
        "../scripts/encode_latents.py"
