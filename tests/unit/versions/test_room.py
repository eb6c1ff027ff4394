"""Memory for a swap: all workers at once when it fits, one at a time when it does not."""

from __future__ import annotations

import threading

import pytest

from service.backends.footprint import Footprint
from service.versions.room import SwapRoom

MIB = 2**20


def room(tmp_path, model_mib: int, available_mib: int = 1000, workers: int = 4) -> SwapRoom:
    return SwapRoom(
        str(tmp_path / "swap.lock"),
        workers=workers,
        ram_headroom=0.2,
        measure=lambda path: Footprint(runtime_bytes=500 * MIB, model_bytes=model_mib * MIB),
        available_bytes=lambda: available_mib * MIB,
    )


def test_the_decision_keeps_the_headroom_free(tmp_path):
    assert room(tmp_path, model_mib=200).fits_at_once("v2")  # 4 x 200 <= 800
    assert not room(tmp_path, model_mib=201).fits_at_once("v2")


def test_a_model_that_cannot_be_measured_is_loaded_in_turns(tmp_path):
    def fails(path):
        raise RuntimeError("no such model")

    swap = SwapRoom(str(tmp_path / "swap.lock"), 2, 0.2, fails, lambda: 10**12)
    assert not swap.fits_at_once("v2")


@pytest.mark.parametrize(("model_mib", "together"), [(100, True), (400, False)])
def test_workers_swap_together_only_when_memory_holds_them(tmp_path, model_mib, together):
    # Each "worker" opens the lock file on its own, as separate processes do.
    first_inside, second_entered, first_may_leave = threading.Event(), threading.Event(), threading.Event()

    def first():
        with room(tmp_path, model_mib)("v2"):
            first_inside.set()
            first_may_leave.wait(10)

    def second():
        first_inside.wait(10)
        with room(tmp_path, model_mib)("v2"):
            second_entered.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    assert second_entered.wait(2 if together else 0.3) is together
    first_may_leave.set()
    for thread in threads:
        thread.join(10)
    assert second_entered.is_set()


def test_a_lone_worker_neither_locks_nor_measures(tmp_path):
    def never(path):
        raise AssertionError("measured")

    swap = SwapRoom(str(tmp_path / "swap.lock"), 1, 0.2, never, lambda: 0)
    with swap("v2"):
        pass
    assert not (tmp_path / "swap.lock").exists()
