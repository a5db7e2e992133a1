"""A hybrid-parallel layout, in the words of Megatron-LM, DeepSpeed and PyTorch FSDP.

A scenario may carry a ``parallel:`` section::

    parallel:
      tp: 8                    # tensor parallel (Megatron: --tensor-model-parallel-size)
      pp: 4                    # pipeline parallel
      cp: 1                    # context parallel (the sequence split over ranks)
      dp: 1                    # data parallel; left out, it is devices / (tp pp cp)
      ep: 1                    # expert parallel, carved out of dp x cp as Megatron does
      sequence_parallel: true  # norms / dropout on s/tp of the sequence
      zero: 1                  # 0 plain DP | 1 optimizer states | 2 + gradients | 3 + parameters (= FSDP)
      vpp: 5                   # virtual stages per pipeline rank (interleaved 1F1B)
      recompute: selective     # none | selective | full, or per layer range (below)
      micro_batch_size: 1
      global_batch_size: 128
      schedule: interleaved    # gpipe | 1f1b | interleaved | zb-h1 | zb-h2 | dualpipe | dualpipev
      order: tp-cp-ep-dp-pp    # rank order, innermost first (Megatron's default)

``recompute`` may also be a list of layer ranges, the rest of the layers keeping
everything: ``[{layers: [0, 40], mode: full}, {layers: [40, 80], mode: selective}]``.
``stage_layers: [19, 21, 20, 20]`` assigns an uneven number of layers to each pipeline
(virtual) stage when ``pp`` does not divide the layers.

Rank ``i`` is device ``gpu<i>`` of the cluster, so the rank order decides which groups
share a node: with TP innermost, a TP group of 8 is one NVLink node. The groups are
built exactly as Megatron-core's ``RankGenerator`` builds them
(``megatron/core/parallel_state.py``, ``generate_masked_orthogonal_rank_groups``):
axes listed innermost first, rank = sum of coordinate x stride; the dense layers use
``tp, cp, dp, pp`` (``ep`` = 1) and the experts a second generator with ``cp`` = 1,
``ep`` and the expert data-parallel size ``dp cp / ep``.

The layout is a description: today's replay does not read it (the engine's collectives
and the built-in schedules on layouts come later). :mod:`simulator.memory_model` turns it
into per-rank memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product

from simulator.errors import InputError
from simulator.shapes import ModelShape
from simulator.yamlio import Section

__all__ = [
    "ORDER",
    "AXES",
    "SCHEDULES",
    "RECOMPUTE_MODES",
    "RecomputeRange",
    "Layout",
    "rank_groups",
    "read_layout",
    "check_model",
]

#: Megatron-core's default rank order (``initialize_model_parallel(order=...)``), innermost first.
ORDER = "tp-cp-ep-dp-pp"
AXES = ("tp", "cp", "ep", "dp", "pp")
#: Pipeline schedules a layout may name, as :mod:`planner.schedules` names its built-ins.
SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "zb-h1", "zb-h2", "dualpipe", "dualpipev")
SCHEDULE_ALIASES = {"interleaved": "interleaved-1f1b"}
RECOMPUTE_MODES = ("none", "selective", "full")


def rank_groups(sizes: Mapping[str, int], order: Sequence[str], token: str) -> list[list[int]]:
    """The groups of ranks that vary along the axes named in ``token`` (``"dp-cp"``).

    Rank = sum over axes of coordinate x stride, strides the prefix products of the
    sizes in ``order`` (innermost first). Groups are listed with the other axes'
    coordinates counting up innermost first, and ranks within a group likewise, as
    Megatron-core's ``generate_masked_orthogonal_rank_groups`` lists them.

    >>> rank_groups({"tp": 2, "dp": 3, "pp": 4}, ["tp", "dp", "pp"], "dp")[:2]
    [[0, 2, 4], [1, 3, 5]]
    """
    wanted = set(token.split("-"))
    unknown = wanted - set(order)
    if unknown:
        raise ValueError(f"unknown axis {sorted(unknown)[0]!r} for order {'-'.join(order)}")
    strides: dict[str, int] = {}
    stride = 1
    for axis in order:
        strides[axis] = stride
        stride *= sizes[axis]

    def offsets(axes: list[str]) -> list[int]:
        # itertools.product varies its last factor fastest: reverse so the innermost axis is.
        combos = product(*(range(sizes[a]) for a in reversed(axes)))
        return [sum(i * strides[a] for a, i in zip(reversed(axes), combo)) for combo in combos]

    masked = offsets([a for a in order if a in wanted])
    return [[base + off for off in masked] for base in offsets([a for a in order if a not in wanted])]


@dataclass(frozen=True)
class RecomputeRange:
    """Layers ``first <= i < stop`` use activation recomputation ``mode``."""

    first: int
    stop: int
    mode: str


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"must be a positive integer, got {value!r}", field=f"parallel.{name}")


@dataclass(frozen=True)
class Layout:
    """Degrees of parallelism and the training-step settings that go with them.

    ``zero``: 0 plain data parallel, 1 optimizer states sharded over ``dp x cp``
    (Megatron's distributed optimizer), 2 + gradients, 3 + parameters (FSDP full shard).
    ``vpp``: virtual pipeline stages per rank (``interleaved-1f1b`` only).
    ``recompute`` applies to every layer outside ``recompute_ranges``. ``global_batch_size``
    0 means one micro-batch per replica (``dp x micro_batch_size``). ``stage_layers``: layers
    per (virtual) stage when not an even split. Every check raises an :class:`InputError`
    naming ``parallel.<field>``, so presets built in code are validated like files.

    >>> fsdp = Layout(dp=8, zero=3, global_batch_size=64)
    >>> fsdp.world_size, fsdp.micro_batches, fsdp.groups("dp")
    (8, 8, ((0, 1, 2, 3, 4, 5, 6, 7),))
    """

    dp: int = 1
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    sequence_parallel: bool = False
    zero: int = 0
    vpp: int = 1
    recompute: str = "none"
    recompute_ranges: tuple[RecomputeRange, ...] = ()
    micro_batch_size: int = 1
    global_batch_size: int = 0
    schedule: str = "1f1b"
    order: str = ORDER
    stage_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("dp", "tp", "pp", "cp", "ep", "vpp", "micro_batch_size"):
            _positive(name, getattr(self, name))
        if self.global_batch_size == 0:
            object.__setattr__(self, "global_batch_size", self.dp * self.micro_batch_size)
        _positive("global_batch_size", self.global_batch_size)
        object.__setattr__(self, "schedule", SCHEDULE_ALIASES.get(self.schedule, self.schedule))
        object.__setattr__(self, "recompute_ranges", tuple(self.recompute_ranges))
        object.__setattr__(self, "stage_layers", tuple(self.stage_layers))
        self._check_choices()
        self._check_degrees()
        self._check_schedule()

    def _check_choices(self) -> None:
        if self.zero not in (0, 1, 2, 3) or isinstance(self.zero, bool):
            raise InputError(f"must be 0, 1, 2 or 3 (3 = FSDP), got {self.zero!r}", field="parallel.zero")
        if self.schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {self.schedule!r} (expected one of: {', '.join(SCHEDULES)})", field="parallel.schedule")
        if self.recompute not in RECOMPUTE_MODES:
            raise InputError(f"unknown mode {self.recompute!r} (expected one of: {', '.join(RECOMPUTE_MODES)})", field="parallel.recompute")
        axes = self.order.split("-")
        if sorted(axes) != sorted(AXES):
            raise InputError(f"order {self.order!r} must name each of {', '.join(AXES)} once", field="parallel.order")

    def _check_degrees(self) -> None:
        if self.sequence_parallel and self.tp == 1:
            raise InputError("sequence_parallel needs tp > 1 (it splits the TP group's replicated work)",
                             field="parallel.sequence_parallel")
        if (self.dp * self.cp) % self.ep:
            raise InputError(
                f"ep ({self.ep}) must divide dp x cp ({self.dp} x {self.cp}):"
                " Megatron carves expert parallelism out of data x context parallelism",
                field="parallel.ep",
            )
        if not self.order.endswith("pp") and self.pp > 1 and self.expert_dp != self.dp:
            raise InputError(f"with pp > 1 and pp not last in the order, Megatron needs the same data-parallel size for dense and"
                             f" expert layers (dp {self.dp}, expert dp {self.expert_dp})", field="parallel.order")
        step = self.dp * self.micro_batch_size
        if self.global_batch_size % step:
            raise InputError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of"
                f" dp x micro_batch_size ({self.dp} x {self.micro_batch_size} = {step})",
                field="parallel.global_batch_size",
            )

    def _check_schedule(self) -> None:
        p, m, s = self.pp, self.micro_batches, self.schedule
        if s == "interleaved-1f1b" and (self.vpp < 2 or p < 2):
            raise InputError(f"interleaved-1f1b needs pp >= 2 and vpp >= 2, got pp {p}, vpp {self.vpp}", field="parallel.vpp")
        if s != "interleaved-1f1b" and self.vpp != 1:
            raise InputError(f"vpp ({self.vpp}) > 1 needs schedule: interleaved (got {s})", field="parallel.vpp")
        if s == "interleaved-1f1b" and m % p:
            raise InputError(f"interleaved 1F1B needs micro-batches per step ({m}) divisible by pp ({p}) (Narayanan et al. 2021)",
                             field="parallel.global_batch_size")
        if s == "dualpipe" and p % 2:
            raise InputError(f"dualpipe pairs stage r with stage pp-1-r: pp must be even, got {p}", field="parallel.pp")
        if s in ("dualpipe", "dualpipev") and (m < 2 * p or (s == "dualpipe" and m % 2)):
            raise InputError(f"{s} needs at least 2 pp = {2 * p} micro-batches per step (an even number for dualpipe), got {m}",
                             field="parallel.global_batch_size")
        for r in self.recompute_ranges:
            if r.mode not in RECOMPUTE_MODES:
                raise InputError(f"unknown mode {r.mode!r} (expected one of: {', '.join(RECOMPUTE_MODES)})", field="parallel.recompute")

    # -- sizes -----------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """``dp tp pp cp``: the devices the layout needs (EP lives inside ``dp cp``)."""
        return self.dp * self.tp * self.pp * self.cp

    @property
    def expert_dp(self) -> int:
        """Data-parallel degree of the expert weights: Megatron's ``world / (etp ep pp)`` with ``etp = tp``."""
        return self.dp * self.cp // self.ep

    @property
    def micro_batches(self) -> int:
        """Micro-batches each data-parallel replica runs per step (gradient accumulation)."""
        return self.global_batch_size // (self.dp * self.micro_batch_size)

    @property
    def stages(self) -> int:
        """Pipeline (virtual) stages the layers are cut into."""
        if self.schedule == "dualpipev":
            return 2 * self.pp
        return self.pp * self.vpp

    # -- recomputation ---------------------------------------------------------------------
    def recompute_mode(self, layer: int) -> str:
        """``none``, ``selective`` or ``full`` for transformer layer ``layer`` (0-based)."""
        for r in self.recompute_ranges:
            if r.first <= layer < r.stop:
                return r.mode
        return self.recompute

    # -- ranks -----------------------------------------------------------------------------
    def _sizes(self, expert: bool) -> dict[str, int]:
        if expert:
            return {"tp": self.tp, "cp": 1, "ep": self.ep, "dp": self.expert_dp, "pp": self.pp}
        return {"tp": self.tp, "cp": self.cp, "ep": 1, "dp": self.dp, "pp": self.pp}

    def groups(self, token: str) -> tuple[tuple[int, ...], ...]:
        """Rank groups along ``token``'s axes, e.g. ``"tp"``, ``"dp-cp"``, ``"pp"``, ``"ep"``.

        ``"ep"`` and tokens starting ``"expert-"`` (``"expert-dp"``, ``"expert-tp"``) come
        from the expert generator, as in Megatron.

        >>> Layout(dp=2, tp=2, pp=4, global_batch_size=2).groups("pp")[:2]
        ((0, 4, 8, 12), (1, 5, 9, 13))
        """
        expert = token.startswith("expert-") or "ep" in token.split("-")
        axes = token.removeprefix("expert-")
        return tuple(tuple(g) for g in rank_groups(self._sizes(expert), self.order.split("-"), axes))

    def coordinate(self, rank: int, axis: str) -> int:
        """Rank ``rank``'s index along ``axis`` (``tp``, ``cp``, ``dp``, ``pp``, ``ep``, ``expert-dp``).

        >>> [Layout(dp=2, tp=2, pp=4, global_batch_size=2).coordinate(13, a) for a in ("tp", "dp", "pp")]
        [1, 0, 3]
        """
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside 0..{self.world_size - 1}")
        expert = axis.startswith("expert-") or axis == "ep"
        sizes = self._sizes(expert)
        name = axis.removeprefix("expert-")
        stride = 1
        for a in self.order.split("-"):
            if a == name:
                return (rank // stride) % sizes[a]
            stride *= sizes[a]
        raise ValueError(f"unknown axis {axis!r}")

    def rank_of(self, **coords: int) -> int:
        """The rank at the given dense coordinates (``tp``, ``cp``, ``dp``, ``pp``; others 0).

        >>> Layout(dp=2, tp=2, pp=4, global_batch_size=2).rank_of(tp=1, pp=3)
        13
        """
        sizes = self._sizes(expert=False)
        rank, stride = 0, 1
        for axis in self.order.split("-"):
            index = coords.pop(axis, 0)
            if not 0 <= index < sizes[axis]:
                raise ValueError(f"{axis} index {index} outside 0..{sizes[axis] - 1}")
            rank, stride = rank + index * stride, stride * sizes[axis]
        if coords:
            raise ValueError(f"unknown axis {sorted(coords)[0]!r}")
        return rank

    # -- pipeline stages -------------------------------------------------------------------
    def stages_of(self, pp_rank: int) -> tuple[int, ...]:
        """The (virtual) stages pipeline rank ``pp_rank`` holds, in model order.

        Interleaved: ``r, r + pp, r + 2 pp, ...`` (Megatron's virtual stages); DualPipe:
        ``r`` and ``pp - 1 - r`` of a ``pp``-stage model (each stage held twice);
        DualPipeV: ``r`` and ``2 pp - 1 - r`` of a ``2 pp``-stage model.
        """
        p = self.pp
        if self.schedule == "interleaved-1f1b":
            return tuple(pp_rank + k * p for k in range(self.vpp))
        if self.schedule == "dualpipe":
            return tuple(sorted({pp_rank, p - 1 - pp_rank}))
        if self.schedule == "dualpipev":
            return (pp_rank, 2 * p - 1 - pp_rank)
        return (pp_rank,)

    def layers_per_stage(self, layers: int) -> tuple[int, ...]:
        """Transformer layers of each (virtual) stage: ``stage_layers`` or an even split."""
        if self.stage_layers:
            return self.stage_layers
        return (layers // self.stages,) * self.stages

    def stage_layer_ranges(self, layers: int) -> tuple[range, ...]:
        """``range`` of layer indices per (virtual) stage."""
        out, start = [], 0
        for count in self.layers_per_stage(layers):
            out.append(range(start, start + count))
            start += count
        return tuple(out)


# -- reading and checking a ``parallel:`` section ---------------------------------------------
_KEYS = frozenset({"dp", "tp", "pp", "cp", "ep", "sequence_parallel", "zero", "vpp", "recompute", "micro_batch_size",
                   "global_batch_size", "schedule", "order", "stage_layers"})


def _recompute(section: Section, default: str) -> tuple[str, tuple[RecomputeRange, ...]]:
    """``recompute: mode`` or a list of ``{layers: [first, stop], mode}`` (other layers: none)."""
    if "recompute" not in section:
        return default, ()
    if not isinstance(section.raw("recompute"), list):
        return section.str("recompute", choices=RECOMPUTE_MODES), ()
    ranges = []
    for item in section.sections("recompute"):
        item.check_keys({"layers", "mode"})
        bounds = item.list("layers")
        if len(bounds) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in bounds) or bounds[0] >= bounds[1]:
            raise item.error(f"expected [first, stop) with 0 <= first < stop, got {bounds!r}", "layers")
        if any(r.first < bounds[1] and bounds[0] < r.stop for r in ranges):
            raise item.error(f"layer range {bounds!r} overlaps an earlier one", "layers")
        ranges.append(RecomputeRange(bounds[0], bounds[1], item.str("mode", choices=RECOMPUTE_MODES)))
    return "none", tuple(ranges)


def _zero(section: Section) -> int:
    if section.raw("zero", 0) == "fsdp":
        return 3
    return section.integer("zero", 0)


def _degrees(section: Section, devices: int) -> dict[str, int]:
    """``tp pp cp ep vpp`` and ``dp`` (derived from the device count when left out)."""
    sizes = {k: section.integer(k, 1, minimum=1) for k in ("tp", "pp", "cp", "ep", "vpp")}
    model = sizes["tp"] * sizes["pp"] * sizes["cp"]
    if "dp" in section:
        sizes["dp"] = section.integer("dp", minimum=1)
    elif devices % model:
        raise section.error(f"tp x pp x cp = {model} does not divide the cluster's {devices} devices", "tp")
    else:
        sizes["dp"] = devices // model
    if sizes["dp"] * model != devices:
        product = f"{sizes['dp']} x {sizes['tp']} x {sizes['pp']} x {sizes['cp']} = {sizes['dp'] * model}"
        raise section.error(f"dp x tp x pp x cp = {product}, but the cluster has {devices} devices", "dp")
    return sizes


def read_layout(section: Section, devices: int, shape: ModelShape | None = None) -> Layout:
    """Read and validate a ``parallel:`` section against the cluster's device count and the model.

    Every problem is one :class:`InputError` naming the file and the ``parallel.<field>``.
    """
    section.check_keys(_KEYS)
    sizes = _degrees(section, devices)
    mbs_default = shape.micro_batch_size if shape is not None else 1
    mbs = section.integer("micro_batch_size", mbs_default, minimum=1)
    if shape is not None and mbs != shape.micro_batch_size:
        raise section.error(f"{mbs} differs from model.micro_batch_size ({shape.micro_batch_size}), which the operator graph is built for",
                            "micro_batch_size")
    recompute, ranges = _recompute(section, "full" if shape is not None and shape.recompute else "none")
    stage_layers = section.list("stage_layers", [])
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in stage_layers):
        raise section.error(f"expected a list of positive layer counts, got {stage_layers!r}", "stage_layers")
    try:
        layout = Layout(
            **sizes,
            sequence_parallel=section.bool("sequence_parallel", False),
            zero=_zero(section),
            recompute=recompute,
            recompute_ranges=ranges,
            micro_batch_size=mbs,
            global_batch_size=section.integer("global_batch_size", sizes["dp"] * mbs, minimum=1),
            schedule=section.str("schedule", "1f1b"),
            order=section.str("order", ORDER),
            stage_layers=tuple(stage_layers),
        )
    except InputError as exc:
        raise InputError(exc.message, file=section.file, field=exc.field) from None
    if shape is not None:
        check_model(layout, shape, section)
    return layout


def _must_divide(section: Section, key: str, degree: int, what: str, value: int) -> None:
    if value % degree:
        raise section.error(f"{key} ({degree}) must divide {what} ({value})", key)


def check_model(layout: Layout, shape: ModelShape, section: Section) -> None:
    """Megatron's divisibility rules: ``tp`` divides heads, KV heads (query groups) and the
    MLP width of every tower; ``ep`` divides the experts; the layers fill the pipeline
    stages; the sequence splits over ``tp`` (sequence parallel) and ``2 cp`` (load-balanced CP)."""
    for tower in shape.towers:
        prefix = "" if tower.name == "model" else f"{tower.name} "
        _must_divide(section, "tp", layout.tp, f"{prefix}attention heads", tower.heads)
        _must_divide(section, "tp", layout.tp, f"{prefix}KV heads", tower.kv_heads)
        _must_divide(section, "tp", layout.tp, f"{prefix}ffn", tower.ffn)
    if layout.ep > 1 and not shape.experts:
        raise section.error(f"ep ({layout.ep}) > 1 needs a mixture-of-experts model", "ep")
    if shape.experts:
        _must_divide(section, "ep", layout.ep, "the routed experts", shape.experts)
        _must_divide(section, "tp", layout.tp, "expert_ffn", shape.expert_ffn)
    if layout.sequence_parallel:
        _must_divide(section, "tp", layout.tp, "seq_len under sequence parallelism", shape.seq_len)
    if layout.cp > 1 and shape.seq_len % (2 * layout.cp):
        raise section.error(f"2 x cp ({2 * layout.cp}) must divide seq_len ({shape.seq_len}) (load-balanced causal chunks)", "cp")
    _check_stages(layout, len(shape.layers), section)


def _check_stages(layout: Layout, layers: int, section: Section) -> None:
    stages = layout.stages
    what = "pp x vpp" if layout.vpp > 1 else ("2 x pp" if layout.schedule == "dualpipev" else "pp")
    if layout.stage_layers:
        if len(layout.stage_layers) != stages or sum(layout.stage_layers) != layers:
            raise section.error(f"expected {stages} counts summing to the model's {layers} layers, got {list(layout.stage_layers)}",
                                "stage_layers")
    elif layers % stages:
        raise section.error(f"{what} ({stages}) must divide the model's {layers} layers (or list stage_layers)", "pp")
    for r in layout.recompute_ranges:
        if r.stop > layers:
            raise section.error(f"layer range [{r.first}, {r.stop}) beyond the model's {layers} layers", "recompute")
