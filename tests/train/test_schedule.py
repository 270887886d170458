import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankwise.errors import ConfigError
from rankwise.train.schedule import LRFactor, make_scheduler


@settings(max_examples=25, deadline=None)
@given(warm=st.integers(1, 20), total=st.integers(21, 200))
def test_warmup_is_linear_and_reaches_one(warm, total):
    f = LRFactor("none", total_steps=total, warmup_steps=warm)
    values = [f(s) for s in range(warm)]
    assert values[-1] == pytest.approx(1.0)
    diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(d == pytest.approx(1.0 / warm) for d in diffs)
    assert f(warm) == 1.0 and f(total - 1) == 1.0


@settings(max_examples=25, deadline=None)
@given(m1=st.integers(1, 50), gap=st.integers(1, 50), gamma=st.floats(0.01, 0.9))
def test_step_decays_exactly_at_milestones(m1, gap, gamma):
    m2 = m1 + gap
    f = LRFactor("step", total_steps=m2 + 10, milestone_steps=[m2, m1], gamma=gamma)
    assert f(m1 - 1) == 1.0
    assert f(m1) == pytest.approx(gamma)
    assert f(m2 - 1) == pytest.approx(gamma)
    assert f(m2) == pytest.approx(gamma**2)


@settings(max_examples=25, deadline=None)
@given(warm=st.integers(0, 10), total=st.integers(11, 300))
def test_cosine_decreases_to_zero(warm, total):
    f = LRFactor("cosine", total_steps=total, warmup_steps=warm)
    after = [f(s) for s in range(warm, total + 1)]
    assert after[0] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:], strict=False))
    assert after[-1] == pytest.approx(0.0, abs=1e-12)
    mid = warm + (total - warm) / 2
    if mid == int(mid):
        assert f(int(mid)) == pytest.approx(0.5)


def test_unknown_schedule_raises():
    with pytest.raises(ConfigError, match="cosine"):
        LRFactor("linear", total_steps=10)


def test_scheduler_steps_per_iteration_with_epoch_milestones():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = make_scheduler(opt, "step", epochs=4, steps_per_epoch=5, milestones=[2, 3],
                           gamma=0.1, warmup_epochs=1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2 / 5)  # warm-up over the first epoch (5 steps)
    assert lrs[4] == pytest.approx(0.2)
    assert lrs[9] == pytest.approx(0.2)
    assert lrs[10] == pytest.approx(0.02)  # epoch-2 milestone = step 10
    assert lrs[15] == pytest.approx(0.002)
    assert all(math.isfinite(x) for x in lrs)


def test_scheduler_state_dict_loads_with_weights_only(tmp_path):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = make_scheduler(opt, "cosine", epochs=2, steps_per_epoch=3, warmup_epochs=0.5)
    for _ in range(4):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = make_scheduler(opt2, "cosine", epochs=2, steps_per_epoch=3, warmup_epochs=0.5)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 4
    assert sched2.get_last_lr() == sched.get_last_lr()
