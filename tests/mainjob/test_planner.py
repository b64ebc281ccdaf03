"""The main job's step planner: plans from measured speed, follows load changes, reserves time for what follows."""
import pytest

from slimkv.mainjob.planner import StepPlanner


def planner(**kw):
    defaults = dict(deadline=100.0, tokens_per_step=1000, eval_tokens=15_000, after_seconds=10.0)
    return StepPlanner(**{**defaults, **kw})


def test_plan_fills_the_time_left_after_the_final_work():
    p = planner()
    p.observe_step(30.0, provisional=True)
    p.observe_step(1.0)
    # the provisional first step (setup, warm-up) is replaced, not averaged in
    assert p.step_seconds == 1.0 and p.tokens_per_s == 1000.0
    # left = 100 - 2 - (15000 / (1.5 * 1000) + 10) = 78 s -> 78 more steps of 1000 tokens at 1000 tokens/s
    assert p.after_training_seconds() == pytest.approx(20.0)
    assert p.planned_steps(step=2, now=2.0) == 80
    assert p.eta_seconds(step=2, planned=80) == pytest.approx(78 + 20)
    # a timed evaluation replaces the assumed forward speed
    p.observe_eval(tokens=4000, seconds=1.0)
    assert p.after_training_seconds() == pytest.approx(15000 / 4000 + 10)


def test_plan_follows_a_slower_machine_and_never_goes_below_the_minimum():
    p = planner()
    p.observe_step(1.0)
    fast = p.planned_steps(step=1, now=1.0)
    for _ in range(40):
        p.observe_step(2.0)
    assert p.step_seconds == pytest.approx(2.0, rel=0.05)
    slow = p.planned_steps(step=1, now=1.0)
    assert slow < fast and slow == pytest.approx(1 + (100 - 1 - (15000 / 750 + 10)) / 2.0, abs=2)
    # past the deadline the plan stops now, but never below min_steps
    assert p.planned_steps(step=30, now=200.0) == 30
    assert p.planned_steps(step=3, now=200.0) == p.min_steps


def test_average_forgets_old_load_with_the_given_half_life():
    p = planner(half_life=1.0)
    p.observe_step(4.0)
    p.observe_step(2.0)
    assert p.step_seconds == pytest.approx(3.0) and p.planning_seconds == pytest.approx(3.0)


def test_a_sudden_slowdown_shrinks_the_plan_at_once_a_speedup_grows_it_gradually():
    p = planner()
    for _ in range(20):
        p.observe_step(1.0)
    steady = p.planned_steps(step=20, now=20.0)
    p.observe_step(3.0)
    # the plan assumes the slow step's pace right away, although the average has moved only a little
    assert p.step_seconds < 1.3 and p.planning_seconds == 3.0
    assert p.planned_steps(step=21, now=23.0) < 21 + (steady - 20) / 2.5
    p.observe_step(0.5)
    assert p.planning_seconds == p.step_seconds > 0.5
    with pytest.raises(ValueError, match="needs at least one observed step"):
        planner().planned_steps(0, 0.0)
