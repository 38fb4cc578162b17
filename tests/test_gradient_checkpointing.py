"""--gradient_checkpointing (the UNet's use_recompute): the same training steps, compiled in GRAPH_MODE."""

from __future__ import annotations

import copy

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from mindone.diffusion.schedule import NoiseSchedule
from mindone.models.config import build_model
from mindone.train.loss import DiffusionLoss, sample_step_noise
from mindone.train.train_step import TrainStep
from tests.helpers.training import MICRO_MODEL


def _two_steps(use_recompute: bool, start: dict[str, np.ndarray] | None):
    cfg = copy.deepcopy(MICRO_MODEL)
    cfg["model"]["unet"]["use_recompute"] = use_recompute
    ms.set_seed(0)
    model = build_model(cfg)
    if start is not None:
        for name, p in model.parameters_and_names():
            p.set_data(Tensor(start[name]))
    state = {name: p.asnumpy().copy() for name, p in model.parameters_and_names()}
    for name, p in model.parameters_and_names():
        p.requires_grad = name.startswith("model.diffusion_model.")
    loss = DiffusionLoss(model, NoiseSchedule(), "eps")
    step = TrainStep(loss, nn.SGD(model.trainable_params(), learning_rate=0.1), max_grad_norm=1.0)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    ids = rng.integers(0, 49408, (2, 77)).astype(np.int32)
    losses = []
    for k in range(2):
        noise = sample_step_noise(0, 0, k, 0, 2, (4, 8, 8))
        losses.append(step(Tensor(images), Tensor(ids), *(Tensor(x) for x in noise.inputs())).loss)
    unet = {n: p.asnumpy() for n, p in model.parameters_and_names() if n.startswith("model.diffusion_model.")}
    return state, losses, unet


def test_recomputed_unet_trains_identically_in_graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    start, plain_losses, plain = _two_steps(False, None)
    _, recomputed_losses, recomputed = _two_steps(True, start)
    np.testing.assert_allclose(recomputed_losses, plain_losses, rtol=1e-6)
    moved = [n for n in plain if not np.allclose(plain[n], start[n])]
    assert len(moved) > len(plain) // 2  # the steps did update the UNet
    worst = max(float(np.abs(recomputed[n] - plain[n]).max()) for n in plain)
    assert worst <= 1e-6, f"recompute changed the update by {worst}"
