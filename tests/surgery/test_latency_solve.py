"""The multiple-choice knapsack behind the latency allocator, against brute force."""

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rankwise.surgery.latency_solve import hull, solve, usable


def brute(layers, budget, fixed, min_gain):
    best = None
    allowed = [usable(opts, min_gain) for opts in layers]
    for picks in itertools.product(*allowed):
        total = fixed + sum(layers[i][j][0] for i, j in enumerate(picks))
        lost = sum(layers[i][j][1] for i, j in enumerate(picks))
        if total <= budget * (1 + 1e-12) and (best is None or lost < best):  # solve()'s tolerance
            best = lost
    return best


def test_hand_instance():
    # layer 0: dense 10 ms; 6 ms losing 0.1; 3 ms losing 0.5. layer 1: dense 10; 5 ms losing 0.3
    layers = [[(10.0, 0.0), (6.0, 0.1), (3.0, 0.5)], [(10.0, 0.0), (5.0, 0.3)]]
    s = solve(layers, budget_ms=16.0, fixed_ms=0.0)
    assert s.picks == [1, 0] and s.met and s.total_ms == 16.0  # 0.1 lost beats 0.3
    s = solve(layers, budget_ms=11.0, fixed_ms=0.0)
    assert s.picks == [1, 1] and s.total_ms == 11.0 and s.lost == pytest.approx(0.4)
    s = solve(layers, budget_ms=5.0, fixed_ms=0.0)
    assert not s.met and s.picks == [2, 1]  # the fastest plan when out of reach


def test_slower_and_dominated_options_are_dropped():
    opts = [(10.0, 0.0), (12.0, 0.1), (9.9, 0.05), (6.0, 0.2), (7.0, 0.3), (4.0, 0.25)]
    assert usable(opts, 0.03) == [0, 3, 5]  # 12 ms > dense, 9.9 < 3 % faster, 7 ms dominated
    # hull: (10, 0) → (6, .2) → (4, .25): slopes .05 then .025, so 6 ms is not on the hull
    assert hull(opts, [0, 3, 5]) == [0, 5]


option = st.tuples(st.floats(0.5, 20.0), st.floats(0.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(option, min_size=1, max_size=4), min_size=1, max_size=3),
       st.floats(0.2, 1.0), st.floats(0.0, 5.0))
@example(raw=[[(10.0, 0.0)]], ratio=0.9999999999999999, fixed=0.0)  # budget 1 ulp below dense
def test_meets_the_budget_whenever_any_plan_does(raw, ratio, fixed):
    layers = [[(10.0, 0.0), *opts] for opts in raw]
    budget = ratio * (fixed + 10.0 * len(layers))
    s = solve(layers, budget, fixed)
    best = brute(layers, budget, fixed, 0.03)
    assert s.met == (best is not None)
    for i, j in enumerate(s.picks):
        assert j == 0 or layers[i][j][0] < 0.97 * 10.0
    if best is not None:
        assert s.total_ms <= budget * (1 + 1e-12)
        assert s.lost >= best - 1e-9
