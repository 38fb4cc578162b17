"""LoRA adapters on the micro SD model, and the checkpoint store (atomic, keep-last-K, resume lookup)."""

from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor

from mindone.errors import CheckpointError
from mindone.train.checkpoint import CheckpointManager, TrainMeta, load_parameters, save_parameters
from mindone.train.lora import apply_lora, inject_lora, lora_parameters, mark_only_lora_trainable, save_lora
from mindone.train.metrics import MetricsLogger, read_metrics
from tests.helpers.training import MICRO_MODEL


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def micro_model():
    from mindone.models.config import build_model

    ms.set_seed(0)
    return build_model(MICRO_MODEL)


def unet_out(model, inputs):
    x, t, ids = inputs
    return model.apply_model(x, t, model.encode_text(ids)).asnumpy()


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    return (Tensor(rng.normal(size=(2, 4, 8, 8)).astype(np.float32)), Tensor(np.array([10, 700], np.int32)),
            Tensor(rng.integers(0, 49408, size=(2, 77)).astype(np.int32)))


def test_lora_inject_train_save_reload_and_merge(pynative, inputs, tmp_path):
    model = micro_model()
    names_before = [n for n, _ in model.parameters_and_names()]
    base = unet_out(model, inputs)

    wrapped = inject_lora(model, rank=2, alpha=4.0, text_encoder=True)
    assert any(w.endswith("attn1.to_q") for w in wrapped) and any(w.endswith("attn2.to_out.0") for w in wrapped)
    assert any(w.startswith("cond_stage_model.") and w.endswith("mlp.c_fc") for w in wrapped)
    names_after = [n for n, _ in model.parameters_and_names()]
    assert set(names_before) <= set(names_after)  # base weights keep their SD names
    assert all(p.name == n for n, p in model.parameters_and_names())
    np.testing.assert_allclose(unet_out(model, inputs), base, atol=1e-5)  # up = 0: same function

    mark_only_lora_trainable(model)
    trainable = {p.name for p in model.trainable_params()}
    assert trainable == {n for n, _ in lora_parameters(model)} and len(trainable) == 2 * len(wrapped)

    rng = np.random.default_rng(1)
    for name, p in lora_parameters(model):  # stand-in for training
        p.set_data(Tensor(rng.normal(scale=0.2, size=p.shape).astype(np.float32)))
    adapted = unet_out(model, inputs)
    assert np.abs(adapted - base).max() > 1e-3

    path = save_lora(model, tmp_path / "lora.ckpt")
    saved = ms.load_checkpoint(str(path))
    tensors = [k for k in saved if k.endswith((".lora_down", ".lora_up"))]
    assert len(tensors) == 2 * len(wrapped)
    assert not any(k.endswith(".weight") or k.endswith(".bias") for k in saved)  # adapters only

    for merge in (False, True):
        fresh = micro_model()
        apply_lora(fresh, path, merge=merge)
        np.testing.assert_allclose(unet_out(fresh, inputs), adapted, rtol=1e-4, atol=1e-5)
        if merge:
            assert [n for n, _ in fresh.parameters_and_names()] == names_before
            assert not lora_parameters(fresh)


def test_apply_lora_rejects_a_non_lora_file(pynative, tmp_path):
    p = Parameter(Tensor(np.zeros(2, np.float32)), name="w")
    path = save_parameters([("w", p)], tmp_path / "plain.ckpt")
    with pytest.raises(CheckpointError, match="not a LoRA file"):
        apply_lora(micro_model(), path)


def _params(values):
    return [(f"p{i}", Parameter(Tensor(np.full((2, 3), v, np.float32)), name=f"p{i}")) for i, v in enumerate(values)]


def _meta(step, **changes):
    fields = dict(global_step=step, batches_seen=step * 2, epoch=0, steps_per_epoch=100, world_size=2,
                  train_batch_size=4, gradient_accumulation_steps=2, seed=0)
    return TrainMeta(**{**fields, **changes})


def test_train_meta_round_trip_and_the_changes_that_move_the_data_position(tmp_path):
    meta = _meta(30, model_config="tiny", use_lora=True)
    assert TrainMeta.from_json(meta.to_json()) == meta
    assert meta.position_changes(world_size=2, train_batch_size=4, gradient_accumulation_steps=2) == []
    assert meta.position_changes(world_size=4, train_batch_size=4, gradient_accumulation_steps=1) == [
        ("world_size", 4, 2), ("gradient_accumulation_steps", 1, 2)]
    broken = json.loads(meta.to_json())
    del broken["batches_seen"]
    with pytest.raises(CheckpointError, match="run/meta.json: missing batches_seen"):
        TrainMeta.from_json(json.dumps(broken), "run/meta.json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        TrainMeta.from_json("{", "run/meta.json")


def test_checkpoints_keep_last_k_and_resume_the_latest(tmp_path):
    mgr = CheckpointManager(tmp_path, total_limit=2)
    params = _params([0.0, 1.0])
    for step in (10, 20, 30):
        for _, p in params:
            p.set_data(Tensor(np.full((2, 3), step, np.float32)))
        mgr.save(params, _meta(step))
    assert [s for s, _ in mgr.checkpoints()] == [20, 30]
    assert mgr.resolve("latest") == tmp_path / "checkpoints" / "checkpoint-30"
    assert mgr.resolve(None) is None

    restored = _params([5.0, 5.0])
    meta = mgr.load(mgr.resolve(str(tmp_path / "checkpoints" / "checkpoint-20")), restored)
    assert (meta.global_step, meta.batches_seen) == (20, 40)
    assert all(np.array_equal(p.asnumpy(), np.full((2, 3), 20.0)) for _, p in restored)
    with pytest.raises(CheckpointError, match="missing 1 parameter"):
        mgr.load(mgr.latest(), _params([0.0, 0.0, 0.0]))
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        mgr.resolve(str(tmp_path / "checkpoints"))


def test_a_failed_save_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    params = _params([1.0])
    mgr.save(params, _meta(5))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dumps", boom)  # dies after the tensors are written, before the meta file
    with pytest.raises(OSError):
        mgr.save(params, _meta(10))
    assert [s for s, _ in mgr.checkpoints()] == [5]
    assert not (tmp_path / "checkpoints" / "checkpoint-10").exists()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]

    # A killed run can leave a hidden temporary directory: it is never taken for a checkpoint and is swept.
    stale = tmp_path / "checkpoints" / ".checkpoint-15.abc.tmp"
    stale.mkdir()
    (stale / "train_state.ckpt").write_bytes(b"partial")
    assert mgr.latest().name == "checkpoint-5"
    assert mgr.remove_temporaries() == 1 and not stale.exists()


def test_load_checks_shapes(tmp_path):
    path = save_parameters(_params([1.0]), tmp_path / "a.ckpt")
    wrong = [("p0", Parameter(Tensor(np.zeros((3, 2), np.float32)), name="p0"))]
    with pytest.raises(CheckpointError, match="shape"):
        load_parameters(wrong, path)


def test_metrics_csv_drops_rows_after_the_resumed_step(tmp_path):
    log = MetricsLogger(tmp_path, total_steps=6)
    for step in range(1, 6):
        log.log({"step": step, "loss": 1.0 / step, "lr": 0.1})
    log.close()
    log = MetricsLogger(tmp_path, total_steps=6, start_step=3)  # the killed run got to 5, checkpoint at 3
    log.log({"step": 4, "loss": 0.5, "lr": 0.1})
    log.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss"] == 0.5
    disabled = MetricsLogger(tmp_path / "rank1", total_steps=6, enabled=False)
    disabled.log({"step": 1, "loss": 1.0})
    assert not (tmp_path / "rank1").exists()
