"""SD training-step speed on CPU: MindSpore GRAPH_MODE (mindone.train) vs a diffusers/torch step, same config.

Each side runs one full text-to-image training step of the tiny SD 2.x config (configs/model/tiny.yaml,
32 px images): frozen VAE encode (posterior sample) x 0.18215, frozen text encode, noise and timesteps,
UNet forward + backward, MSE on eps, global-norm clipping at 1.0 and an AdamW update of the UNet. Both
start from the same weights (a diffusers model saved to a temporary folder, loaded into MindSpore by
mindone.convert). torch runs the loop of diffusers' train_text_to_image.py (DDPMScheduler.add_noise,
torch.optim.AdamW, clip_grad_norm_); MindSpore runs mindone.train.TrainStep over DiffusionLoss, with
the step's noise drawn on the host as the training script does. Each framework runs in its own process
with the same thread count, in ``--rounds`` alternating rounds; the median step of the best round counts.

``--config wide`` is a compute-bound variant of the same model for the same comparison: 64 px images
(16x16 latents), UNet width 64 (head width 16), text width 64, batch 16 by default; its arithmetic per
kernel is ~8-16x the tiny config's, so per-kernel launch costs matter far less.

``--full`` instead times one full-size SD 2.x-base training step at 256 px (batch 1, seeded random weights,
the same TrainStep including the frozen VAE and text encodes) in MindSpore GRAPH_MODE or PYNATIVE and
reports build, first-step (compile + run) and second-step times, peak memory (RSS) and the losses; it stops
itself above ``--max-rss-gb``. It uses a stateless SGD so that the measurement fits a shared 24 GiB machine;
AdamW adds two float32 moments per UNet weight (+6.9 GB).

    .venv/bin/python benchmarks/bench_train.py [--config tiny|wide] [--batch 8] [--steps 20] [--threads 1] [--rounds 2]
    .venv/bin/python benchmarks/bench_train.py --full [--resolution 256] [--mode graph|pynative]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np

from harness import (best_round, forward_flags, interleaved_rounds, load_average, print_result, saved_reference_models,
                     spawn_worker, time_steps)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=tuple(BENCH_CONFIGS), default="tiny",
                        help="model size and resolution (default: %(default)s)")
    parser.add_argument("--batch", type=int, help="images per step (default: 8 for tiny, 16 for wide)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per framework (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, incl. compile (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each framework (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating torch/MindSpore rounds (default: %(default)s)")
    parser.add_argument("--full", action="store_true", help="time one full-size SD 2.x-base step instead")
    parser.add_argument("--resolution", type=int, default=256, help="image size for --full (default: %(default)s)")
    parser.add_argument("--mode", choices=("graph", "pynative"), default="graph",
                        help="MindSpore mode for --full (default: %(default)s)")
    parser.add_argument("--jit-level", choices=("O0", "O1", "O2"), help="GRAPH_MODE jit_level for --full")
    parser.add_argument("--memory-optimize", choices=("O0", "O1"),
                        help="--full: mindspore.runtime.set_memory(optimize_level=...), pool growth 1 GB")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="--full: recompute the UNet's blocks in the backward pass (the trainer's "
                        "--gradient_checkpointing)")
    parser.add_argument("--max-rss-gb", type=float, default=21.0,
                        help="--full stops itself above this resident memory (default: %(default)s)")
    parser.add_argument("--worker", choices=("torch", "mindspore"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    return parser.parse_args()


# name -> (changes to configs/model/tiny.yaml, image size, default batch)
BENCH_CONFIGS = {
    "tiny": ({}, 32, 8),
    "wide": ({"unet": {"model_channels": 64, "num_head_channels": 16, "context_dim": 64},
              "text_encoder": {"width": 64}}, 64, 16),
}


def bench_config(name: str) -> tuple[dict, int]:
    """(model config dict, image size) of a ``--config`` name."""
    from mindone.models.config import load_model_config

    cfg = load_model_config("tiny")
    changes, size, _ = BENCH_CONFIGS[name]
    for part, values in changes.items():
        cfg["model"][part].update(values)
    cfg["image_size"] = size
    return cfg, size


def batch_inputs(batch: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"images": rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32),
            "ids": rng.integers(0, 49408, (batch, 77)).astype(np.int32)}


def bench_torch(weights: str, data: dict, warmup: int, steps: int, threads: int,
                config: str = "tiny") -> tuple[float, float, float]:  # the config is in the saved weights
    import diffusers
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_pretrained(Path(weights) / "unet")
    vae = diffusers.AutoencoderKL.from_pretrained(Path(weights) / "vae")
    text = transformers.CLIPTextModel.from_pretrained(Path(weights) / "text_encoder")
    vae.requires_grad_(False)
    text.requires_grad_(False)
    unet.train()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=1e-2)
    images, ids = torch.from_numpy(data["images"]), torch.from_numpy(data["ids"].astype(np.int64))
    last = {}

    def step(_: int) -> None:
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample() * 0.18215
            context = text(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],))
        pred = unet(sched.add_noise(latents, noise, t), t, context).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        last["loss"] = float(loss.detach())

    first, per_step = time_steps(step, warmup, steps)
    return first, per_step, last["loss"]


def mindspore_step(model, optimizer, data: dict, latent: tuple[int, int, int]):
    """A callable running one mindone training step on ``data`` (the training script's inner loop)."""
    import mindspore as ms

    from mindone.diffusion.schedule import NoiseSchedule
    from mindone.train.loss import DiffusionLoss, sample_step_noise
    from mindone.train.train_step import TrainStep

    train_step = TrainStep(DiffusionLoss(model, NoiseSchedule()), optimizer, None, 1, 1.0, None)
    images, ids = ms.Tensor(data["images"]), ms.Tensor(data["ids"])
    last = {}

    def step(i: int) -> None:
        n = sample_step_noise(0, 0, i, 0, data["images"].shape[0], latent)
        out = train_step(images, ids, ms.Tensor(n.noise), ms.Tensor(n.posterior_noise), ms.Tensor(n.timesteps))
        last["loss"], last["grad_norm"], last["overflow"] = out.loss, out.grad_norm, out.overflow

    return step, last


def freeze_all_but_unet(model) -> None:
    for name, param in model.parameters_and_names():
        param.requires_grad = name.startswith("model.diffusion_model.")


def bench_mindspore(weights: str, data: dict, warmup: int, steps: int, threads: int,
                    config: str = "tiny") -> tuple[float, float, float]:
    import mindspore as ms

    from mindone.convert import load_sd_weights
    from mindone.models.config import build_model
    from mindone.train.loss import latent_shape
    from mindone.train.optim import build_optimizer

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(threads)
    cfg, _ = bench_config(config)
    model = build_model(cfg)
    load_sd_weights(model, weights)
    freeze_all_but_unet(model)
    optimizer = build_optimizer(model.trainable_params(), [1e-4] * (warmup + steps + 1), weight_decay=1e-2)
    step, last = mindspore_step(model, optimizer, data, latent_shape(cfg, data["images"].shape[-1]))
    first, per_step = time_steps(step, warmup, steps)
    return first, per_step, last["loss"]


def plain_sgd(params, lr: float):
    """``w -= lr * g`` with no optimizer state. ``nn.SGD`` clones every weight twice (``accum`` and
    ``stat``, even at momentum 0): +6.9 GB for the full-size UNet, which this machine does not have."""
    import mindspore as ms
    from mindspore import nn, ops

    update = ops.MultitypeFuncGraph("plain_sgd_update")

    @update.register("Tensor", "Tensor", "Tensor")
    def _(lr_value, param, grad):
        return ops.assign(param, param - lr_value * grad.astype(param.dtype))

    class PlainSGD(nn.Optimizer):
        def __init__(self):
            super().__init__(lr, params)
            self.hyper_map = ops.HyperMap()

        def construct(self, gradients):
            lr_value = self.get_lr().astype(ms.float32)
            return self.hyper_map(ops.partial(update, lr_value), self._parameters, gradients)

    return PlainSGD()


class RssWatch:
    """Samples this process's resident memory every 0.2 s; exits the process above ``limit_gb``.

    The machine has no swap: past ~21 GB the kernel would OOM-kill this (or a neighbour) instead.
    """

    def __init__(self, limit_gb: float) -> None:
        import threading

        self.limit = limit_gb
        self.peak = 0.0
        self.stage = "start"
        self.stage_peaks: dict[str, float] = {}
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def rss_gb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 1e9

    def _run(self) -> None:
        while True:
            rss = self.rss_gb()
            self.peak = max(self.peak, rss)
            self.stage_peaks[self.stage] = max(self.stage_peaks.get(self.stage, 0.0), rss)
            if rss > self.limit:
                print(f"RSS {rss:.1f} GB > {self.limit} GB during {self.stage}: stopping", flush=True)
                os._exit(3)
            time.sleep(0.2)

    def enter(self, stage: str) -> None:
        self.stage = stage
        print(f"[{time.strftime('%H:%M:%S')}] {stage} (RSS {self.rss_gb():.1f} GB)", flush=True)


def bench_full(resolution: int, mode: str, jit_level: str | None, memory_optimize: str | None,
               max_rss_gb: float, gradient_checkpointing: bool = False) -> None:
    """One full-size SD 2.x-base training step (VAE encode + text encode + UNet fwd/bwd + clip + SGD)."""

    import mindspore as ms
    from mindspore.nn.utils import no_init_parameters

    from mindone.models.config import build_model, load_model_config
    from mindone.train.loss import latent_shape

    watch = RssWatch(max_rss_gb)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    if jit_level:
        ms.set_context(jit_config={"jit_level": jit_level})
    if memory_optimize:
        ms.runtime.set_memory(increase_size="1GB", optimize_level=memory_optimize)
    ms.set_seed(0)  # the same random weights in every run and mode
    np.random.seed(0)
    cfg = load_model_config("v2-base-512-eps")
    cfg["model"]["unet"]["use_recompute"] = gradient_checkpointing
    watch.enter("build")
    start = time.perf_counter()
    with no_init_parameters():  # no weight memory yet: each parameter is filled once, below
        model = build_model(cfg)
    built = time.perf_counter() - start
    watch.enter("init")
    start = time.perf_counter()
    model.init_parameters_data()  # random weights (the checkpoint would be loaded here instead)
    initialised = time.perf_counter() - start
    freeze_all_but_unet(model)
    optimizer = plain_sgd(model.trainable_params(), 1e-5)
    step, last = mindspore_step(model, optimizer, batch_inputs(1, resolution), latent_shape(cfg, resolution))
    times = []
    first_stage = "first step (compile + run)" if mode == "graph" else "first step"
    for i, stage in enumerate((first_stage, "second step")):
        watch.enter(stage)
        start = time.perf_counter()
        step(i)
        loss = float(last["loss"])
        times.append(time.perf_counter() - start)
        print(f"  {stage}: {times[-1]:.1f} s, loss {loss:.4f}, grad norm {last['grad_norm']:.4g}, "
              f"overflow {last['overflow']}", flush=True)
    watch.enter("done")
    peak_gb = max(watch.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)
    label = "GRAPH_MODE" + (f" jit_level {jit_level}" if jit_level else "") if mode == "graph" else "PYNATIVE"
    label += f", memory optimize_level {memory_optimize}" if memory_optimize else ""
    label += ", gradient checkpointing" if gradient_checkpointing else ""
    print(f"full-size SD 2.x-base training step, {resolution} px, batch 1, MindSpore {ms.__version__} {label} "
          f"on CPU (VAE encode + text encode + UNet fwd/bwd + clip 1.0 + SGD)")
    print(f"  build (no_init_parameters): {built:.1f} s   init weights: {initialised:.1f} s   "
          f"{first_stage}: {times[0]:.1f} s   second step: {times[1]:.1f} s")
    print("  peak RSS: " + f"{peak_gb:.1f} GB (" + ", ".join(f"{k} {v:.1f}" for k, v in watch.stage_peaks.items()
                                                          if k not in ("start", "done")) + ")"
          f"   loss: {loss:.4f}   load average: {load_average()}")


def run_worker(args: argparse.Namespace) -> None:
    data = batch_inputs(args.batch, bench_config(args.config)[1])
    bench = bench_torch if args.worker == "torch" else bench_mindspore
    result = bench(args.weights, data, args.warmup, args.steps, args.threads, config=args.config)
    print_result(dict(zip(("first", "step", "loss"), result)))


def spawn(args: argparse.Namespace, worker: str, weights: str) -> dict:
    settings = forward_flags(args, ("config", "batch", "steps", "warmup", "threads"))
    return spawn_worker(__file__, ["--worker", worker, "--weights", weights, *settings], label=f"{worker} worker")


def main() -> None:
    args = parse_args()
    if args.batch is None:
        args.batch = BENCH_CONFIGS[args.config][2]
    if args.worker:
        run_worker(args)
        return
    if args.full:
        bench_full(args.resolution, args.mode, args.jit_level, args.memory_optimize, args.max_rss_gb,
                   args.gradient_checkpointing)
        return
    cfg, size = bench_config(args.config)
    with saved_reference_models(cfg) as (folder, _):
        rounds = interleaved_rounds(lambda worker: spawn(args, worker, folder), ("torch", "mindspore"), args.rounds)
    results = best_round(rounds)
    print(f"SD training step (VAE encode + text encode + UNet fwd/bwd + clip + AdamW), {args.config} config, "
          f"batch {args.batch} x {size} px, {args.threads} thread(s), best of {args.rounds} rounds of "
          f"{args.steps} steps (median), CPU, load average {load_average()}")
    print(f"{'':30s}{'images/s':>10s}{'ms/step':>10s}{'first step s':>14s}{'last loss':>12s}")
    for worker, label in (("torch", "diffusers/torch (eager)"), ("mindspore", "mindone MindSpore GRAPH_MODE")):
        r = results[worker]
        print(f"{label:30s}{args.batch / r['step']:10.1f}{r['step'] * 1e3:10.1f}{r['first']:14.2f}{r['loss']:12.4f}")
    print(f"ratio MindSpore / torch: {results['torch']['step'] / results['mindspore']['step']:.2f}x images/s")


if __name__ == "__main__":
    main()
