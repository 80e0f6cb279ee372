"""Turn a run's plan into Celery messages: one canvas, or the ready steps of a dynamic run.

Data never travels through the canvas: every signature is immutable and carries only
``(run_id, step_id)``; steps read what they need from the run store. What Flower shows as
a step's arguments (``run=<id> step=<id>``) is written into its message's headers as it
is published (``_argsrepr``), not carried in the signature: an ``argsrepr`` option would
travel in every signature of a chain's body, and Celery copies such options into the
message's properties too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from celery import chain, group, signals
from celery.canvas import Signature

from ..core.settings import get_settings
from ..definition.graph import Leaf, Parallel, Series, SPTree
from ..plan.canvassegments import Segment, Segments, segment
from ..plan.compile import CANVAS, make_plan, snapshot_graph
from .app import FANIN_TASK, RUN_TIMEOUT_TASK, STEP_TASK, app

_STEP_TASKS = frozenset({STEP_TASK, FANIN_TASK})
MOST_URGENT = 9  # the top of our priority scale (a step's `priority:`, 0-9)
_spec_index: list[tuple[Mapping[str, Any], dict[str, Mapping[str, Any]]]] = []


def _spec_of(snapshot: Mapping[str, Any], step_id: str) -> Mapping[str, Any]:
    """A step's spec, by an index of the last snapshots seen (a scan per signature made
    building a long canvas quadratic in its steps)."""
    base = step_id.rsplit("[", 1)[0]
    for seen, index in _spec_index:
        if seen is snapshot:
            return index.get(base, {})
    index = {spec["id"]: spec for spec in snapshot["steps"]}
    _spec_index.insert(0, (snapshot, index))
    del _spec_index[4:]
    return index.get(base, {})


def broker_priority(priority: int) -> int:
    """Our scale is 0-9 with 9 most urgent; the Redis transport serves 0 first."""
    return 9 - priority if app.conf.broker_url.startswith(("redis", "rediss")) else priority


def step_signature(
    snapshot: Mapping[str, Any], run_id: str, step_id: str, task: str = STEP_TASK
) -> Signature:
    """The message for one step; named ``<workflow>.<step>`` in Flower, routed by `queue:`."""
    options: dict[str, Any] = {}
    spec = _spec_of(snapshot, step_id)
    if spec.get("queue"):
        # the join too: the workers of that queue ran the instances, and the default queue
        # may have none (a run whose steps all name a queue would never join)
        options["queue"] = spec["queue"]
    if spec.get("priority") is not None:
        options["priority"] = broker_priority(spec["priority"])
    if task == FANIN_TASK:
        # a join is quick control work that ends a step: it goes ahead of the instances
        # still queued (after a cancel, a window of them, each only a replay to drain)
        options["priority"] = broker_priority(MOST_URGENT)
    suffix = "" if task == STEP_TASK else ".join"
    return app.signature(
        task,
        args=(run_id, step_id),
        immutable=True,
        task_id=f"{run_id}.{step_id}{suffix}",
        shadow=f"{snapshot['workflow']}.{step_id}{suffix}",
        **options,
    )


@signals.before_task_publish.connect
def _argsrepr(
    sender: str | None = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """A step's arguments as Flower shows them, ``run=<id> step=<id>``, in the headers of
    its message (Celery would write ``('<id>', '<id>')``); a message that was given its
    own ``argsrepr`` (Celery puts that option in the properties as well) keeps it."""
    if sender not in _STEP_TASKS or headers is None or "argsrepr" in (properties or {}):
        return
    args = body[0] if isinstance(body, (tuple, list)) and body else None
    if isinstance(args, (tuple, list)) and len(args) >= 2:
        headers["argsrepr"] = f"run={args[0]} step={args[1]}"


def build_canvas(
    snapshot: Mapping[str, Any], run_id: str, tree: SPTree, _groups: list[int] | None = None
) -> Signature:
    """Mirror the series-parallel tree: Series -> chain, Parallel -> group (chord when joined).

    Group ids are derived from the run id (``<run>.group<n>``) so that every key Celery
    writes for a run can be found from the run id.
    """
    counter = _groups if _groups is not None else [0]
    if isinstance(tree, Leaf):
        return step_signature(snapshot, run_id, tree.step)
    parts = [build_canvas(snapshot, run_id, p, counter) for p in tree.parts]
    if isinstance(tree, Series):
        return chain(*parts)
    assert isinstance(tree, Parallel)
    counter[0] += 1
    return group(*parts).set(task_id=f"{run_id}.group{counter[0]}")


def publish_run(
    snapshot: Mapping[str, Any],
    run_id: str,
    tree: SPTree | None,
    sources: list[str],
    store: Any = None,
) -> None:
    """Send a new run to the broker. Every step's Celery root_id is the run id.

    With ``store``, the source steps are watched from now on (recovery.py): a first
    message lost on its way to a worker is found and published again.
    """
    settings = get_settings()
    if store is not None and settings.broker_url.startswith(("redis", "rediss")):
        store.watch_steps([f"{run_id}|{s}" for s in sources], settings.lease_seconds)
    if snapshot.get("timeout"):
        app.signature(RUN_TIMEOUT_TASK, args=(run_id,), immutable=True).apply_async(
            countdown=snapshot["timeout"], task_id=f"{run_id}.timeout", root_id=run_id
        )
    if snapshot["mode"] == CANVAS and tree is not None:
        segments = _segments(snapshot, tree)
        if segments.first is None:
            build_canvas(snapshot, run_id, tree).apply_async(root_id=run_id)
        else:  # a long chain: its first segment (canvassegments)
            build_segment(snapshot, run_id, segments.first).apply_async(root_id=run_id)
        return
    publish_steps(snapshot, run_id, sources)


def _segments(snapshot: Mapping[str, Any], tree: SPTree) -> Segments:
    fans = {s["id"] for s in snapshot["steps"] if s.get("matrix") or s.get("for_each")}
    return segment(tree, lambda step: step not in fans)


def build_segment(snapshot: Mapping[str, Any], run_id: str, part: Segment) -> Signature:
    """One segment of a long top-level chain, with the group ids of the whole canvas."""
    counter = [part.groups_before]
    sigs = [build_canvas(snapshot, run_id, p, counter) for p in part.parts]
    return sigs[0] if len(sigs) == 1 else chain(*sigs)


_segments_of: OrderedDict[str, Segments] = OrderedDict()  # per run, in a worker process


def publish_next_segment(snapshot: Mapping[str, Any], run_id: str, step_id: str) -> None:
    """``step_id``'s task returned into a canvas: if the step ends a segment of the run's
    top-level chain, send the next segment (rebuilt from the snapshot; canvassegments)."""
    if snapshot.get("mode") != CANVAS:
        return
    segments = _segments_of.get(run_id)
    if segments is None:
        tree = snapshot_graph(snapshot).series_parallel()
        segments = _segments(snapshot, tree) if tree is not None else Segments()
        _segments_of[run_id] = segments
        while len(_segments_of) > 16:
            _segments_of.popitem(last=False)
    nxt = segments.after.get(step_id)
    if nxt is not None:
        build_segment(snapshot, run_id, nxt).apply_async(root_id=run_id)


FAN_OUT_WINDOW = 1000  # instances of one step queued or running at once, by default


def fan_out_window(max_parallel: int | None, instances: int) -> int:
    """How many instances are sent at once: ``max_parallel``, else ``FAN_OUT_WINDOW``."""
    return max(1, min(max_parallel or FAN_OUT_WINDOW, instances))


def publish_fan_out(snapshot: Mapping[str, Any], run_id: str, instance_ids: list[str]) -> None:
    """Send the first window of a fanned-out step's instances.

    The rest follow in lanes: when instance i ends it sends instance i + window (see
    ``RunStore.instance_ended``), so at most a window of messages exists at a time, a
    large fan-out is sent in a fraction of a second and a cancel leaves few messages to
    drain. The instance that ends last joins them (``runbook.fan_in`` is kept for messages
    sent by earlier versions).
    """
    publish_steps(snapshot, run_id, instance_ids)


def publish_steps(snapshot: Mapping[str, Any], run_id: str, step_ids: Iterable[str]) -> None:
    """Publish steps whose needs have all finished (dynamic dispatch)."""
    for sid in step_ids:
        step_signature(snapshot, run_id, sid).apply_async(root_id=run_id)


def publish_admitted(store: Any, run_ids: Iterable[str]) -> None:
    """Runs of a concurrency group let in by a freed slot: send them now."""

    for run_id in run_ids:
        snapshot = store.snapshot(run_id)
        graph = snapshot_graph(snapshot)
        publish_run(snapshot, run_id, make_plan(graph).tree, graph.sources(), store)


def continue_after_failure(store: Any, run_id: str, lease_seconds: float) -> list[str]:
    """A canvas run whose steps may run after a failure has a step failing: from now on it
    continues by dynamic dispatch from its record (``RunStore.fail_over_to_dynamic``), so
    its ``failure()``/``always()`` steps run exactly as in a dynamic run (canvasplan).
    Called before the failure is recorded, whose own transition then joins its children."""
    snapshot = store.snapshot(run_id)
    ready: list[str] = store.fail_over_to_dynamic(
        run_id, snapshot_graph(snapshot).children, lease_seconds
    )
    publish_steps(snapshot, run_id, ready)
    return ready


def continue_survivors(store: Any, run_id: str, lease_seconds: float) -> list[str]:
    """After a cancel: publish the steps kept to run (``always()``/``cancelled()``) whose
    needs have all ended now.

    A cancel ends pending steps in the store, where nothing joins their children; a kept
    step needing one of them would never become ready and its run would never end. So the
    run continues by dynamic dispatch from its record (``RunStore.fail_over_to_dynamic``:
    every ended step joins its children; the steps returned are watched from there, so a
    caller lost before publishing them leaves it to the reconciler). Idempotent: a step
    published twice is claimed once.
    """

    snapshot = store.snapshot(run_id)
    # a canvas run with such steps continues by dynamic dispatch too (canvasplan)
    if store.run_status(run_id) in ("succeeded", "failed", "cancelled"):
        return []
    ready: list[str] = store.fail_over_to_dynamic(
        run_id, snapshot_graph(snapshot).children, lease_seconds
    )
    publish_steps(snapshot, run_id, ready)
    return ready
