"""Which loaded models make room for another within a worker's budget: the least recently used idle ones."""

from __future__ import annotations

from service.hosting.residency import LoadedModel, models_to_unload

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
