#!/usr/bin/env python
"""Train or fine-tune Stable Diffusion 2.x on image-text data (one device, or data parallel under msrun).

    python examples/stable_diffusion_v2/train_text_to_image.py --config configs/train/<recipe>.yaml [--flag value ...]

The yaml holds defaults, flags override them; the resolved config is saved as <output_dir>/config.yaml
(rerun it with --config). Outputs in <output_dir>: checkpoints/checkpoint-<step>/ (resumable),
metrics.csv, samples/step_<step>.png, train.log, and at the end model.ckpt (the trained weights under
the original SD names, EMA weights when --use_ema) or lora.ckpt (adapter weights only, with --use_lora),
and model_config.yaml (the model config that goes with them; after --train_target vae, with scale_factor
set from the latents' std). Only rank 0 writes; every rank logs a digest of its final weights (equal digests: ranks in sync).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Iterator, Sequence

import yaml

from mindone.train.options import TRAIN_OPTIONS
from mindone.utils.atomic import atomic_write_text
from mindone.utils.cli import UserError, run_main
from mindone.utils.config import resolve_config, save_config
from mindone.utils.logging import setup_logging

logger = logging.getLogger("train_text_to_image")


def check_args(args) -> None:
    """Refuse inconsistent settings before any work starts (one line naming the flag)."""
    if not args.data_path:
        raise UserError("--data_path: required (the dataset root holding the annotation csv files)")
    positive = ("resolution", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                "validation_steps", "logging_steps", "num_train_epochs", "lora_rank")
    for name in positive:
        if getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise UserError(f"--max_train_steps {args.max_train_steps}: must be at least 1")
    if not 0.0 <= args.caption_dropout < 1.0:
        raise UserError(f"--caption_dropout {args.caption_dropout}: must be in [0, 1)")
    if args.shuffle_buffer < 1:
        raise UserError(f"--shuffle_buffer {args.shuffle_buffer}: must be at least 1")
    if not args.max_member_mb > 0:
        raise UserError(f"--max_member_mb {args.max_member_mb}: must be positive")
    if args.learning_rate <= 0:
        raise UserError(f"--learning_rate {args.learning_rate}: must be positive")
    if args.aspect_ratio_buckets:
        if args.dataset_type == "latents":
            raise UserError("--aspect_ratio_buckets: cached latents have one fixed size; train on the images")
        bucket_spec(args)  # a bad combination of sides and step fails here, before anything is written
    if args.dataset_type == "latents" and (args.train_target == "vae" or args.random_flip):
        raise UserError("--dataset_type latents: cached latents train the UNet on fixed, unflipped crops: "
                        "drop --train_target vae / --random_flip, or train on the images")
    if not args.input_perturbation >= 0:
        raise UserError(f"--input_perturbation {args.input_perturbation}: must be 0 (off) or positive")
    if args.train_target == "vae" and (args.input_perturbation or args.gradient_checkpointing):
        raise UserError("--train_target vae: --input_perturbation and --gradient_checkpointing apply to the UNet")
    if args.train_target == "vae" and (args.use_lora or args.train_text_encoder):
        raise UserError("--train_target vae trains the autoencoder alone: drop --use_lora / --train_text_encoder")
    if args.use_lora and args.train_text_encoder:
        raise UserError("--train_text_encoder with --use_lora: use --lora_text_encoder to adapt the text tower")
    if args.train_target == "unet":
        from mindone.models.config import load_model_config

        trained_model_config(args, load_model_config(args.model_config))


def trained_model_config(args, model_cfg: dict) -> dict:
    """The model config with the flags' training target and schedule (--prediction_type, --zero_terminal_snr)."""
    from mindone.errors import ConfigError
    from mindone.models.stable_diffusion import check_terminal_snr

    if args.prediction_type:
        model_cfg = dict(model_cfg, parameterization="v" if args.prediction_type == "v_prediction" else "eps")
    if args.zero_terminal_snr is not None:
        model_cfg = dict(model_cfg, zero_terminal_snr=args.zero_terminal_snr)
    try:
        check_terminal_snr(model_cfg.get("parameterization", "eps"), bool(model_cfg.get("zero_terminal_snr")))
    except ConfigError as err:
        raise UserError(f"--zero_terminal_snr: {err}; add --prediction_type v_prediction") from None
    return model_cfg


def build_model(args, model_cfg: dict):
    """The LatentDiffusion with pretrained weights (or random init), frozen parts, LoRA and precision set."""
    from mindone.models.config import build_model as build_ldm
    from mindone.models.config import set_compute_dtype
    from mindone.train.lora import inject_lora, mark_only_lora_trainable

    if args.gradient_checkpointing:  # a training setting: the saved model config keeps the yaml's value
        model_cfg = dict(model_cfg, model=dict(model_cfg["model"], unet=dict(model_cfg["model"]["unet"],
                                                                               use_recompute=True)))
    model = build_ldm(model_cfg)
    if args.pretrained_model_path:
        from mindone.convert import load_sd_weights

        report = load_sd_weights(model, args.pretrained_model_path)
        logger.info("loaded %s (%s)", args.pretrained_model_path, report)
    else:
        logger.info("no --pretrained_model_path: training from random initialisation")
        if args.vae_init_logvar is not None:
            from mindone.train.vae_loss import init_posterior_logvar

            init_posterior_logvar(model.first_stage_model, args.vae_init_logvar)
            logger.info("posterior log-variance initialised at %g (--vae_init_logvar)", args.vae_init_logvar)

    trained = ("first_stage_model.",) if args.train_target == "vae" else (
        ("model.diffusion_model.", "cond_stage_model.") if args.train_text_encoder else ("model.diffusion_model.",))
    for name, param in model.parameters_and_names():
        param.requires_grad = name.startswith(trained)
    if args.use_lora:
        inject_lora(model, rank=args.lora_rank, alpha=args.lora_alpha, text_encoder=args.lora_text_encoder)
        mark_only_lora_trainable(model)
    set_compute_dtype(model, {"no": "fp32"}.get(args.mixed_precision, args.mixed_precision))
    return model


def bucket_spec(args):
    """The aspect-ratio buckets the flags ask for (None without --aspect_ratio_buckets)."""
    if not args.aspect_ratio_buckets:
        return None
    from mindone.data.buckets import BucketSpec
    from mindone.models.config import load_model_config, size_multiple

    step, multiple = args.bucket_step, size_multiple(load_model_config(args.model_config))
    if step % multiple:
        raise UserError(f"--bucket_step {step}: bucket sides must be multiples of {multiple} for {args.model_config} "
                        "(the VAE's and the UNet's downsampling)")
    low = args.bucket_min_side or max(step, args.resolution // 2 // step * step)
    return BucketSpec(resolution=args.resolution, min_side=low, max_side=args.bucket_max_side or 2 * args.resolution,
                      step=step, max_aspect=args.bucket_max_aspect)


def data_config(args, rank: int, world_size: int) -> dict:
    """The fields of :class:`mindone.data.loader_config.LoaderConfig` these flags give: one source for the
    epoch-length plan and the training stream."""
    from mindone.train.options import DATA_FILTERS

    filters = {name: getattr(args, f"filter_{name}") for name, _ in DATA_FILTERS
               if getattr(args, f"filter_{name}") is not None}
    config = dict(
        dataset_type=args.dataset_type, data_path=args.data_path, shard_root=args.shard_root or None,
        allow_outside_data_root=args.allow_outside_data_root, max_member_bytes=int(args.max_member_mb * (1 << 20)),
        image_size=args.resolution, random_crop=not args.center_crop, random_flip=args.random_flip,
        caption_dropout=args.caption_dropout, filters=filters, rank=rank, world_size=world_size,
        num_workers=args.dataloader_num_workers, batch_size=args.train_batch_size, seed=args.seed, shuffle=True,
        shuffle_buffer=args.shuffle_buffer, uneven=args.uneven_policy, buckets=bucket_spec(args),
        bucket_window=args.bucket_window,
    )
    if args.dataset_type == "latents":
        from mindone.data.latents import LatentInfo

        info = LatentInfo.of_data_path(args.data_path)
        config.update(latent_shape=info.channels_hw, cached_text=uses_cached_text(args, info))
    return config


def uses_cached_text(args, info) -> bool:
    """Cached text embeddings stand in for the text encoder while it is frozen (no gradient, no adapters)."""
    return bool(info.text_width) and not (args.train_text_encoder or (args.use_lora and args.lora_text_encoder))


def batch_stream(args, tokenizer, rank: int, world_size: int, start_batch: int,
                 steps_per_epoch: int) -> Iterator[tuple[int, object, object]]:
    """(epoch, images, token_ids) batches from ``start_batch`` on, across epochs, never decoding skipped ones."""
    from mindone.data.loader import build_dataset
    from mindone.data.workers import no_usable_sample_line

    epoch, offset = divmod(start_batch, steps_per_epoch)
    while True:
        dataset, _ = build_dataset(tokenizer=tokenizer, start_step=offset, epoch=epoch,
                                   **data_config(args, rank, world_size))
        try:
            for images, token_ids in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
                yield epoch, images, token_ids
        except RuntimeError as err:
            line = no_usable_sample_line(err)
            if line is None:
                raise
            raise UserError(f"--data_path {args.data_path}: {line}") from None
        epoch, offset = epoch + 1, 0


def write_scaled_model_config(model, model_cfg: dict, batches, path: Path, n_batches: int = 4) -> None:
    """The model config with ``scale_factor`` from a few training batches (see ``latent_scale_factor``), for
    the UNet run that follows an autoencoder run."""
    from mindone.train.vae_loss import latent_scale_factor

    std, factor = latent_scale_factor(model.first_stage_model, [next(batches)[1] for _ in range(n_batches)])
    atomic_write_text(path, yaml.safe_dump(dict(model_cfg, scale_factor=factor), sort_keys=False))
    logger.info("latent std %.4f: wrote %s with scale_factor %g (was %g); train the UNet with --model_config %s",
                std, path, factor, model_cfg.get("scale_factor", 0.18215), path)


# Options that change the compiled train graph (for the compile-cache key); data and schedule options do not.
GRAPH_OPTIONS = ("model_config", "resolution", "train_batch_size", "gradient_accumulation_steps", "mixed_precision",
                 "prediction_type", "zero_terminal_snr", "snr_gamma", "max_grad_norm", "gradient_checkpointing",
                 "input_perturbation", "use_ema", "train_text_encoder", "use_lora", "lora_rank", "lora_alpha",
                 "lora_text_encoder", "train_target", "mode", "device_target", "distributed", "dataset_type")


def graph_fingerprint(args) -> str:
    """A string naming the train graph these options build (model config by path and content)."""
    from mindone.models.config import load_model_config

    parts = [f"{name}={getattr(args, name)!r}" for name in GRAPH_OPTIONS]
    if args.dataset_type == "latents":  # cached text embeddings change the graph's inputs
        parts.append(f"cached_text={data_config(args, 0, 1).get('cached_text')}")
    return ";".join(parts + [repr(load_model_config(args.model_config))])


def weights_digest(model) -> str:
    """sha256 over the trainable weights' names and bytes (equal on every rank of a healthy data-parallel run)."""
    digest = hashlib.sha256()
    for name, p in model.parameters_and_names():
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.asnumpy().tobytes())
    return digest.hexdigest()[:16]


def train(args, dev) -> None:
    from mindspore import Tensor

    from mindone.data.loader import steps_per_epoch as plan_steps_per_epoch
    from mindone.diffusion.schedule import NoiseSchedule
    from mindone.models.config import load_model_config
    from mindone.models.tokenizer import SDTokenizer
    from mindone.train.checkpoint import CheckpointManager, TrainMeta, named, save_parameters
    from mindone.train.ema import EMA
    from mindone.train.lora import save_lora
    from mindone.train.loss import DiffusionLoss, latent_shape, sample_step_noise
    from mindone.train.metrics import MetricsLogger
    from mindone.train.optim import build_lr_schedule, build_optimizer, scaled_learning_rate
    from mindone.train.tensorboard import LOG_DIR as TENSORBOARD_DIR
    from mindone.train.tensorboard import TensorBoardLogger
    from mindone.train.train_step import LossScaler, TrainStep
    from mindone.train.vae_loss import AutoencoderLoss
    from mindone.train.validation import Validator

    out = Path(args.output_dir)
    model_cfg = trained_model_config(args, load_model_config(args.model_config))
    shape = latent_shape(model_cfg, args.resolution)
    tokenizer = SDTokenizer(args.vocab_path)
    if args.dataset_type == "latents":
        from mindone.data.latents import LatentInfo

        LatentInfo.of_data_path(args.data_path).check(resolution=args.resolution, latent_shape=shape)

    # Data: the per-rank epoch length fixes the step count and maps a global step to a data position.
    steps_per_epoch = plan_steps_per_epoch(**data_config(args, dev.rank, dev.world_size))
    if steps_per_epoch < 1:
        raise UserError(f"--data_path {args.data_path}: fewer samples than one batch of "
                        f"{args.train_batch_size} per rank ({dev.world_size} ranks)")
    accum = args.gradient_accumulation_steps
    max_steps = args.max_train_steps or args.num_train_epochs * math.ceil(steps_per_epoch / accum)

    model = build_model(args, model_cfg)
    trainable = model.trainable_params()
    lr = scaled_learning_rate(args.learning_rate, args.scale_lr, args.train_batch_size, accum, dev.world_size)
    lr_schedule = build_lr_schedule(args.lr_scheduler, lr, args.lr_warmup_steps, max_steps)
    optimizer = build_optimizer(trainable, lr_schedule, args.adam_weight_decay, args.adam_beta1, args.adam_beta2)
    ema = EMA(trainable, max_decay=args.ema_decay) if args.use_ema else None
    fp16 = args.mixed_precision == "fp16"
    scaler = LossScaler(args.loss_scale if fp16 else 1.0, dynamic=fp16, window=args.loss_scale_window)
    if args.train_target == "vae":
        loss_cell = AutoencoderLoss(model, args.vae_kl_weight)
    else:
        # Gradients must reach the text tower when it is trained, in full or through its LoRA adapters.
        text_grads = args.train_text_encoder or (args.use_lora and args.lora_text_encoder)
        loss_cell = DiffusionLoss(model, NoiseSchedule(zero_terminal_snr=model.zero_terminal_snr),
                                  model.parameterization, args.snr_gamma, text_grads,
                                  from_moments=args.dataset_type == "latents",
                                  cached_text=data_config(args, 0, 1).get("cached_text", False))
    step_fn = TrainStep(loss_cell, optimizer, scaler, accum, args.max_grad_norm, ema)
    state = list(model.parameters_and_names()) + named(step_fn.state_parameters())

    ckpts = CheckpointManager(out, args.checkpoints_total_limit)
    global_step = 0
    resume = ckpts.resolve(args.resume_from_checkpoint)
    if dev.is_main:
        ckpts.remove_temporaries()
    if resume is not None:
        meta = ckpts.load(resume, state)
        global_step = meta.global_step
        for key, value, saved in meta.position_changes(world_size=dev.world_size, train_batch_size=args.train_batch_size,
                                                       gradient_accumulation_steps=accum):
            logger.warning("resuming with %s=%s (checkpoint: %s): the data position is approximate", key, value, saved)
        logger.info("resumed from %s at step %d", resume, global_step)
    elif args.resume_from_checkpoint == "latest":
        logger.info("no checkpoint in %s: starting from step 0", ckpts.root)

    logger.info("%d trainable parameters, %d steps of %d x %d x %d images, %d batches per epoch and rank",
                sum(int(p.size) for p in trainable), max_steps, args.train_batch_size, accum, dev.world_size,
                steps_per_epoch)
    tensorboard = None
    if dev.is_main and args.report_to == "tensorboard":
        tensorboard = TensorBoardLogger(out / TENSORBOARD_DIR, start_step=global_step)
    metrics = MetricsLogger(out, max_steps, global_step, enabled=dev.is_main, tensorboard=tensorboard)
    validate = None
    if dev.is_main and args.validation_prompts and args.train_target == "unet":
        validate = Validator(model, tokenizer, args.validation_prompts, out, args.resolution, ema,
                             args.validation_inference_steps, args.validation_guidance_scale, args.seed,
                             tensorboard=tensorboard)
    batches = batch_stream(args, tokenizer, dev.rank, dev.world_size, global_step * accum, steps_per_epoch)
    images_per_step = args.train_batch_size * accum * dev.world_size
    down = args.resolution // shape[1]  # the VAE's downsampling factor
    compiled: set = set()  # image sizes whose train graph is compiled (one per bucket size in use)
    try:
        while global_step < max_steps:
            started = time.perf_counter()
            losses = []
            for micro in range(accum):
                epoch, images, token_ids = next(batches)
                batch_shape = shape  # cached latents: one fixed size, given in latent pixels
                if args.dataset_type != "latents":  # images: their size (a bucket's) gives the latents'
                    batch_shape = (shape[0], images.shape[2] // down, images.shape[3] // down)
                    if images.shape[2:] not in compiled:  # a new size: GRAPH_MODE compiles its graph
                        compiled.add(images.shape[2:])
                        logger.info("batch size %dx%d: compiling its train graph (%d so far)", images.shape[3],
                                    images.shape[2], len(compiled))
                noise = sample_step_noise(args.seed, dev.rank, global_step, micro, images.shape[0], batch_shape,
                                          noise_offset=args.noise_offset,
                                          input_perturbation=args.input_perturbation)
                result = step_fn(Tensor(images), Tensor(token_ids), *(Tensor(x) for x in noise.inputs()))
                losses.append(result.loss)
            global_step += 1
            elapsed = time.perf_counter() - started
            loss = sum(losses) / len(losses)
            if result.overflow:
                logger.warning("step %d: non-finite gradients, update skipped (loss scale now %g)",
                               global_step, float(scaler.loss_scale.asnumpy()))
            metrics.advance(1, loss=loss, lr=_current_lr(optimizer, lr_schedule))
            if global_step % args.logging_steps == 0 or global_step == max_steps or global_step == 1:
                metrics.log(dict(step=global_step, epoch=epoch, loss=loss, lr=_current_lr(optimizer, lr_schedule),
                                 loss_scale=result.loss_scale, grad_norm=result.grad_norm,
                                 overflow=int(result.overflow), step_time_s=elapsed,
                                 images_per_s=images_per_step / elapsed))
            if dev.is_main and (global_step % args.checkpointing_steps == 0 or global_step == max_steps):
                ckpts.save(state, TrainMeta(
                    global_step=global_step, batches_seen=global_step * accum, epoch=epoch,
                    steps_per_epoch=steps_per_epoch, world_size=dev.world_size, train_batch_size=args.train_batch_size,
                    gradient_accumulation_steps=accum, seed=args.seed, model_config=args.model_config,
                    pretrained_model_path=args.pretrained_model_path, use_lora=args.use_lora))
            if validate is not None and (
                    global_step % args.validation_steps == 0 or global_step == max_steps):
                validate(global_step)
    finally:
        metrics.close()

    logger.info("final weights digest %s (rank %d)", weights_digest(model), dev.rank)
    if dev.is_main:
        if ema is not None:
            ema.copy_to_weights()
        if args.use_lora:
            path = save_lora(model, out / "lora.ckpt")
        else:
            path = save_parameters(list(model.parameters_and_names()), out / "model.ckpt")
        logger.info("saved %s", path)
        # The model config that goes with model.ckpt (for text_to_image.py --config, or the next run).
        if args.train_target == "vae":
            write_scaled_model_config(model, model_cfg, batches, out / "model_config.yaml")
        else:
            # The trained parameterization and schedule (flags applied) go with the weights.
            atomic_write_text(out / "model_config.yaml", yaml.safe_dump(model_cfg, sort_keys=False))


def _current_lr(optimizer, schedule: Sequence[float]) -> float:
    """The learning rate of the last applied optimizer step (the optimizer's step counter indexes the schedule)."""
    applied = int(optimizer.global_step.asnumpy().reshape(-1)[0])
    return schedule[min(max(applied - 1, 0), len(schedule) - 1)]


def main(argv: Sequence[str] | None = None) -> int:
    args = resolve_config(TRAIN_OPTIONS, argv, __doc__.split("\n\n")[0], prog="train_text_to_image.py")
    check_args(args)
    from mindone.utils.device import init_device, scope_compile_cache

    scope_compile_cache(graph_fingerprint(args))
    dev = init_device(args.mode, args.device_target, args.distributed, args.seed, args.max_device_memory,
                      args.jit_level)
    out = Path(args.output_dir)
    if dev.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(args, TRAIN_OPTIONS, out / "config.yaml")
    setup_logging(dev.rank, dev.world_size, log_file=str(out / "train.log") if dev.is_main else None)
    logger.info("%s, %s mode, rank %d of %d", dev.device_target, dev.mode, dev.rank, dev.world_size)
    train(args, dev)
    return 0


if __name__ == "__main__":
    run_main(main)
