"""The epoch plan: rank x worker split, uneven-split policies, seeded shuffles, resume offsets."""

from __future__ import annotations

import numpy as np
import pytest

from mindone.data.shards import EpochPlan, detect_rank_and_world_size
from mindone.errors import ConfigError, MindoneError


def planned_positions(plan: EpochPlan, start_step: int = 0) -> list[int]:
    """The rank's output sequence of epoch-stream positions (mod N), interleaved as the workers are."""
    per_worker = [
        [(p.chunk_start + j) % plan.total for j in p.order[p.emitted :].tolist()]
        for p in (plan.worker_plan(w, start_step) for w in range(plan.num_workers))
    ]
    out, first = [], start_step * plan.batch_size
    for i in range(first, plan.budget):
        out.append(per_worker[i % plan.num_workers].pop(0))
    assert all(not rest for rest in per_worker)
    return out


def make_plans(sizes, world_size=2, num_workers=2, batch_size=2, epoch=0, **kw):
    return [
        EpochPlan(np.array(sizes), rank=r, world_size=world_size, num_workers=num_workers, batch_size=batch_size,
                  seed=kw.get("seed", 7), epoch=epoch,
                  **{k: v for k, v in kw.items() if k != "seed"})
        for r in range(world_size)
    ]


def test_two_ranks_two_workers_cover_every_sample_once_with_uneven_shards():
    sizes = [7, 3, 11, 5, 6]  # 32 samples, shards of unequal size
    plans = make_plans(sizes, shuffle_buffer=4)
    seen = [p for plan in plans for p in planned_positions(plan)]
    assert sorted(seen) == list(range(32))
    assert {plan.steps_per_epoch for plan in plans} == {8}


@pytest.mark.parametrize("uneven, per_rank, missing, doubled", [("pad", 11, 0, 1), ("drop", 10, 1, 0)])
def test_uneven_policy_gives_every_rank_the_same_steps(uneven, per_rank, missing, doubled):
    sizes = [4, 9, 8]  # 21 samples over 2 ranks
    plans = make_plans(sizes, batch_size=1, uneven=uneven)
    assert [plan.per_rank for plan in plans] == [per_rank, per_rank]
    assert {plan.steps_per_epoch for plan in plans} == {per_rank}
    seen = [p for plan in plans for p in planned_positions(plan)]
    counts = np.bincount(seen, minlength=21)
    assert (counts == 0).sum() == missing and (counts == 2).sum() == doubled and counts.max() <= 2


@pytest.mark.parametrize("world_size, batch_size", [(2, 3), (2, 4), (3, 4), (1, 6)])
def test_pad_reads_every_sample_with_batches_above_one(world_size, batch_size):
    """pad keeps its word with whole batches: 20 samples over 2 ranks x batch 3 give 4 steps of 3 per rank
    (24 reads: every sample, 4 twice), not 3 steps (18 reads, 2 samples never seen)."""
    sizes = [7, 5, 8]
    plans = make_plans(sizes, world_size=world_size, batch_size=batch_size, uneven="pad")
    steps = {plan.steps_per_epoch for plan in plans}
    assert steps == {-(-20 // (world_size * batch_size))}
    seen = [p % 20 for plan in plans for p in planned_positions(plan)]
    counts = np.bincount(seen, minlength=20)
    assert counts.min() >= 1 and counts.sum() == steps.pop() * world_size * batch_size
    assert (counts == 2).sum() == counts.sum() - 20 <= world_size * batch_size - 1
    dropped = make_plans(sizes, world_size=world_size, batch_size=batch_size, uneven="drop")
    missing = 20 - len({p for plan in dropped for p in planned_positions(plan)})
    assert missing <= world_size * batch_size - 1 and {p.per_rank for p in dropped} == {20 // world_size}


def test_drop_remainder_reads_only_whole_batches():
    plans = make_plans([10, 10, 3], batch_size=4)  # per rank ceil(23/2)=12 -> 3 steps of 4
    assert [(p.steps_per_epoch, p.budget) for p in plans] == [(3, 12), (3, 12)]
    no_drop = make_plans([10, 10, 3], batch_size=5, drop_remainder=False)
    assert [(p.steps_per_epoch, p.budget) for p in no_drop] == [(3, 12), (3, 12)]


def test_same_seed_same_order_other_epoch_or_seed_other_order():
    sizes = [10] * 8
    a = planned_positions(make_plans(sizes, seed=1, epoch=0)[0])
    b = planned_positions(make_plans(sizes, seed=1, epoch=0)[0])
    c = planned_positions(make_plans(sizes, seed=1, epoch=1)[0])
    d = planned_positions(make_plans(sizes, seed=2, epoch=0)[0])
    assert a == b and a != c and a != d


def test_sample_shuffle_is_bounded_by_the_buffer_and_off_without_shuffle():
    plan = make_plans([200], world_size=1, num_workers=1, batch_size=1, shuffle_buffer=16)[0]
    order = plan.worker_plan(0).order
    assert sorted(order.tolist()) == list(range(200)) and order.tolist() != list(range(200))
    assert np.abs(order - np.arange(200)).max() < 16
    fixed = make_plans([5, 5], world_size=1, num_workers=1, batch_size=1, shuffle=False)[0]
    assert planned_positions(fixed) == list(range(10))
    assert fixed.locate(np.array([0, 4, 5, 9]))[0].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("start_step", [1, 3, 5, 7])
def test_resume_is_the_tail_of_the_uninterrupted_order(start_step):
    plans = make_plans([7, 3, 11, 5, 6], num_workers=3, batch_size=2, shuffle_buffer=5)
    for plan in plans:
        full = planned_positions(plan)
        assert planned_positions(plan, start_step) == full[start_step * 2 :]


def test_shard_runs_split_at_shard_boundaries_and_wrap():
    plan = make_plans([3, 4], world_size=1, num_workers=1, batch_size=1, shuffle=False)[0]
    runs = [(s, m.tolist(), p.tolist()) for s, m, p in plan.shard_runs(np.array([1, 2, 3, 6, 7, 8]))]
    assert runs == [(0, [1, 2], [1, 2]), (1, [0, 3], [3, 6]), (0, [0, 1], [7, 8])]


def test_bad_configuration_is_a_user_error():
    with pytest.raises(ConfigError, match="fewer than one batch"):
        make_plans([3], world_size=2, batch_size=4)
    # a policy no flag can give (--uneven_policy offers pad / drop) is the caller's bug, not a user error
    with pytest.raises(ValueError, match="uneven") as err:
        make_plans([8], uneven="spread")
    assert not isinstance(err.value, MindoneError)


def test_rank_from_environment(monkeypatch):
    monkeypatch.setenv("RANK_ID", "3")
    monkeypatch.setenv("RANK_SIZE", "8")
    assert detect_rank_and_world_size() == (3, 8)
