"""Train-step time with and without cached latents (encode_latents.py), side by side, MindSpore on CPU.

Both sides run mindone's TrainStep over DiffusionLoss with the same weights, batch and host-drawn noise:
"images" encodes the batch with the frozen VAE inside the step (as training on an image dataset does),
"cached" takes the posterior moments instead (``--dataset_type latents``) and skips the VAE encoder. Each
side runs in its own process, in ``--rounds`` alternating rounds; the median step of each side's best
round counts. ``--full`` runs the full-size SD 2.x-base config (seeded random weights, SGD as in
bench_train.py --full, batch 1) at ``--resolution``; the default is the tiny config at 32 px.

    .venv/bin/python benchmarks/bench_latents.py [--batch 8] [--steps 20] [--rounds 2]
    .venv/bin/python benchmarks/bench_latents.py --full --resolution 256 --batch 1 --steps 2 --warmup 1 --rounds 1
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bench_train import freeze_all_but_unet, plain_sgd
from harness import best_round, forward_flags, interleaved_rounds, load_average, print_result, spawn_worker, time_steps


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="images per step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first, incl. compile (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")
    p.add_argument("--full", action="store_true", help="full-size SD 2.x-base instead of the tiny config")
    p.add_argument("--resolution", type=int, default=None, help="image size (default: 32 tiny, 256 --full)")
    p.add_argument("--side", choices=("images", "cached"), help=argparse.SUPPRESS)
    return p.parse_args()


def run_side(args: argparse.Namespace) -> dict:
    import mindspore as ms
    from mindspore.nn.utils import no_init_parameters

    from mindone.diffusion.schedule import NoiseSchedule
    from mindone.models.config import build_model, load_model_config
    from mindone.train.loss import DiffusionLoss, latent_shape, sample_step_noise
    from mindone.train.optim import build_optimizer
    from mindone.train.train_step import TrainStep

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    ms.set_seed(0)
    cfg = load_model_config("v2-base-512-eps" if args.full else "tiny")
    with no_init_parameters():
        model = build_model(cfg)
    model.init_parameters_data()
    freeze_all_but_unet(model)
    steps = args.warmup + args.steps + 1
    optimizer = (plain_sgd(model.trainable_params(), 1e-5) if args.full else
                 build_optimizer(model.trainable_params(), [1e-4] * steps, weight_decay=1e-2))
    cached = args.side == "cached"
    shape = latent_shape(cfg, args.resolution)
    rng = np.random.default_rng(0)
    if cached:  # moments as a trained SD VAE gives them: means of unit scale, a near-deterministic posterior
        first = np.concatenate([rng.standard_normal((args.batch, *shape)),
                                np.full((args.batch, *shape), -10.0)], axis=1).astype(np.float32)
    else:
        first = rng.uniform(-1, 1, (args.batch, 3, args.resolution, args.resolution)).astype(np.float32)
    ids = ms.Tensor(rng.integers(0, 49408, (args.batch, 77)).astype(np.int32))
    train_step = TrainStep(DiffusionLoss(model, NoiseSchedule(), from_moments=cached), optimizer, None, 1, 1.0, None)
    inputs = ms.Tensor(first)

    def step(i: int) -> None:
        n = sample_step_noise(0, 0, i, 0, args.batch, shape)
        train_step(inputs, ids, ms.Tensor(n.noise), ms.Tensor(n.posterior_noise), ms.Tensor(n.timesteps))

    first_s, per_step = time_steps(step, args.warmup, args.steps)
    return {"first": first_s, "step": per_step}


def spawn(args: argparse.Namespace, side: str) -> dict:
    settings = forward_flags(args, ("batch", "steps", "warmup", "threads", "resolution", "full"))
    return spawn_worker(__file__, ["--side", side, *settings], label=f"{side} side", env=dict(os.environ, GLOG_v="3"))


def main() -> None:
    args = parse_args()
    args.resolution = args.resolution or (256 if args.full else 32)
    if args.side:
        print_result(run_side(args))
        return
    best = best_round(interleaved_rounds(lambda side: spawn(args, side), ("images", "cached"), args.rounds))
    config = "full-size SD 2.x-base, SGD" if args.full else "tiny config, AdamW"
    print(f"train step with and without cached latents, {config}, batch {args.batch} x {args.resolution} px, "
          f"{args.threads} thread(s), MindSpore GRAPH_MODE on CPU, best of {args.rounds} rounds of "
          f"{args.steps} steps (median); load average {load_average()}")
    print(f"{'':34s}{'images/s':>10s}{'ms/step':>10s}{'first step s':>14s}")
    for side, label in (("images", "VAE encode in the step (images)"), ("cached", "cached latents (moments)")):
        r = best[side]
        print(f"{label:34s}{args.batch / r['step']:10.2f}{r['step'] * 1e3:10.1f}{r['first']:14.2f}")
    print(f"ratio cached / images: {best['images']['step'] / best['cached']['step']:.2f}x images/s")


if __name__ == "__main__":
    main()
