"""The built-in schedules, replayed by the simulator, reproduce the published formulas.

Reference: /work/shared/reference/bubbles.md. Zero-bubble notation: F forward, B
backward for inputs, W backward for weights (all per stage and micro-batch); DualPipe
writes its full backward as B + W and F&B for an overlapped forward + full backward.
"Bubble" is the simulator's: the largest per-device ``makespan - busy``. With equal
stage times every rank has the same busy time, so it is every rank's bubble.

Each case lies inside the conditions the generator's docstring states for its formula.
"""

from __future__ import annotations

import pytest

from planner.schedules import generate
from planner.schedules.examples import example_scenario
from simulator.engine import simulate
from simulator.metrics import build_report

MS = 1e-3
GB = 1e9

#: (F, B, W) in ms: equal, transformer-like, backward-heavy, forward-heavy, tiny W, forward > B + W.
TIMES = [(1, 1, 1), (1, 1.5, 0.5), (1, 2, 1), (2, 1, 1), (1.5, 1, 0.25), (3, 1, 0.5)]


def _replay(name, *, stages, m, F, B, W, fb_overlap=0.0, w_retained_gb=0.0, pipeline=None):
    scenario = example_scenario(stages=stages, micro_batches=m, F=F, B=B, W=W, fb_overlap=fb_overlap,
                                w_retained_gb=w_retained_gb, static_gb=10, pipeline=pipeline)
    timeline = simulate(scenario.problem, generate(name, scenario))
    return build_report(timeline)


def _f_and_b(F, B, W, overlap):
    """DualPipe's F&B: a forward overlapped with a full backward (the simulator's rule)."""
    full = B + W
    return max(F, full) + (1 - overlap) * min(F, full)


# -- GPipe and 1F1B: (p - 1)(F + B + W), for any m ---------------------------------------
CLASSIC = [(p, m, *t) for p, m in [(2, 1), (3, 7), (4, 8), (4, 3), (8, 20)] for t in TIMES]


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p, m, F, B, W", CLASSIC)
def test_gpipe_and_1f1b_bubble_is_p_minus_1_full_passes(name, p, m, F, B, W):
    report = _replay(name, stages=p, m=m, F=F, B=B, W=W)
    assert report.max_bubble == pytest.approx((p - 1) * (F + B + W) * MS, abs=1e-12)
    assert report.makespan == pytest.approx((m + p - 1) * (F + B + W) * MS, abs=1e-12)


# -- interleaved 1F1B: Megatron's (p - 1)(t_f + t_b) / v, with t_f = vF, t_b = v(B + W) -----
INTERLEAVED = [(p, v, m, *t) for p, v, m in [(2, 2, 4), (4, 2, 8), (4, 3, 12), (3, 2, 9), (8, 2, 16)] for t in TIMES]


@pytest.mark.parametrize("p, v, m, F, B, W", INTERLEAVED)
def test_interleaved_1f1b_bubble_is_megatron_formula(p, v, m, F, B, W):
    report = _replay("interleaved-1f1b", stages=v * p, m=m, F=F, B=B, W=W, pipeline={"chunks": v})
    t_f, t_b = v * F, v * (B + W)  # one rank's whole share of the model
    assert report.max_bubble == pytest.approx((p - 1) * (t_f + t_b) / v * MS, abs=1e-12)
    assert len(report.devices) == p


# -- ZB-H1: (p - 1)(F + B - W) for W <= F, W <= B, m >= p ---------------------------------
ZB_H1 = [(p, m, *t) for p, m in [(2, 2), (3, 5), (4, 4), (4, 9), (8, 12)] for t in TIMES]


@pytest.mark.parametrize("p, m, F, B, W", ZB_H1)
def test_zb_h1_bubble(p, m, F, B, W):
    assert W <= F and W <= B
    report = _replay("zb-h1", stages=p, m=m, F=F, B=B, W=W)
    assert report.max_bubble == pytest.approx((p - 1) * (F + B - W) * MS, abs=1e-12)


# -- ZB-H2: (p - 1)(F + B - 2W) for W <= F, 2W <= B, m >= 2p - 1 --------------------------
ZB_H2_TIMES = [(1, 2, 1), (1, 1.5, 0.5), (1.5, 1, 0.25), (3, 1, 0.5), (2, 3, 1), (1, 1, 0.5)]
ZB_H2 = [(p, m, *t) for p, m in [(2, 3), (3, 7), (4, 7), (4, 10), (8, 20)] for t in ZB_H2_TIMES]


@pytest.mark.parametrize("p, m, F, B, W", ZB_H2)
def test_zb_h2_bubble(p, m, F, B, W):
    assert W <= F and 2 * W <= B
    report = _replay("zb-h2", stages=p, m=m, F=F, B=B, W=W)
    assert report.max_bubble == pytest.approx((p - 1) * (F + B - 2 * W) * MS, abs=1e-12)


@pytest.mark.parametrize("p, m", [(3, 6), (4, 8), (8, 16)])
@pytest.mark.parametrize("F, B, W", [(1, 1, 1), (2, 1, 1), (1.5, 1.5, 1)])
def test_zb_h2_is_zero_bubble_inside_its_parallelogram(p, m, F, B, W):
    """With F + B < 2 W + F the formula drops below (p - 1) F, the time the last rank must wait
    for its first input, so no synchronous iteration reaches it. The paper's zero bubble is
    per rank from its first task to its last (the optimizer step is not synchronised, so
    iterations overlap as parallelograms): rank 0's idle is exactly the formula, the
    others' is less, and the synchronous bubble is the start-up floor (p - 1) F."""
    scenario = example_scenario(stages=p, micro_batches=m, F=F, B=B, W=W)
    timeline = simulate(scenario.problem, generate("zb-h2", scenario))
    report = build_report(timeline)
    formula = (p - 1) * (F + B - 2 * W) * MS
    for rank, stats in enumerate(report.devices):
        ran = [item for item in timeline.executed if item.device == stats.device]
        span = max(item.end for item in ran) - min(item.start for item in ran)
        assert stats.busy == pytest.approx(m * (F + B + W) * MS)
        assert span - stats.busy == pytest.approx(formula * (p - 1 - rank) / (p - 1), abs=1e-12)
    assert report.max_bubble == pytest.approx(max(formula, (p - 1) * F * MS), abs=1e-12)


# -- DualPipe and DualPipeV: (p/2 - 1)(F&B + B_full - 3W), for F = B, W <= F ------------
DUAL = [(p, m, F, W, overlap) for p, m in [(2, 4), (4, 8), (4, 14), (6, 12), (8, 20)]
        for F, W, overlap in [(1, 1, 0.0), (1, 0.5, 0.5), (2, 0.5, 1.0)]]


@pytest.mark.parametrize("p, m, F, W, overlap", DUAL)
def test_dualpipe_bubble(p, m, F, W, overlap):
    """The published formula describes DualPipe with every output sent when its pass ends."""
    B = F  # the published formula is stated for a forward as long as an input-backward
    report = _replay("dualpipe-per-pass", stages=p, m=m, F=F, B=B, W=W, fb_overlap=overlap)
    expected = (p / 2 - 1) * (_f_and_b(F, B, W, overlap) + (B + W) - 3 * W)
    assert report.max_bubble == pytest.approx(expected * MS, abs=1e-12)


@pytest.mark.parametrize("p, m, F, W, overlap", DUAL)
def test_dualpipe_at_the_reference_send_points_keeps_the_published_bubble(p, m, F, W, overlap):
    """deepseek-ai/DualPipe queues three sends until after the next computation; with
    T_F = T_B none of those outputs is on the critical path, so the bubble is the same
    (benchmarks/dualpipe_reference.py replays the reference's step() with
    batch_isend_irecv semantics and gets the same makespans)."""
    faithful = _replay("dualpipe", stages=p, m=m, F=F, B=F, W=W, fb_overlap=overlap)
    per_pass = _replay("dualpipe-per-pass", stages=p, m=m, F=F, B=F, W=W, fb_overlap=overlap)
    assert faithful.max_bubble == pytest.approx(per_pass.max_bubble, abs=1e-12)
    assert faithful.makespan == pytest.approx(per_pass.makespan, abs=1e-12)


@pytest.mark.parametrize(("p", "m", "F", "B", "W"), [(4, 8, 1, 1, 1), (6, 12, 1, 1, 1), (8, 20, 1, 1, 1), (8, 24, 1, 1.5, 0.5),
                                                     (8, 24, 2, 1, 1), (8, 24, 1, 2, 1), (4, 10, 1.5, 1, 0.5)])
def test_dualpipe_replays_like_an_independent_model_of_the_reference_communication(p, m, F, B, W):
    """planner.schedules.dualpipe_reference walks deepseek-ai/DualPipe's step() and solves
    batch_isend_irecv's waits; it shares no code with the engine."""
    from planner.schedules.dualpipe_reference import reference_makespan

    replayed = _replay("dualpipe", stages=p, m=m, F=F, B=B, W=W)
    assert replayed.makespan == pytest.approx(reference_makespan(p, m, (F, B, W)) * MS, abs=1e-12)


def test_dualpipe_marks_exactly_the_reference_deferred_sends():
    """Step 2: h + 1 chunk-0 forwards on each of the p - 2 outer ranks; the turning points:
    their last step-2 chunk-1 forward and their first step-4 forward."""
    p = 8
    scenario = example_scenario(stages=p, micro_batches=20)
    schedule = generate("dualpipe", scenario)
    deferred = {d: sum(e.send_after_next for e in entries) for d, entries in schedule.devices.items()}
    expected = {f"gpu{r}": (min(r, p - 1 - r) + 1 if min(r, p - 1 - r) < p // 2 - 1 else 2) for r in range(p)}
    assert deferred == expected
    assert not any(e.send_after_next for _, e in generate("dualpipe-per-pass", scenario).entries())


DUAL_V = [(p, m, F, W, overlap) for p, m in [(1, 2), (2, 4), (2, 7), (3, 9), (4, 10), (4, 13)]
          for F, W, overlap in [(1, 1, 0.0), (1, 0.5, 0.5), (2, 0.5, 1.0)]]


@pytest.mark.parametrize("ranks, m, F, W, overlap", DUAL_V)
def test_dualpipev_bubble_matches_dualpipe_on_twice_the_stages(ranks, m, F, W, overlap):
    B = F
    stages = 2 * ranks
    report = _replay("dualpipev", stages=stages, m=m, F=F, B=B, W=W, fb_overlap=overlap)
    expected = (stages / 2 - 1) * (_f_and_b(F, B, W, overlap) + (B + W) - 3 * W)
    assert report.max_bubble == pytest.approx(expected * MS, abs=1e-12)
    assert len(report.devices) == ranks


# -- activation memory -------------------------------------------------------------------
def _activation_peaks(name, *, stages, m, w_retained_gb, pipeline=None, F=1, B=1.5, W=0.5):
    report = _replay(name, stages=stages, m=m, F=F, B=B, W=W, w_retained_gb=w_retained_gb, pipeline=pipeline)
    return [d.activation_peak / GB for d in report.devices]


@pytest.mark.parametrize("p, m", [(2, 3), (4, 8), (8, 11)])
def test_gpipe_holds_every_micro_batch(p, m):
    assert _activation_peaks("gpipe", stages=p, m=m, w_retained_gb=0.5) == pytest.approx([m] * p)


@pytest.mark.parametrize("p, m", [(2, 3), (4, 8), (8, 11)])
def test_1f1b_rank0_holds_p_micro_batches(p, m):
    peaks = _activation_peaks("1f1b", stages=p, m=m, w_retained_gb=0.5)
    assert peaks[0] == pytest.approx(p)
    assert peaks == pytest.approx([p - r for r in range(p)])


@pytest.mark.parametrize("p, m, retained", [(2, 3, 0.5), (4, 8, 0.5), (8, 11, 0.25), (4, 4, 0.0)])
def test_zb_h1_per_worker_activation(p, m, retained):
    """(p - i + 1) M_B + (i - 1) M_W for worker i = 1..p."""
    peaks = _activation_peaks("zb-h1", stages=p, m=m, w_retained_gb=retained)
    assert peaks == pytest.approx([(p - i + 1) * 1.0 + (i - 1) * retained for i in range(1, p + 1)])


@pytest.mark.parametrize("p, m, retained", [(2, 3, 0.5), (4, 7, 0.5), (8, 20, 0.25), (4, 9, 0.0)])
def test_zb_h2_per_worker_activation(p, m, retained):
    """(2p - 2i + 1) M_B + (2i - 2) M_W for worker i = 1..p; (2p - 1) M_B at worker 1."""
    peaks = _activation_peaks("zb-h2", stages=p, m=m, w_retained_gb=retained)
    assert peaks == pytest.approx([(2 * p - 2 * i + 1) * 1.0 + (2 * i - 2) * retained for i in range(1, p + 1)])


@pytest.mark.parametrize("p, m, retained", [(2, 4, 0.0), (4, 8, 0.5), (6, 14, 0.25), (8, 20, 0.5)])
def test_dualpipe_holds_p_plus_1_micro_batch_stages_per_rank(p, m, retained):
    peaks = _activation_peaks("dualpipe", stages=p, m=m, w_retained_gb=retained)
    assert peaks == pytest.approx([p + 1] * p)


@pytest.mark.parametrize("ranks, m, retained", [(2, 4, 0.0), (4, 10, 0.5), (3, 11, 0.25)])
def test_dualpipev_holds_stages_plus_1_micro_batch_stages_per_rank(ranks, m, retained):
    peaks = _activation_peaks("dualpipev", stages=2 * ranks, m=m, w_retained_gb=retained)
    assert peaks == pytest.approx([2 * ranks + 1] * ranks)


@pytest.mark.parametrize("p, v, m", [(2, 2, 4), (4, 2, 8), (4, 3, 12)])
def test_interleaved_holds_its_warm_up_plus_one_chunk(p, v, m):
    """Rank r warms up with 2(p - 1 - r) + (v - 1)p forwards and runs one more before its
    first backward frees anything (Megatron's schedule; a chunk is one stage)."""
    peaks = _activation_peaks("interleaved-1f1b", stages=v * p, m=m, w_retained_gb=0.5, pipeline={"chunks": v})
    assert peaks == pytest.approx([2 * (p - 1 - r) + (v - 1) * p + 1 for r in range(p)])

