"""The train step on a toy network: loss scaling with overflow skip, accumulation, clipping, EMA,
GRAPH_MODE against PYNATIVE, and the mindcv-built optimizer and schedules against diffusers'."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from mindone.train.ema import EMA
from mindone.train.optim import build_lr_schedule, build_optimizer
from mindone.train.train_step import LossScaler, TrainStep


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


class Toy(nn.Cell):
    """Mean squared error of a linear layer: small, with gradients easy to compute by hand."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.dense = nn.Dense(4, 1)
        self.dense.weight.set_data(Tensor(rng.normal(size=(1, 4)).astype(np.float32)))
        self.dense.bias.set_data(Tensor(np.zeros(1, np.float32)))

    def construct(self, x, y):
        return ops.mean(ops.square(self.dense(x) - y))


def batches(n: int, size: int = 8, seed: int = 1):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 1))
    out = []
    for _ in range(n):
        x = rng.normal(size=(size, 4)).astype(np.float32)
        out.append((x, (x @ w).astype(np.float32)))
    return out


def weights(net: nn.Cell) -> dict[str, np.ndarray]:
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def toy_grads(net: Toy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d loss / d [w, b] computed in numpy."""
    w, b = net.dense.weight.asnumpy()[0], net.dense.bias.asnumpy()[0]
    r = x @ w + b - y[:, 0]
    return np.concatenate([2 * (r[:, None] * x).mean(0), [2 * r.mean()]])


def test_overflow_skips_update_and_lowers_scale_then_grows_after_window():
    net = Toy()
    opt = build_optimizer(net.trainable_params(), [0.1] * 20, weight_decay=0.0)
    ema = EMA(net.trainable_params(), max_decay=0.9)
    scaler = LossScaler(init_scale=1024.0, window=2)
    step = TrainStep(net, opt, scaler, ema=ema)
    (x, y), (x2, y2), (x3, y3) = batches(3)

    before, ema_before = weights(net), [a.asnumpy().copy() for a in ema.averages]
    bad = x.copy()
    bad[0, 0] = np.inf  # non-finite gradients, as an fp16 overflow gives
    out = step(Tensor(bad), Tensor(y))
    assert out.applied and out.overflow and out.loss_scale == 1024.0
    assert float(scaler.loss_scale.asnumpy()) == 512.0
    assert int(scaler.good_steps.asnumpy()) == 0
    after = weights(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # weights untouched
    assert int(opt.global_step.asnumpy()[0]) == 0  # lr position did not move
    assert all(np.array_equal(m.asnumpy(), np.zeros_like(m.asnumpy())) for m in opt.moments1)
    assert all(np.array_equal(a.asnumpy(), b) for a, b in zip(ema.averages, ema_before))
    assert int(ema.num_updates.asnumpy()) == 0

    out = step(Tensor(x2), Tensor(y2))
    assert not out.overflow and out.loss_scale == 512.0
    assert not np.array_equal(weights(net)["dense.weight"], before["dense.weight"])
    assert int(opt.global_step.asnumpy()[0]) == 1 and int(ema.num_updates.asnumpy()) == 1
    step(Tensor(x3), Tensor(y3))  # second clean step in a row: window reached, scale doubles
    assert float(scaler.loss_scale.asnumpy()) == 1024.0
    assert int(scaler.good_steps.asnumpy()) == 0


def test_scaled_gradients_are_unscaled_before_the_update():
    """The same run with loss scale 1 and 2**12 (no overflow) ends with the same weights."""
    results = []
    for scale in (1.0, 4096.0):
        net = Toy()
        opt = nn.SGD(net.trainable_params(), learning_rate=0.05)
        step = TrainStep(net, opt, LossScaler(init_scale=scale, window=1000))
        for x, y in batches(4):
            step(Tensor(x), Tensor(y))
        results.append(weights(net))
    for k in results[0]:
        np.testing.assert_allclose(results[0][k], results[1][k], rtol=1e-6, atol=1e-7)


def test_gradient_accumulation_equals_one_big_batch():
    (x, y), = batches(1, size=8)
    big, small = Toy(), Toy()
    step_big = TrainStep(big, build_optimizer(big.trainable_params(), [0.05] * 4, weight_decay=0.01))
    step_small = TrainStep(small, build_optimizer(small.trainable_params(), [0.05] * 4, weight_decay=0.01),
                           grad_accum_steps=2)
    for _ in range(2):
        out_big = step_big(Tensor(x), Tensor(y))
        first = step_small(Tensor(x[:4]), Tensor(y[:4]))
        second = step_small(Tensor(x[4:]), Tensor(y[4:]))
        assert not first.applied and second.applied and out_big.applied
        assert second.grad_norm == pytest.approx(out_big.grad_norm, rel=1e-5)
    for k, v in weights(big).items():
        np.testing.assert_allclose(weights(small)[k], v, rtol=1e-5, atol=1e-6)


def test_global_norm_clipping_matches_torch_semantics():
    net = Toy()
    (x, y), = batches(1)
    expected = toy_grads(net, x, y)
    norm = float(np.linalg.norm(expected))
    max_norm = norm / 4
    before = np.concatenate([net.dense.weight.asnumpy()[0], net.dense.bias.asnumpy()])
    step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=1.0), max_grad_norm=max_norm)
    out = step(Tensor(x), Tensor(y))
    assert out.grad_norm == pytest.approx(norm, rel=1e-5)  # reported before clipping
    after = np.concatenate([net.dense.weight.asnumpy()[0], net.dense.bias.asnumpy()])
    # SGD with lr 1 moves the weights by exactly the clipped gradient: g * max_norm / (norm + 1e-6).
    np.testing.assert_allclose(before - after, expected * max_norm / (norm + 1e-6), rtol=1e-4, atol=1e-6)


def test_ema_follows_the_diffusers_warmup_decay():
    net = Toy()
    ema = EMA(net.trainable_params(), max_decay=0.5)
    start = net.dense.weight.asnumpy().copy()
    target = start + 1.0
    net.dense.weight.set_data(Tensor(target))
    expected = start.astype(np.float64)
    for n in range(4):
        ema.update()
        decay = min(0.5, (1 + n) / (10 + n))  # diffusers EMAModel.get_decay without warmup power
        expected = decay * expected + (1 - decay) * target
        np.testing.assert_allclose(ema.averages[0].asnumpy(), expected, rtol=1e-6)
    with ema.swapped_in():
        np.testing.assert_allclose(net.dense.weight.asnumpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(net.dense.weight.asnumpy(), target)


def _trajectory(mode: int) -> tuple[list[float], dict[str, np.ndarray]]:
    ms.set_context(mode=mode)
    net = Toy()
    opt = build_optimizer(net.trainable_params(), build_lr_schedule("cosine", 0.05, 2, 6), weight_decay=0.01)
    step = TrainStep(net, opt, LossScaler(init_scale=256.0, window=3), grad_accum_steps=2, max_grad_norm=0.5,
                     ema=EMA(net.trainable_params(), max_decay=0.9))
    data = batches(12, size=4)
    data[5][0][0, 0] = np.inf  # one overflow in the middle
    losses = [step(Tensor(x), Tensor(y)).loss for x, y in data]
    return losses, weights(net) | {f"ema{i}": a.asnumpy() for i, a in enumerate(step.ema.averages)}


def test_graph_mode_and_pynative_train_identically():
    graph_losses, graph_state = _trajectory(ms.GRAPH_MODE)
    py_losses, py_state = _trajectory(ms.PYNATIVE_MODE)
    np.testing.assert_allclose(graph_losses, py_losses, rtol=1e-5)
    for k in graph_state:
        np.testing.assert_allclose(graph_state[k], py_state[k], rtol=1e-5, atol=1e-7)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "cosine"])
def test_lr_schedules_match_diffusers(name):
    torch = pytest.importorskip("torch")
    from diffusers.optimization import get_scheduler

    total, warmup, lr = 20, 5, 0.1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    expected = []
    for _ in range(total):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(build_lr_schedule(name, lr, warmup, total), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.torch
def test_adamw_update_matches_torch():
    torch = pytest.importorskip("torch")
    net = Toy()
    w0 = net.dense.weight.asnumpy().copy()
    step = TrainStep(net, build_optimizer(net.trainable_params(), [0.01] * 3, weight_decay=0.1))
    tw = torch.nn.Parameter(torch.tensor(w0))
    tb = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.AdamW([tw, tb], lr=0.01, weight_decay=0.1, eps=1e-8)
    for x, y in batches(3):
        step(Tensor(x), Tensor(y))
        topt.zero_grad()
        loss = ((torch.tensor(x) @ tw.T + tb - torch.tensor(y)) ** 2).mean()
        loss.backward()
        topt.step()
    np.testing.assert_allclose(net.dense.weight.asnumpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_bucketed_global_norm_over_many_tensors():
    """More tensors than one bucket holds: the norm covers every bucket, and the buckets cover every tensor."""
    from mindone.train.train_step import _buckets

    assert _buckets([1] * 130) == ((0, 64), (64, 128), (128, 130))
    assert _buckets([5, 2**24, 3, 4], max_elements=2**24) == ((0, 1), (1, 2), (2, 4))

    class Many(nn.Cell):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(4)
            self.ws = ms.ParameterTuple([ms.Parameter(Tensor(rng.normal(size=(2,)).astype(np.float32)), name=f"p{i}")
                                         for i in range(70)])

        def construct(self, x):
            total = ops.zeros((), ms.float32)
            for i, w in enumerate(self.ws):
                total = total + ops.sum(w * x) * (i + 1)
            return total

    net = Many()
    x = np.array([0.5, -2.0], np.float32)
    expected = np.linalg.norm([x * (i + 1) for i in range(70)])  # d loss / d w_i = x * (i + 1)
    before = [w.asnumpy().copy() for w in net.ws]
    step = TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=1.0), LossScaler(init_scale=8.0),
                     max_grad_norm=1.0)
    out = step(Tensor(x))
    assert out.grad_norm == pytest.approx(expected, rel=1e-5)
    moved = np.concatenate([b - w.asnumpy() for b, w in zip(before, net.ws)])
    np.testing.assert_allclose(np.linalg.norm(moved), 1.0, rtol=1e-4)  # clipped to the max norm, unscaled
