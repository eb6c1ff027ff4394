"""CPU lanes: which CPU device each model of a worker runs on."""

from __future__ import annotations

import pytest

from service.backends.lanes import CpuLanes


def test_one_lane_places_nothing():
    lanes = CpuLanes()
    assert lanes.lane_for("digits") is None
    assert lanes.lane_for("heavy") is None


def test_models_spread_over_the_lanes_and_keep_theirs():
    lanes = CpuLanes(2)
    assert lanes.lane_for("digits") == "/device:CPU:0"
    assert lanes.lane_for("heavy") == "/device:CPU:1"
    assert lanes.lane_for("digits") == "/device:CPU:0"  # a new version of a model runs where the model runs
    assert lanes.lane_for("third") == "/device:CPU:0"  # more models than lanes: they share, evenly


def test_a_model_let_go_of_frees_its_place_on_its_lane():
    lanes = CpuLanes(2)
    for model in ("a", "b", "c"):
        lanes.lane_for(model)
    lanes.release("b")
    assert lanes.lane_for("d") == "/device:CPU:1"  # the lane b held is now the least used
    lanes.release("never-placed")  # harmless


def test_a_worker_has_one_lane_at_least():
    with pytest.raises(ValueError):
        CpuLanes(0)
