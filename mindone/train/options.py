"""Every option of ``train_text_to_image.py``: flag, yaml key, default and help, declared once.

Names follow diffusers' ``train_text_to_image.py`` where the meaning is the same.
"""

from __future__ import annotations

from mindone.data.filter_vocab import LISTED, SAMPLE_FILTERS
from mindone.train.optim import LR_SCHEDULERS
from mindone.train.tensorboard import REPORT_TO
from mindone.utils.config import Option

MIXED_PRECISION = ("no", "fp16", "bf16")
# Load-time filters on each sample's img2dataset json (mindone.data.filters.SampleFilters), as --filter_<name>
# (old names as aliases): (name, help) per sample filter of the vocabulary, mindone.data.filter_vocab; the
# drop_list filter's value is a file (--filter_drop_list D/near_duplicates_drop.txt).
DATA_FILTERS = tuple((spec.name, spec.load_help) for spec in SAMPLE_FILTERS)
PREDICTION_TYPES = ("epsilon", "v_prediction")

TRAIN_OPTIONS: list[Option] = [
    # data
    Option("dataset_type", str, "files", "files: part_<N>.csv (dir,text) under data_path; webdataset: "
           "part_<N>_stats.csv (file_path,num_samples) and the tar shards; latents: the VAE moments cached by "
           "encode_latents.py (the VAE encode is skipped)", choices=("files", "webdataset", "latents"),
           group="data"),
    Option("data_path", str, None, "dataset root holding the annotation csv files (required)", group="data"),
    Option("resolution", int, 512, "training image size: smallest side resized to it, then cropped", group="data"),
    Option("center_crop", bool, False, "center crop (default: random crop, as diffusers)", group="data"),
    Option("random_flip", bool, False, "random horizontal flip", group="data"),
    Option("caption_dropout", float, 0.0, "probability of an empty caption (classifier-free guidance; "
           "0.1 in SD training)", group="data"),
    Option("aspect_ratio_buckets", bool, False, "keep images' aspect ratios: bucket sizes of area <= resolution^2 "
           "(sd-scripts' --enable_bucket), each batch from one bucket (docs/training.md)", group="data"),
    Option("bucket_min_side", int, None, "smallest bucket side in px; unset: resolution / 2", group="data"),
    Option("bucket_max_side", int, None, "largest bucket side in px; unset: resolution * 2", group="data"),
    Option("bucket_step", int, 64, "bucket sides are multiples of this (a multiple of 8)", group="data"),
    Option("bucket_max_aspect", float, 4.0, "largest bucket aspect ratio (long side / short side)", group="data"),
    Option("bucket_window", int, 64, "batches composed together: samples of one window are grouped by bucket "
           "(memory: window x batch decoded images)", group="data"),
    Option("dataloader_num_workers", int, 2, "data loading worker processes per rank", group="data"),
    Option("shard_root", str, None, "webdataset: where the stats csv's relative shard paths live, if not beside "
           "the csv: a folder, a URL prefix, or a template with {} for the path, e.g. "
           "'pipe:aws s3 cp s3://bucket/laion/{} -'", group="data"),
    Option("allow_outside_data_root", bool, False, "let annotation csvs name shards / images outside their "
           "root (absolute paths, '..', symlinks out, other URLs); commands in csvs stay refused "
           "(docs/security.md)", group="data"),
    Option("max_member_mb", float, 64.0, "skip samples with an image, caption or json larger than this "
           "(MB), unread", group="data"),
    Option("shuffle_buffer", int, 1000, "webdataset: samples held in the shuffle buffer of each worker",
           group="data"),
    Option("uneven_policy", str, "pad", "when samples do not divide evenly over ranks x batch: pad (repeat up to "
           "ranks x batch - 1 samples so that none is dropped) or drop (leave up to ranks x batch - 1 out); both "
           "give every rank the same number of steps", choices=("pad", "drop"), group="data"),
    *[Option(f"filter_{spec.name}", spec.value_type, None, spec.load_help if spec.op == LISTED else
             f"skip samples whose json {spec.load_help} (load-time filter; unset: off)",
             aliases=tuple(f"filter_{a}" for a in spec.aliases), group="data")
      for spec in SAMPLE_FILTERS],
    # model
    Option("model_config", str, "v2-base-512-eps", "model yaml (path or bundled name: v2-base-512-eps, "
           "v2-768-v, tiny)", group="model"),
    Option("pretrained_model_path", str, None, "weights to start from: an original SD 2.x .ckpt/.safetensors, "
           "a diffusers folder or a converted MindSpore .ckpt; unset: random init", group="model"),
    Option("vocab_path", str, None, "bpe_simple_vocab_16e6.txt.gz (default: the one in the installed "
           "open_clip_torch package)", group="model"),
    Option("prediction_type", str, None, "training target; unset: the model config's parameterization",
           choices=PREDICTION_TYPES, group="model"),
    Option("zero_terminal_snr", bool, None, "rescale the noise schedule so its last timestep is pure noise (Lin et "
           "al. 2023; needs v-prediction; samplers then start at t=999); unset: the model config's "
           "zero_terminal_snr (default false)", group="model"),
    Option("train_target", str, "unet", "unet: the diffusion model (SD training and fine-tuning); vae: the "
           "autoencoder alone (L1 reconstruction + KL), for a model that starts from random weights, such as "
           "the demo's tiny one; train the UNet from its model.ckpt afterwards", choices=("unet", "vae"),
           group="model"),
    Option("vae_kl_weight", float, 1e-6, "with --train_target vae: weight of the KL term (ldm: 1e-6)", group="model"),
    Option("vae_init_logvar", float, None, "without --pretrained_model_path: start the VAE posterior's log-variance "
           "here (e.g. -8, near-deterministic like a trained SD VAE) instead of 0, so a short --train_target vae "
           "run is not swamped by posterior noise; unset: plain init", group="model"),
    Option("train_text_encoder", bool, False, "also train the text encoder (default: frozen)", group="model"),
    Option("use_lora", bool, False, "train LoRA adapters on the UNet attention instead of the full UNet",
           group="model"),
    Option("lora_rank", int, 4, "LoRA rank r", group="model"),
    Option("lora_alpha", float, None, "LoRA alpha (update scale alpha/r); unset: equal to the rank", group="model"),
    Option("lora_text_encoder", bool, False, "with --use_lora: adapters on the text tower too", group="model"),
    # optimisation
    Option("train_batch_size", int, 16, "batch size per device", group="optimization"),
    Option("gradient_accumulation_steps", int, 1, "micro batches per optimizer step", group="optimization"),
    Option("learning_rate", float, 1e-4, "peak learning rate (after warmup and --scale_lr)",
           group="optimization"),
    Option("scale_lr", bool, False, "multiply the learning rate by batch size x accumulation x devices",
           group="optimization"),
    Option("lr_scheduler", str, "constant", "learning-rate schedule", choices=LR_SCHEDULERS, group="optimization"),
    Option("lr_warmup_steps", int, 500, "linear warmup steps (constant_with_warmup, cosine)", group="optimization"),
    Option("max_train_steps", int, None, "optimizer steps to run; unset: num_train_epochs epochs",
           group="optimization"),
    Option("num_train_epochs", int, 100, "epochs to run when max_train_steps is unset", group="optimization"),
    Option("max_grad_norm", float, 1.0, "global-norm gradient clipping (0: off)", group="optimization"),
    Option("adam_beta1", float, 0.9, "AdamW beta1", group="optimization"),
    Option("adam_beta2", float, 0.999, "AdamW beta2", group="optimization"),
    Option("adam_weight_decay", float, 1e-2, "AdamW decoupled weight decay", group="optimization"),
    Option("mixed_precision", str, "no", "compute dtype of the model (master weights stay float32); fp16 "
           "uses dynamic loss scaling", choices=MIXED_PRECISION, group="optimization"),
    Option("loss_scale", float, 65536.0, "initial loss scale for fp16", group="optimization"),
    Option("loss_scale_window", int, 2000, "clean steps before the fp16 loss scale doubles", group="optimization"),
    Option("use_ema", bool, False, "keep an EMA of the trained weights (used for validation and the export)",
           group="optimization"),
    Option("ema_decay", float, 0.9999, "EMA maximum decay", group="optimization"),
    Option("snr_gamma", float, None, "min-SNR weighting gamma (5.0 recommended); unset: plain MSE",
           group="optimization"),
    Option("noise_offset", float, 0.0, "offset-noise scale (0.1 is common); 0: off", group="optimization"),
    Option("input_perturbation", float, 0.0, "input perturbation (diffusers' recipe: 0.1): x_t is made from "
           "noise + gamma * extra noise, the target keeps the noise; 0: off", group="optimization"),
    Option("gradient_checkpointing", bool, False, "recompute the UNet's blocks in the backward pass instead of "
           "keeping their activations: less memory, ~30%% more compute (the model yaml's use_recompute)",
           group="optimization"),
    # checkpoints, validation, logging
    Option("output_dir", str, "output/sd2-train", "checkpoints, samples, metrics and the resolved config",
           group="run"),
    Option("checkpointing_steps", int, 500, "save a resumable checkpoint every N optimizer steps", group="run"),
    Option("checkpoints_total_limit", int, None, "keep only the last K checkpoints; unset: all", group="run"),
    Option("resume_from_checkpoint", str, None, "'latest' or a checkpoint directory to resume from",
           group="run"),
    Option("validation_prompts", str, [], "prompts sampled every validation_steps into a PNG grid",
           multiple=True, group="run"),
    Option("validation_steps", int, 500, "sample the validation prompts every N optimizer steps", group="run"),
    Option("validation_inference_steps", int, 20, "DDIM steps for validation samples", group="run"),
    Option("validation_guidance_scale", float, 7.5, "classifier-free guidance for validation samples",
           group="run"),
    Option("logging_steps", int, 10, "write a metrics row every N optimizer steps", group="run"),
    Option("report_to", str, "tensorboard", "where metrics rows and validation grids also go: tensorboard "
           "(event files in <output_dir>/logs) or none (metrics.csv and the PNGs only)", choices=REPORT_TO,
           group="run"),
    Option("seed", int, 0, "seed of weights init, data order and noise", group="run"),
    # device
    Option("mode", str, "graph", "MindSpore execution mode (graph: what Ascend runs)", choices=("graph", "pynative"),
           group="device"),
    Option("device_target", str, None, "CPU, Ascend or GPU; unset: what MindSpore was built for",
           choices=("CPU", "Ascend", "GPU"), group="device"),
    Option("distributed", bool, None, "data parallel over the msrun workers; unset: on when launched by msrun "
           "with more than one worker", group="device"),
    Option("max_device_memory", str, None, "Ascend: cap on device memory, e.g. 59GB", group="device"),
    Option("jit_level", str, None, "Ascend: graph compile level O0/O1/O2; unset: MindSpore's choice",
           choices=("O0", "O1", "O2"), group="device"),
]
