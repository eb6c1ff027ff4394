"""Which loaded models make room for another within a worker's budget: the least recently used idle ones."""

from __future__ import annotations

import pytest

from service.hosting.residency import LoadedModel, LoadRation, models_to_unload

MIB = 2**20


def loaded(name: str, size_mib: int, last_used_s: float, in_flight: int = 0) -> LoadedModel:
    return LoadedModel(name, size_mib * MIB, last_used_s, in_flight)


def test_nothing_is_unloaded_while_the_model_fits():
    assert models_to_unload(10 * MIB, 4 * MIB, [loaded("a", 3, 1.0), loaded("b", 3, 2.0)]) == []


def test_the_least_recently_used_go_first_and_no_more_than_needed():
    models = [loaded("new", 2, 9.0), loaded("old", 2, 1.0), loaded("older", 2, 0.5), loaded("mid", 2, 5.0)]
    assert models_to_unload(8 * MIB, 2 * MIB, models) == ["older"]
    assert models_to_unload(8 * MIB, 5 * MIB, models) == ["older", "old", "mid"]


def test_a_model_with_requests_in_flight_is_never_unloaded():
    models = [loaded("busy", 4, 0.0, in_flight=3), loaded("idle", 2, 5.0), loaded("busy too", 2, 1.0, in_flight=1)]
    assert models_to_unload(8 * MIB, 2 * MIB, models) == ["idle"]
    assert models_to_unload(8 * MIB, 3 * MIB, models) is None, "the idle ones free too little: none is unloaded"


def test_a_model_larger_than_the_budget_never_fits():
    assert models_to_unload(8 * MIB, 9 * MIB, [loaded("a", 2, 1.0)]) is None
    assert models_to_unload(8 * MIB, 8 * MIB, [loaded("a", 2, 1.0)]) == ["a"]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_loads_are_admitted_while_they_take_their_share_and_refused_with_when_beyond():
    clock = Clock()
    ration = LoadRation(0.25, clock)
    assert ration.admit() == 0.0, "nothing is known before the first load: it goes ahead"
    ration.loaded(2.0)  # 2 s a load: the bucket holds 4 loads' worth, one spent
    assert [ration.admit() for _ in range(3)] == [0.0, 0.0, 0.0]
    for _ in range(3):
        ration.loaded(2.0)
    assert ration.admit() == pytest.approx(2.0 / 0.25), "a load's 2 s come back at 0.25 s a second"
    clock.now += 4.0
    assert ration.admit() == pytest.approx(1.0 / 0.25)
    clock.now += 4.0
    assert ration.admit() == 0.0


def test_a_quiet_spell_refills_the_bucket_only_to_a_few_loads():
    clock = Clock()
    ration = LoadRation(0.25, clock)
    ration.admit()
    ration.loaded(1.0)
    clock.now += 3600.0
    admitted = 0
    while ration.admit() == 0.0:
        admitted += 1
        ration.loaded(1.0)
    assert admitted == LoadRation.BURST_LOADS


def test_a_longer_load_than_expected_is_counted_for_what_it_took():
    clock = Clock()
    ration = LoadRation(0.5, clock)
    ration.admit()
    ration.loaded(1.0)  # expects 1 s; 3 s of tokens left
    assert ration.admit() == 0.0
    ration.loaded(3.0)  # took 3 s where 1 was taken: 0 left; expects 1.6 s now
    assert ration.admit() == pytest.approx(1.6 / 0.5)
