"""Properties of the replay on random instances (hypothesis).

Random DAGs of 3-10 operators with random tensor sizes, 2-4 devices (ideal, a full
mesh of finite links, or a switch), 1-4 micro-batches of training or inference, random
placements and random per-device orders that follow one global topological order.
Such schedules cannot deadlock, so a replay must accept them unless memory runs out,
and its timeline must respect every rule; a schedule with one injected fault must be
rejected.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from simulator.cluster import Cluster, Device, Link
from simulator.engine import replay
from simulator.errors import ScheduleRejected
from simulator.graph import Edge, Operator, OperatorGraph
from simulator.problem import Problem, Task, Workload
from simulator.schedule import Entry, Schedule

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

times = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
sizes = st.sampled_from([0.0, 1.0, 2.0, 5.0])


@st.composite
def graphs(draw) -> OperatorGraph:
    count = draw(st.integers(3, 10))
    operators = []
    for i in range(count):
        activation = draw(sizes)
        operators.append(
            Operator(
                f"o{i}",
                measured={"*": {"F": draw(times), "B": draw(times), "W": draw(times)}},
                activation_bytes=activation,
                w_retained_bytes=activation * draw(st.sampled_from([0.0, 0.5])),
                static_bytes=draw(sizes),
                workspace_bytes=draw(st.sampled_from([0.0, 1.0])),
                stream=draw(st.sampled_from(["compute"] * 5 + ["comm"])),
            )
        )
    edges = []
    for dst in range(1, count):
        for src in sorted(draw(st.sets(st.integers(0, dst - 1), max_size=3))):
            edges.append(Edge(f"o{src}", f"o{dst}", draw(sizes)))
    return OperatorGraph("random", tuple(operators), tuple(edges))


@st.composite
def clusters(draw, memory: float = 1e6) -> Cluster:
    names = [f"gpu{i}" for i in range(draw(st.integers(2, 4)))]
    devices = tuple(Device(name, "t", memory, 1e12) for name in names)
    kind = draw(st.sampled_from(["ideal", "mesh", "switch"]))
    if kind == "ideal":
        return Cluster("ideal", devices, ideal_interconnect=True)
    bandwidth = st.sampled_from([1.0, 2.0, 4.0])
    latency = st.sampled_from([0.0, 0.25, 0.5])
    if kind == "mesh":
        links = [Link(f"{a}->{b}", a, b, draw(bandwidth), draw(latency)) for a in names for b in names if a != b]
    else:
        links = []
        for name in names:
            links.append(Link(f"{name}.out", name, "switch", draw(bandwidth), draw(latency)))
            links.append(Link(f"{name}.in", "switch", name, draw(bandwidth), draw(latency)))
    return Cluster(kind, devices, tuple(links))


@st.composite
def instances(draw, memory: float = 1e6) -> tuple[Problem, Schedule]:
    """A problem and a schedule that follows one global topological order of its tasks."""
    workload = Workload(draw(st.integers(1, 4)), draw(st.sampled_from(["training", "inference"])))
    problem = Problem(draw(graphs()), draw(clusters(memory)), workload)
    rng: random.Random = draw(st.randoms(use_true_random=False))
    devices = problem.cluster.device_names
    home = {(op, mb): rng.choice(devices) for op in problem.graph.by_name for mb in range(workload.micro_batches)}
    # A random linear extension of the task DAG (Kahn's algorithm with random picks).
    tasks = list(problem.tasks())
    waiting_for = {task: len(problem.dependencies(task)) for task in tasks}
    ready = [task for task in tasks if not waiting_for[task]]
    order = []
    while ready:
        task = ready.pop(rng.randrange(len(ready)))
        order.append(task)
        for consumer in problem.consumers(task):
            waiting_for[consumer.pred] -= 1
            if not waiting_for[consumer.pred]:
                ready.append(consumer.pred)
    lists: dict[str, list] = {device: [] for device in devices}
    for task in order:
        items = lists[home[task.op, task.mb]]
        previous = items[-1] if items else None
        # Sometimes fuse a W with the B listed right before it (a full backward).
        if task.kind == "W" and isinstance(previous, Task) and previous == (task.op, task.mb, "B") and rng.random() < 0.5:
            items[-1] = (previous, task)
        else:
            items.append(task)
    return problem, Schedule.from_lists(lists, name="random")


def entry_duration(problem: Problem, device: str, entry: Entry) -> float:
    spec = problem.cluster.by_name[device]
    durations = [problem.duration(task, spec) for task in entry.tasks]
    if entry.overlap:
        return problem.fused_duration(durations[0], sum(durations[1:]))
    return sum(durations)


def assert_respects_every_rule(problem: Problem, schedule: Schedule, timeline) -> None:
    ran = {task: item for item in timeline.executed for task in item.entry.tasks}
    assert timeline.completed and sorted(ran) == sorted(problem.tasks())

    # Each entry takes its duration; each stream runs its entries one at a time, in order.
    by_stream = defaultdict(list)
    for item in timeline.executed:
        assert item.end - item.start == entry_duration(problem, item.device, item.entry)
        by_stream[item.device, item.stream].append(item)
    for (device, stream), items in by_stream.items():
        listed = [e for e in schedule.devices[device] if problem.graph.by_name[e.first.op].stream == stream]
        assert [item.entry for item in items] == listed
        for before, after in zip(items, items[1:]):
            assert before.end <= after.start

    # A consumer never starts before its input has arrived on its device.
    moved = {(t.pred, t.consumer): t for t in timeline.transfers}
    for task, item in ran.items():
        for dependency in problem.dependencies(task):
            source = ran[dependency.pred]
            if source is item:
                continue  # produced inside the same group
            route = problem.cluster.route(source.device, item.device)
            if source.device == item.device or not route.links:
                assert item.start >= source.end
                continue
            transfer = moved.pop((dependency.pred, task))
            assert (transfer.src, transfer.dst, transfer.links) == (source.device, item.device, route.links)
            assert transfer.start >= source.end
            assert transfer.end - transfer.start == route.transfer_time(dependency.bytes)
            assert item.start >= transfer.end
    assert not moved, "every transfer feeds a consumer on another device"

    # A link carries one tensor at a time.
    by_link = defaultdict(list)
    for transfer in timeline.transfers:
        for link in transfer.links:
            by_link[link].append((transfer.start, transfer.end))
    for intervals in by_link.values():
        intervals.sort()
        assert all(a[1] <= b[0] for a, b in zip(intervals, intervals[1:]))

    # Memory: within capacity, never negative, and back to static memory at the end.
    for device, samples in timeline.memory.items():
        capacity = problem.cluster.by_name[device].memory_bytes
        assert all(-1e-9 <= level <= capacity for _, level in samples)
        assert samples[-1][1] == timeline.static_memory[device] or abs(samples[-1][1] - timeline.static_memory[device]) < 1e-9
    ends = [item.end for item in timeline.executed] + [t.end for t in timeline.transfers]
    assert timeline.makespan == max(ends)


@PROPERTY
@given(instances())
def test_topologically_ordered_schedules_replay_within_every_rule(instance):
    problem, schedule = instance
    timeline = replay(problem, schedule)
    assert timeline.violations == ()
    assert_respects_every_rule(problem, schedule, timeline)


@PROPERTY
@given(instances(memory=6.0))
def test_with_little_memory_accepted_schedules_stay_within_capacity(instance):
    problem, schedule = instance
    timeline = replay(problem, schedule)
    over = [v for v in timeline.violations if v.kind == "memory"]
    assert len(over) == len(timeline.violations)  # nothing else can go wrong
    peaks = {device: max(level for _, level in samples) for device, samples in timeline.memory.items()}
    assert {v.device for v in over} == {d for d, peak in peaks.items() if peak > 6.0}
    assert all(v.amount == pytest.approx(peaks[v.device] - 6.0) for v in over)
    if not over:
        assert_respects_every_rule(problem, schedule, timeline)


def rebuilt(schedule: Schedule, edit) -> Schedule:
    lists = {device: list(entries) for device, entries in schedule.devices.items()}
    edit(lists)
    return Schedule(lists)


@PROPERTY
@given(instances(), st.randoms(use_true_random=False))
def test_a_task_moved_before_its_input_on_its_device_is_rejected(instance, rng):
    problem, schedule = instance
    inversions = []
    for device, entries in schedule.devices.items():
        index = {task: i for i, entry in enumerate(entries) for task in entry.tasks}
        for i, entry in enumerate(entries):
            for task in entry.tasks:
                for dependency in problem.dependencies(task):
                    j = index.get(dependency.pred)
                    same_stream = problem.graph.by_name[dependency.pred.op].stream == problem.graph.by_name[task.op].stream
                    if j is not None and j < i and same_stream:
                        inversions.append((device, j, i))
    assume(inversions)
    device, j, i = rng.choice(inversions)

    def swap(lists):
        lists[device][i], lists[device][j] = lists[device][j], lists[device][i]

    try:
        replay(problem, rebuilt(schedule, swap))
    except ScheduleRejected as exc:
        assert any(v.kind == "dependency" and v.device == device for v in exc.violations)
    else:
        raise AssertionError("an inverted pair on one device was accepted")


@PROPERTY
@given(instances(), st.randoms(use_true_random=False))
def test_a_dropped_task_is_rejected(instance, rng):
    problem, schedule = instance
    device = rng.choice([d for d, entries in schedule.devices.items() if entries])
    index = rng.randrange(len(schedule.devices[device]))
    dropped = schedule.devices[device][index].tasks
    try:
        replay(problem, rebuilt(schedule, lambda lists: lists[device].pop(index)))
    except ScheduleRejected as exc:
        assert set(dropped) <= {v.task for v in exc.violations if v.kind == "missing"}
    else:
        raise AssertionError("a schedule missing a task was accepted")


@PROPERTY
@given(instances(), st.randoms(use_true_random=False))
def test_a_duplicated_task_is_rejected(instance, rng):
    problem, schedule = instance
    source = rng.choice([d for d, entries in schedule.devices.items() if entries])
    entry = rng.choice(schedule.devices[source])
    target = rng.choice(list(schedule.devices))
    try:
        replay(problem, rebuilt(schedule, lambda lists: lists[target].append(entry)))
    except ScheduleRejected as exc:
        assert any(v.kind == "duplicate" and v.task == entry.first for v in exc.violations)
    else:
        raise AssertionError("a schedule listing a task twice was accepted")


@PROPERTY
@given(instances())
def test_memory_shrunk_below_the_peak_is_reported(instance):
    problem, schedule = instance
    peaks = {device: max(level for _, level in samples) for device, samples in replay(problem, schedule).memory.items()}
    device, peak = max(peaks.items(), key=lambda item: item[1])
    assume(peak > 0)
    smaller = tuple(
        Device(d.name, d.type, peak * 0.99, d.peak_flops) if d.name == device else d for d in problem.cluster.devices
    )
    cluster = Cluster(problem.cluster.name, smaller, problem.cluster.links, problem.cluster.ideal_interconnect)
    timeline = replay(Problem(problem.graph, cluster, problem.workload), schedule)
    assert [v for v in timeline.violations if v.kind == "memory" and v.device == device]
