"""UNet training-step speed (forward + backward) on CPU: MindSpore graph mode vs diffusers/torch, same shapes.

Both sides run the tiny SD 2.x-shaped config (configs/model/tiny.yaml: 3 levels, linear transformer
projections, cross-attention on a 77-token context) with the same weights (a diffusers model saved to a
temporary folder; MindSpore loads it through mindone.convert, so both compute the same function and the
printed losses agree), an MSE loss against the same random target and a full backward pass; optimizer
updates are left out of both. Each framework runs in its own process with the same thread count, in
``--rounds`` alternating rounds; a round's step time is the median over its timed steps and the best
round counts (both robust to other load on a shared machine). Reported:
images/s of each, the MindSpore/torch ratio, the first step (MindSpore: graph compile), and the
parameter count and parameter memory of each full-size SD 2.x component.

    .venv/bin/python benchmarks/bench_unet.py [--batch 8] [--steps 30] [--warmup 3] [--threads 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from harness import (best_round, forward_flags, interleaved_rounds, print_result, saved_reference_models, spawn_worker,
                     time_steps)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per framework (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, incl. compile (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for each framework's kernels; 1 gives stable figures on a shared machine, "
                             "where torch's OpenMP threads spin-wait badly under load (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating torch/MindSpore rounds (default: %(default)s)")
    parser.add_argument("--config", default="tiny", help="model config for the timed UNet (default: %(default)s)")
    parser.add_argument("--worker", choices=("torch", "mindspore"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    return parser.parse_args()


def inputs(cfg: dict, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    side = cfg["image_size"] // 4 if cfg["image_size"] <= 64 else cfg["image_size"] // 8
    return {"x": rng.standard_normal((batch, 4, side, side)).astype(np.float32),
            "t": rng.integers(0, 1000, batch).astype(np.int32),
            "context": rng.standard_normal((batch, 77, cfg["model"]["unet"]["context_dim"])).astype(np.float32),
            "target": rng.standard_normal((batch, 4, side, side)).astype(np.float32)}


def bench_torch(weights: str, data: dict, warmup: int, steps: int, threads: int) -> tuple[float, float, float]:
    import diffusers
    import torch

    torch.set_num_threads(threads)
    unet = diffusers.UNet2DConditionModel.from_pretrained(Path(weights) / "unet")
    unet.train()
    x, t = torch.from_numpy(data["x"]), torch.from_numpy(data["t"].astype(np.int64))
    context, target = torch.from_numpy(data["context"]), torch.from_numpy(data["target"])

    def step(_: int) -> float:
        unet.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(unet(x, t, context).sample, target)
        loss.backward()
        return float(loss.detach())

    first, per_step = time_steps(step, warmup, steps)
    return first, per_step, step(warmup + steps)


def bench_mindspore(weights: str, cfg: dict, data: dict, warmup: int, steps: int, threads: int
                    ) -> tuple[float, float, float]:
    import mindspore as ms
    from mindspore import nn, ops

    from mindone.convert import load_sd_weights
    from mindone.models.config import build_model

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(threads)
    model = build_model(cfg)
    load_sd_weights(model, weights)
    unet = model.model.diffusion_model
    unet.set_train(True)

    class LossNet(nn.Cell):
        def __init__(self, net):
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, x, t, context, target):
            return ops.mse_loss(self.net(x, t, context), target)

    class ForwardBackward(nn.Cell):
        def __init__(self, loss_net, weights):
            super().__init__(auto_prefix=False)
            self.grad_fn = ms.value_and_grad(loss_net, None, weights)

        def construct(self, x, t, context, target):
            return self.grad_fn(x, t, context, target)

    train_step = ForwardBackward(LossNet(unet), unet.trainable_params())
    args = [ms.Tensor(data[k]) for k in ("x", "t", "context", "target")]
    last = {}

    def step(_: int):
        loss, grads = train_step(*args)
        last["loss"] = float(loss.asnumpy())
        return grads

    first, per_step = time_steps(step, warmup, steps)
    return first, per_step, last["loss"]


def full_size_components() -> list[tuple[str, int]]:
    from mindspore.nn.utils import no_init_parameters

    from mindone.models.config import build_model, load_model_config

    with no_init_parameters():
        model = build_model(load_model_config("v2-base-512-eps"))
    parts = [("UNet", model.model.diffusion_model), ("VAE", model.first_stage_model),
             ("text encoder (23 blocks)", model.cond_stage_model)]
    return [(name, sum(int(p.size) for p in cell.get_parameters())) for name, cell in parts]


def run_worker(args: argparse.Namespace) -> None:
    from mindone.models.config import load_model_config

    cfg = load_model_config(args.config)
    data = inputs(cfg, args.batch)
    if args.worker == "torch":
        result = bench_torch(args.weights, data, args.warmup, args.steps, args.threads)
    else:
        result = bench_mindspore(args.weights, cfg, data, args.warmup, args.steps, args.threads)
    print_result(dict(zip(("first", "step", "loss"), result)))


def spawn(args: argparse.Namespace, worker: str, weights: str) -> dict:
    settings = forward_flags(args, ("config", "batch", "steps", "warmup", "threads"))
    return spawn_worker(__file__, ["--worker", worker, "--weights", weights, *settings], label=f"{worker} worker")


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
        return
    from mindone.models.config import load_model_config

    cfg = load_model_config(args.config)
    data = inputs(cfg, args.batch)
    with saved_reference_models(cfg) as (folder, models):
        n_params = sum(p.numel() for p in models["unet"].parameters())
        rounds = interleaved_rounds(lambda worker: spawn(args, worker, folder), ("torch", "mindspore"), args.rounds)
    results = best_round(rounds)
    shape = "x".join(str(d) for d in data["x"].shape)
    print(f"UNet forward+backward, config {args.config} ({n_params / 1e6:.2f}M params), latents {shape}, "
          f"context {data['context'].shape[1]}x{data['context'].shape[2]}, {args.threads} threads, "
          f"best of {args.rounds} rounds of {args.steps} steps (median), CPU")
    print(f"{'':28s}{'images/s':>10s}{'ms/step':>10s}{'first step s':>14s}{'loss':>12s}")
    for worker, label in (("torch", "diffusers/torch (eager)"), ("mindspore", "MindSpore GRAPH_MODE")):
        r = results[worker]
        per_round = ", ".join(f"{run['step'] * 1e3:.1f}" for run in rounds[worker])
        print(f"{label:28s}{args.batch / r['step']:10.1f}{r['step'] * 1e3:10.1f}{r['first']:14.2f}{r['loss']:12.6f}"
              f"   (ms/step per round: {per_round})")
    print(f"ratio MindSpore / torch: {results['torch']['step'] / results['mindspore']['step']:.2f}x images/s "
          "(MindSpore's first step includes graph compilation)")
    print("\nfull-size SD 2.x components (parameters only; activations not included)")
    print(f"{'':28s}{'params':>14s}{'fp32 GiB':>10s}{'fp16 GiB':>10s}")
    total = 0
    for name, count in full_size_components():
        total += count
        print(f"{name:28s}{count:14,d}{count * 4 / 2**30:10.2f}{count * 2 / 2**30:10.2f}")
    print(f"{'total':28s}{total:14,d}{total * 4 / 2**30:10.2f}{total * 2 / 2**30:10.2f}")


if __name__ == "__main__":
    main()
