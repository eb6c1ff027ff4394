"""The cost model: padded sizes, learning from batches, the reported line, where larger batches stop paying."""

from __future__ import annotations

import pytest

from service.batching.cost_model import CostModel, largest_paying_size


def test_a_batch_costs_what_its_padded_size_costs():
    model = CostModel({1: 0.010, 4: 0.020, 8: 0.030})
    assert [model.padded(n) for n in (1, 2, 4, 5, 8)] == [1, 4, 4, 8, 8]
    assert model.seconds(3) == 0.020 and model.seconds(0) == 0.0
    assert model.seconds(20) == 0.030  # beyond the largest size: the largest is all there is


def test_batches_move_their_size_s_estimate():
    model = CostModel({1: 0.010, 4: 0.020}, smoothing=0.5)
    model.observe(3, 0.040)
    assert model.seconds(4) == pytest.approx(0.030)
    assert model.seconds(1) == 0.010 and model.observations == 1


def test_passes_beside_each_other_teach_how_much_they_slow_each_other():
    model = CostModel({1: 0.010, 4: 0.020}, smoothing=0.5)
    assert model.seconds(4, beside=True) == pytest.approx(0.040)  # two passes sharing the cores until measured
    model.observe_beside(4, 0.030)  # 1.5 times its time alone
    assert model.beside_factor == pytest.approx(1.75) and model.seconds(1, beside=True) == pytest.approx(0.0175)
    model.observe_beside(4, 0.010)  # faster than alone says nothing below 1
    assert model.beside_factor == pytest.approx(1.375)
    assert model.seconds(4) == 0.020 and model.observations == 0  # the sizes' own estimates are untouched


def test_the_reported_line_fits_the_estimates():
    fixed_s, per_instance_s = CostModel({1: 0.011, 2: 0.012, 4: 0.014, 8: 0.018}).line()
    assert fixed_s == pytest.approx(0.010) and per_instance_s == pytest.approx(0.001)
    described = CostModel({1: 0.011, 2: 0.012}).describe()
    assert described["ms_by_batch_size"] == {"1": 11.0, "2": 12.0}


def test_larger_batches_are_used_while_they_pay():
    # Throughput per size: 100, 190, 350, 400 (+14%), 410 (+2.5% over 32) instances/s.
    seconds = {1: 0.01, 2: 2 / 190, 4: 4 / 350, 8: 8 / 400, 16: 16 / 410}
    assert largest_paying_size(seconds) == 8
    # One size that times badly does not stop the walk when the next size pays over the best so far.
    assert largest_paying_size({1: 0.01, 2: 0.03, 4: 0.02}) == 4


def test_a_model_needs_a_positive_time():
    with pytest.raises(ValueError):
        CostModel({})
    with pytest.raises(ValueError):
        CostModel({1: 0.0})
