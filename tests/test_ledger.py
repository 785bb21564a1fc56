"""The resource ledger (raylite.core.ledger) on its own: no cluster."""

from __future__ import annotations

import logging

import pytest

from raylite.core.ledger import GpuSet, Pool

pytestmark = pytest.mark.timeout(10)


def test_take_and_give_keep_the_totals():
    pool = Pool({"CPU": 4, "GPU": 1, "memory": 1e9}, "node a")
    assert pool.total == {"CPU": 4.0, "GPU": 1.0, "memory": 1e9}
    pool.take({"CPU": 1.5, "memory": 2.5e8})
    assert pool.available == {"CPU": 2.5, "GPU": 1.0, "memory": 7.5e8}
    pool.take({"CPU": 2.5, "GPU": 1})
    assert pool.available["CPU"] == 0.0 and pool.available["GPU"] == 0.0
    pool.give({"CPU": 4, "GPU": 1, "memory": 2.5e8})
    assert pool.available == pool.total and pool.violations == 0


def test_available_is_the_dict_views_hold():
    pool = Pool({"CPU": 2}, "node a")
    view = pool.available
    pool.take({"CPU": 1})
    assert view == {"CPU": 1.0}
    pool.zero()
    assert view == {"CPU": 0.0}


def test_lend_and_reclaim_around_a_blocked_get():
    pool = Pool({"CPU": 2}, "node a")
    pool.take({"CPU": 2})
    pool.lend(1)  # a task blocks in get(): its CPU runs a nested task meanwhile
    assert pool.available["CPU"] == 1.0
    pool.reclaim(1)  # it resumes while the CPU is still free
    assert pool.available["CPU"] == 0.0 and not pool.debt.get("CPU")
    pool.lend(0)
    pool.reclaim(0)  # no CPU held: nothing to lend or take back
    assert pool.available["CPU"] == 0.0


def test_reclaiming_a_cpu_in_use_becomes_debt_paid_by_the_next_give():
    pool = Pool({"CPU": 2}, "node a")
    pool.take({"CPU": 2})
    pool.lend(1)
    pool.take({"CPU": 1})  # the nested task took the lent CPU
    pool.reclaim(1)  # the blocked task resumes: the node is over-committed by one CPU
    assert pool.available["CPU"] == 0.0 and pool.debt["CPU"] == 1.0
    pool.give({"CPU": 1})  # the nested task ends: it pays the debt, nothing is freed
    assert pool.available["CPU"] == 0.0 and pool.debt["CPU"] == 0.0
    pool.give({"CPU": 2})
    assert pool.available["CPU"] == 2.0 and pool.violations == 0


def test_partial_reclaim_takes_what_is_free_and_owes_the_rest():
    pool = Pool({"CPU": 4}, "node a")
    pool.take({"CPU": 3.5})
    pool.reclaim(1)
    assert pool.available["CPU"] == 0.0 and pool.debt["CPU"] == pytest.approx(0.5)


def test_violations_are_counted_logged_and_clamped(caplog):
    pool = Pool({"CPU": 1}, "node a")
    with caplog.at_level(logging.ERROR, logger="raylite.ledger"):
        pool.give({"CPU": 1})  # returned twice: more free than the node has
        pool.take({"CPU": 3})  # more taken than there is
    assert pool.violations == 2
    assert pool.available["CPU"] == 0.0
    assert "resource ledger of node a" in caplog.text


def test_rounding_noise_is_clamped_without_a_violation():
    pool = Pool({"CPU": 1}, "node a")
    for _ in range(10):
        pool.take({"CPU": 0.1})
    for _ in range(10):
        pool.give({"CPU": 0.1})
    assert 0.0 <= pool.available["CPU"] <= 1.0 and pool.violations == 0


def test_zero_forgets_the_debt():
    pool = Pool({"CPU": 1}, "node a")
    pool.take({"CPU": 1})
    pool.reclaim(1)
    pool.zero()
    assert pool.available == {"CPU": 0.0} and pool.debt == {}


def test_gpu_fractions_go_to_one_gpu_best_fit():
    gpus = GpuSet(2)
    assert gpus.take(0) == ()
    assert gpus.take(0.5) == (0,)
    assert gpus.take(0.25) == (0,)  # the fullest GPU that still has room
    assert gpus.capacity_for(0.5) == 1.0  # GPU 1 is still whole
    assert gpus.take(0.5) == (1,)
    assert gpus.take(0.5) == (1,)
    assert gpus.take(0.5) is None  # 0.25 free on GPU 0: summed free GPU is no place
    assert gpus.capacity_for(0.5) == pytest.approx(0.25)
    gpus.give((0,), 0.5)
    assert gpus.free[0] == pytest.approx(0.75)


def test_whole_gpus_need_wholly_free_ones():
    gpus = GpuSet(3)
    assert gpus.take(0.5) == (0,)
    assert gpus.capacity_for(2) == 2.0
    assert gpus.take(2) == (1, 2)
    assert gpus.take(1) is None and gpus.capacity_for(1) == 0.0
    gpus.give((1, 2), 2)
    assert gpus.free == {0: 0.5, 1: 1.0, 2: 1.0}
    gpus.give((7,), 1)  # an id the node does not have is ignored
    assert set(gpus.free) == {0, 1, 2}
    assert GpuSet(0).capacity_for(0.5) == 0.0
