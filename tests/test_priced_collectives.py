"""Priced collectives: a call that holds its members for its α–β price instead of replaying
its steps on links. Exact timelines on a tiny cluster, agreement with the link replay when
nothing contends, no phantom members, the layout builder's modes, and a property: a
member's next entry never starts before the collective it called has ended."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.layouts.build import build_layout_run, link_events
from planner.layouts.step import simulate_layout, step_result
from simulator.collectives import Collective, collective_time
from simulator.engine import replay, simulate
from simulator.errors import InputError
from simulator.problem import Task
from simulator.scenario import load_scenario
from simulator.schedule import CollectiveCall, Schedule, load_schedule, save_schedule, schedule_from_dict
from simulator.validation import static_violations

#: Four GPUs on one switch (100 GB/s, 2 us a route), one 1-ms-per-pass operator each.
SCENARIO = {
    "name": "dp4",
    "model": {"type": "graph", "operators": [{"name": f"s{i}", "time_ms": {"F": 1, "B": 1, "W": 1}} for i in range(4)]},
    "cluster": {"devices": 4, "device": {"type": "generic", "memory_gb": 80, "peak_tflops": 100},
                "interconnect": {"bandwidth_GBps": 100, "latency_us": 2}},
    "workload": {"micro_batches": 1},
}
GPUS = ("gpu0", "gpu1", "gpu2", "gpu3")


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    path = tmp_path_factory.mktemp("priced") / "dp4.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return load_scenario(path).problem


def _step(group: tuple[str, ...], priced: bool, size: float = 1e9) -> Schedule:
    """Every member runs its F, B, W and then all-reduces ``size`` bytes over ``group``."""
    call = CollectiveCall("grads", Collective("all_reduce", group, size), after=(Task(f"s{GPUS.index(group[0])}", 0, "W"),),
                          priced=priced)
    return Schedule.from_lists({d: [Task(f"s{i}", 0, k) for k in "FBW"] + [call] for i, d in enumerate(GPUS) if d in group})


def test_a_priced_all_reduce_lasts_exactly_the_ring_price(problem):
    timeline = simulate(problem, _step(GPUS, priced=True))
    (record,) = timeline.collectives
    ring = 2 * 3 * 2e-6 + 2 * 3 / 4 * 1e9 / 100e9  # 2(n−1)α + 2(n−1)/n · S/B, n = 4 (Thakur et al. 2005)
    assert record.idle == pytest.approx(ring, rel=1e-12)
    assert (record.start, record.end) == pytest.approx((3e-3, 3e-3 + ring), rel=1e-12)
    assert record.priced and record.steps == ((record.start, record.end),)
    assert timeline.collective_transfers == () and timeline.makespan == pytest.approx(3e-3 + ring, rel=1e-12)


def test_priced_and_links_agree_exactly_on_an_idle_cluster(problem):
    priced, links = (simulate(problem, _step(GPUS, priced=p)) for p in (True, False))
    assert len(links.collective_transfers) == 6 * 4  # 2(n−1) steps of n transfers
    spans = [sorted((e.device, str(e.entry), e.start, e.end) for e in t.executed) for t in (priced, links)]
    assert [row[:2] for row in spans[0]] == [row[:2] for row in spans[1]]
    for a, b in zip(*spans):
        assert a[2:] == pytest.approx(b[2:], rel=1e-12, abs=1e-15)


def test_a_priced_call_does_not_wait_for_members_the_schedule_leaves_out(tmp_path):
    """gpu2 and gpu3 (replicas not replayed) list nothing: priced, the call runs without them."""
    path = tmp_path / "two-replayed.yaml"
    path.write_text(yaml.safe_dump({**SCENARIO, "model": {**SCENARIO["model"], "operators": SCENARIO["model"]["operators"][:2]}}))
    problem = load_scenario(path).problem

    def alone(priced: bool) -> Schedule:
        call = CollectiveCall("grads", Collective("all_reduce", GPUS, 1e9), priced=priced)
        return Schedule.from_lists({d: [Task(f"s{i}", 0, k) for k in "FBW"] + [call] for i, d in enumerate(GPUS[:2])})

    assert [v.kind for v in static_violations(problem, alone(False))] == ["deadlock", "deadlock"]
    timeline = simulate(problem, alone(True))
    (record,) = timeline.collectives
    assert record.end - record.start == pytest.approx(collective_time(Collective("all_reduce", GPUS, 1e9), problem.cluster))


def test_priced_round_trips_and_a_bad_value_names_the_field(tmp_path):
    schedule = _step(GPUS, priced=True)
    save_schedule(schedule, tmp_path / "s.json")
    assert load_schedule(tmp_path / "s.json") == schedule
    doc = {"collectives": {"c": {"op": "all_reduce", "group": ["gpu0", "gpu1"], "priced": "yes"}},
           "devices": {"gpu0": [{"collective": "c"}], "gpu1": [{"collective": "c"}]}}
    with pytest.raises(InputError) as info:
        schedule_from_dict(doc)
    assert info.value.field == "collectives.c.priced"


def test_the_layout_builder_prices_without_phantoms_and_says_so():
    """dp4 tp2 on 8 H100 (the bundled LLaMA-7B scenario): every replica replayed, DP on links."""
    scenario = load_scenario("scenarios/llama7b-8xh100.yaml")
    layout = replace(scenario.parallel, dp=4, tp=2, pp=1, zero=1, global_batch_size=16)
    priced = build_layout_run(scenario, layout, collectives="priced")
    assert priced.collectives == "priced" and priced.phantoms == ()
    assert all(call.priced for call in priced.schedule.collectives.values())
    assert build_layout_run(scenario, layout, collectives="auto", event_budget=0).collectives == "priced"
    links = build_layout_run(scenario, layout)  # auto: affordable, so links
    assert links.collectives == "links" and not any(c.priced for c in links.schedule.collectives.values())
    assert link_events(priced) == sum(len(c.collective.group) * 2 * (len(c.collective.group) - 1)
                                      for c in links.schedule.collectives.values() if c.collective.op == "all_reduce") \
        + sum(len(c.collective.group) * (len(c.collective.group) - 1)
              for c in links.schedule.collectives.values() if c.collective.op != "all_reduce")
    rows = {run.collectives: step_result(run, replay(run.problem, run.schedule), "x") for run in (priced, links)}
    assert "collectives priced" in rows["priced"].simulated and "priced" not in rows["links"].simulated
    assert rows["priced"].step == pytest.approx(rows["links"].step, rel=0.05)
    assert rows["priced"].step <= rows["links"].step * (1 + 1e-9)  # links only adds contention
    with pytest.raises(ValueError):
        simulate_layout(scenario, layout, collectives="tree")


@st.composite
def _schedules(draw) -> Schedule:
    """Each GPU's F, B, W, with collectives over random groups interleaved; every member calls
    the collectives of a stream in one global order (so nothing hangs)."""
    calls = []
    for k in range(draw(st.integers(1, 6))):
        group = tuple(sorted(draw(st.sets(st.sampled_from(GPUS), min_size=2, max_size=4))))
        op = draw(st.sampled_from(["all_reduce", "all_gather", "all_to_all", "reduce_scatter"]))
        calls.append(CollectiveCall(f"c{k}", Collective(op, group, draw(st.sampled_from([0.0, 1e6, 3e8]))),
                                    stream=draw(st.sampled_from(["comm", "compute"])), priced=True))
    lists = {}
    for i, device in enumerate(GPUS):
        items: list = [Task(f"s{i}", 0, k) for k in "FBW"]
        for call in (c for c in calls if device in c.collective.group):
            at = draw(st.integers(0, len(items)))
            later = [j for j, item in enumerate(items) if isinstance(item, CollectiveCall)]
            items.insert(max([at, *[j + 1 for j in later]]), call)  # after this device's earlier calls
        lists[device] = items
    return Schedule.from_lists(lists)


@settings(max_examples=60, deadline=None)
@given(_schedules())
def test_a_priced_collective_ends_before_any_members_next_entry_starts(problem, schedule):
    timeline = replay(problem, schedule)
    assert timeline.completed and timeline.ok
    records = {r.name: r for r in timeline.collectives}
    by_stream: dict[tuple[str, str], list] = {}
    for done in timeline.executed:
        by_stream.setdefault((done.device, done.stream), []).append(done)
    for runs in by_stream.values():
        for before, after in zip(runs, runs[1:]):
            assert after.start >= before.end - 1e-15
    for name, record in records.items():
        assert record.end - record.start == pytest.approx(collective_time(schedule.collectives[name].collective,
                                                                          problem.cluster), rel=1e-12, abs=1e-15)
        for device in record.group:
            later = [e for e in timeline.executed if e.device == device and e.stream == schedule.collectives[name].stream
                     and e.start > record.start and e.entry.collective is None]
            assert all(e.start >= record.end - 1e-15 for e in later)


def test_simulate_prices_a_layouts_collectives_when_asked_and_says_so(capsys):
    from opplan.cli import main

    assert main(["simulate", "scenarios/deepseek-moe-h800.yaml", "--collectives", "priced"]) == 0
    out = capsys.readouterr().out
    assert "deepseek-moe-h800: layout dp16 ep8 zero1 (replayed ranks, collectives priced)" in out
    assert main(["simulate", "scenarios/pipeline-4x8.yaml", "--collectives", "links"]) == 2
    assert capsys.readouterr().err.strip() == \
        "opplan: error: --collectives: applies to a scenario's parallel: layout, not to a schedule"


class TestUncontended:
    """Which calls :func:`simulator.contention.uncontended` may price without changing the replay."""

    def test_one_group_on_one_stream_is_uncontended(self, problem):
        from simulator.contention import uncontended

        assert uncontended(problem, _step(GPUS, priced=False)) == {"grads"}

    def test_two_groups_sharing_a_gpus_ports_or_two_streams_contend(self, problem):
        from simulator.contention import uncontended

        left = CollectiveCall("left", Collective("all_reduce", GPUS[:2], 1e9))
        right = CollectiveCall("right", Collective("all_reduce", GPUS[1:3], 1e9))
        apart = CollectiveCall("apart", Collective("all_reduce", GPUS[2:], 1e9), stream="compute")
        lists = {d: [Task(f"s{i}", 0, k) for k in "FBW"] for i, d in enumerate(GPUS)}
        for call in (left, right, apart):
            for device in call.collective.group:
                lists[device].append(call)
        # gpu1's ports carry left and right; gpu2's carry right and apart (another stream).
        assert uncontended(problem, Schedule.from_lists(lists)) == frozenset()
        del lists["gpu1"][-1]
        del lists["gpu2"][-2]
        lists["gpu2"].remove(apart)
        lists["gpu3"].remove(apart)
        lists["gpu2"].append(CollectiveCall("far", Collective("all_reduce", GPUS[2:], 1e9)))
        lists["gpu3"].append(lists["gpu2"][-1])
        assert uncontended(problem, Schedule.from_lists(lists)) == {"left", "far"}

    def test_a_pipeline_send_on_its_links_contends(self, make_problem, op):
        from simulator.contention import uncontended

        problem = make_problem([op("s0"), op("s1")], [("s0", "s1", 1e9)], devices=2, bandwidth=1e9, mode="inference")
        send = CollectiveCall("p2p", Collective("send_recv", ("gpu0", "gpu1"), 2e9))
        schedule = Schedule.from_lists({"gpu0": [send, Task("s0", 0, "F")], "gpu1": [send, Task("s1", 0, "F")]})
        assert uncontended(problem, schedule) == frozenset()


def test_auto_prices_only_what_nothing_contends_with_and_replays_the_same():
    """DP16 + EP8 MoE: its EP all-to-alls and DP buckets share NICs (stay on links); FSDP on
    the same model has one class of collectives per group (all priced), and the same step."""
    scenario = load_scenario("scenarios/deepseek-moe-h800.yaml")
    moe = build_layout_run(scenario, scenario.parallel)
    assert moe.collectives == "links" and not any(c.priced for c in moe.schedule.collectives.values())
    fsdp = replace(scenario.parallel, ep=1, zero=3)
    auto = build_layout_run(scenario, fsdp)
    assert auto.collectives == "links" and all(c.priced for c in auto.schedule.collectives.values())
    links = build_layout_run(scenario, fsdp, collectives="links")
    steps = [step_result(run, replay(run.problem, run.schedule), "x").step for run in (auto, links)]
    assert steps[0] == pytest.approx(steps[1], rel=1e-12)
