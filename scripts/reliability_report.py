"""docs/reliability.md from the battery's figures (also: reliability.py --render FILE.json)."""

from __future__ import annotations

from typing import Any

HANDON_LOST = (
    "**Hand-on lost** (seen as: finished steps, the rest `pending` with no message "
    "anywhere). A step's result was recorded (`finish_step`, which also removes the step "
    "from the lease index), but what follows it was never published (dynamic: "
    "`publish_steps` in the step task; canvas: Celery sending the chain/chord continuation "
    "after the task returns). Two causes were seen: (a) the worker was SIGKILLed in that "
    "window: the step's message is still in kombu's `unacked` hash, but the lease "
    "reconciler only walks the lease index, so nothing restores it before the visibility "
    "timeout (`RUNBOOK_VISIBILITY_TIMEOUT`, 6 h); (b) the broker was down at that moment "
    "(Redis restart): the publish fails, nothing retries it, and the run hangs for good."
)
CANVAS_ACKED = (
    "**Canvas step dropped on a broker connection loss** (seen as: a canvas step "
    "`running` with no lease and no message). On connection loss Celery terminates running "
    "acks_late tasks (`worker_cancel_long_running_tasks_on_connection_loss=True`); the "
    "terminated task is then acknowledged (`task_acks_on_failure_or_timeout`), so its "
    "message is gone, while the run record still says `running`. When the lease runs out "
    "the reconciler logs `lease of ... expired but its message is not in unacked` every "
    "few seconds and, for a canvas step, gives up: the run never ends. Dynamic runs "
    "recover (the reconciler re-publishes the step)."
)

NEVER_STARTED = (
    "**Delivered step dropped before it started** (seen as: a step `pending` with 0 "
    "attempts, its message in `unacked` or nowhere). A broker connection drop makes Celery "
    "forget requests it has received but not started (their messages wait in kombu's "
    "`unacked` hash for the visibility timeout) and acknowledge the ones it terminated "
    "before they claimed the step; nothing watched a step before it started."
)

# What this battery found in earlier runs, and the fix each got (see git log).
FIXED = (
    "A worker killed after recording a step but before handing on stranded the run until "
    "the 6 h visibility timeout. The step's lease-index entry now lives until the step has "
    "handed on (dropped with the stored result, or by `task_postrun` for chord members), and "
    "the reconciler restores the unacknowledged message, so the finished step replays and "
    "hands on.",
    "A canvas step whose message the broker lost (Redis restart while it ran, or a publish "
    "failing while the broker was down) took the rest of its chain with it. The run now "
    "fails over to dynamic dispatch from its record.",
    "Steps could read the Redis password from `RUNBOOK_REDIS_URL`/`RUNBOOK_BROKER_URL`; "
    "steps no longer see those variables.",
    "A step delivered to a worker but dropped on a broker connection loss before it started "
    "left its run hanging (7-8 hanging runs in 10-12 CI-size restart rounds). A step is now "
    "watched from the moment its message reaches a worker (`task_received`), and the "
    "reconciler restores or republishes it. A canvas step finishing during a fail-over is "
    "now always joined (the finishing script reads the run's mode itself).",
    "Under CPU load the CI soak hung 2 of 5 runs (2 of 10 when reproduced): a worker killed "
    "after kombu moved a step's message into `unacked` but before `task_received` watched the "
    "step left it unacknowledged and unwatched (a step `pending`, or `running` after an "
    "earlier recovery, with its message `unacked`), and one killed between popping the message "
    "and recording it lost it outright (`nowhere`). A step is now watched from the moment it "
    "is ready (run published, need handed on, fail-over, slot freed) until it has handed on, "
    "and the reconciler keeps watching after it restored or republished a step.",
)


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _verdict(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"error: {res['error']}"
    if "skipped" in res:
        return f"skipped: {res['skipped']}"
    return "nothing lost" if res.get("clean") else "**problems (see below)**"


def _counts(res: dict[str, Any]) -> list[Any]:
    return [
        res.get("runs", "-"),
        res.get("succeeded", "-"),
        res.get("failed", "-"),
        res.get("hanging", "-"),
        res.get("lost", "-"),
        res.get("duplicate_step_successes", "-"),
    ]


def _hangs(res: dict[str, Any]) -> list[str]:
    out = []
    for run_id, h in res.get("examples", {}).get("hanging", {}).items():
        steps = ", ".join(
            f"{sid} {s['status']} (attempts {s['attempts']}, message {s['message']})"
            for sid, s in h["steps"].items()
        )
        unacked = h.get("finished_steps_still_unacked")
        note = f"; finished but still unacked: {', '.join(unacked)}" if unacked else ""
        out.append(f"  - `{run_id}` ({h['mode']}): {steps}{note}")
    return out


BEHAVIOUR = """\
## What happens when something fails

What runbook-celery does when a worker, a message or Redis fails; the scenarios further down
put it to the test, with figures.

### Lost workers and lost messages

A step is watched in Redis from the moment it is ready (its message published) until its
task has handed on what follows it; a worker holding its message, and the step's lease while
it runs, keep the watch alive. If its worker dies (even SIGKILL of the whole worker), or the
message is lost on its way (a worker killed between taking it from the queue and recording
it), the watch runs out after `RUNBOOK_LEASE_SECONDS` (default 30 s) and a surviving worker
puts the step's original message back on the queue, chain and all, or publishes the step
again if the message is gone (a canvas run then continues by dynamic dispatch), within about
1⅓ lease periods; a worker that merely loses a pool process gets the message back at once. A
step task whose result Celery could not store is not counted as failed by its chord: it is
continued the same way. A fan-out's next instances and its join are watched in the very
transition that makes them due, so a worker lost between an instance ending and sending the
next one (or joining the instances) delays the fan-out by about a lease, never hangs it. The
record counts attempts; a finished step is never run twice; a step whose worker is lost
`RUNBOOK_MAX_ATTEMPTS` (default 5) times fails with reason `worker_lost`. `max_active_steps`
slots belong to step ids, so a step delivered again keeps its slot.

### A lost broker message

If the broker loses a canvas step's message (e.g. a Redis restart while the step runs), the
run fails over to dynamic dispatch from its record instead of hanging. A step is watched
from the moment its message reaches a worker, so a message dropped on a broker connection
loss before the step started is put back (or published again) too.

### Graceful shutdown

SIGTERM/SIGINT stop a worker taking new steps and let running ones finish for
`RUNBOOK_SHUTDOWN_GRACE` seconds (default 60); steps still running then have their process
groups killed and are handed back (pending again, not a failure, not a retry). No Bash
process or grandchild outlives its step or its worker: each step runs in its own session,
registered with a guardian that kills the group when the worker process goes away.

### Redis full

With `maxmemory` and `noeviction` (recommended), a full Redis refuses writes. Triggers then
fail with exit 3. Workers stay up and wait: a worker takes no new step, a step that is
running goes on (its lease and its watch are still renewed: the renewal writes nothing a
full Redis refuses), a step that has finished keeps its result (and its lease) until it can
be recorded, and everything resumes by itself once memory is freed; the worker log says
`Redis is full` when waiting starts and when it ends, and `--timeout` messages say so too.
Waiting, not failing, because recording a failure is a write as well, and a finished step
must be neither lost nor run twice.
"""


def render(r: dict[str, Any]) -> str:
    env = r["environment"]
    s = r["sizes"]
    lines = [
        "# Reliability figures",
        "",
        "Produced by `python scripts/reliability.py --all` "
        f"({r['size']} size, seed {r['seed']}, {r['started']}). Every scenario runs on a "
        "private `redis-server` started by the script on a free loopback port with the "
        "configuration recommended in `docker-compose.yml` (`appendonly yes`, "
        "`appendfsync everysec`, `maxmemory-policy noeviction`), and on Celery workers it "
        f"starts itself (`RUNBOOK_LEASE_SECONDS={env['lease_seconds']}`, other settings at "
        "their defaults, including the 6 h visibility timeout). Each run's record and event "
        "stream are checked afterwards: a run counts as succeeded only if it ended "
        "`succeeded` with every step `succeeded` and exactly one `step_succeeded` event per "
        "step. The CI-sized versions run in `tests/test_reliability.py`.",
        "",
        f"Machine: {env['machine']}; Python {env['python']}; {env['redis_server']}; "
        + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
        + ".",
        "",
        BEHAVIOUR,
        "## Summary",
        "",
        _row("scenario", "runs", "succeeded", "failed", "hanging", "lost", "dup. steps", "verdict"),
        _row(*["---"] * 8),
    ]
    soak = r.get("soak")
    if soak:
        lines.append(_row("worker SIGKILL soak", *_counts(soak), _verdict(soak)))
    rr = r.get("redis_restart")
    if rr and "cases" in rr:
        for name, case in rr["cases"].items():
            lines.append(_row(f"Redis restart ({name})", *_counts(case), _verdict(case)))
    elif rr:
        lines.append(_row("Redis restart", *["-"] * 6, _verdict(rr)))
    ld = r.get("load")
    if ld:
        lines.append(_row("load", *_counts(ld), _verdict(ld)))
    for key, label in (("security", "password URL"), ("tls", "rediss:// (TLS)")):
        if key in r:
            lines.append(_row(label, *["-"] * 6, _verdict(r[key])))
    if soak and "error" not in soak:
        lines += [
            "",
            "## Worker SIGKILL soak",
            "",
            f"{soak['runs']} runs of a 5-step workflow (half a canvas `a → (b, c) → d → e`, "
            "half an N-shaped DAG run by dynamic dispatch; each step sleeps 0.2-0.9 s) on "
            f"{soak['workers']} workers x {soak['concurrency']} processes. Every "
            f"{soak['kill_every_s']} s the whole process group of a random worker got "
            "SIGKILL and the worker was started again.",
            "",
            f"- kills: **{soak['kills']}**; time to the end of the last run: {soak['elapsed_s']} s",
            f"- step executions repeated (at-least-once): **{soak['repeated_executions']}** "
            f"of {soak['step_starts']} starts ({soak['repeats_not_after_a_kill']} not "
            "explained by a kill of the worker that ran the earlier execution)",
            f"- recovery delay (kill of the worker → the step starting again elsewhere): "
            f"max **{soak['recovery_delay_max_s']} s**, median "
            f"{soak['recovery_delay_median_s']} s over {soak['recovered_steps']} recovered "
            "steps",
            f"- steps recorded succeeded more than once: {soak['duplicate_step_successes']}; "
            f"runs lost: {soak['lost']}; failed: {soak['failed']}; hanging: "
            f"**{soak['hanging']}**",
            *_hangs(soak),
        ]
    if rr and "cases" in rr:
        lines += [
            "",
            "## Redis restart",
            "",
            f"Two workers (4 processes each). {s['restart_runs']} runs were submitted; once "
            "at least two canvas steps and two dynamic steps were running, Redis was "
            f"stopped (SIGTERM: clean shutdown; SIGKILL: crash), kept down for about "
            f"{rr['down_s']} s and started again on the same port and AOF directory. The "
            "same client then submitted "
            f"{s['restart_after_runs']} more runs without reconnecting by hand. The two "
            "cases ran one after the other on the same workers.",
            "",
            f"- workers alive afterwards: {rr['workers_alive_after']}; worker log lines "
            f"'Connection to broker lost': {rr['worker_log_connection_lost']}, "
            f"'Connected to redis://': {rr['worker_log_reconnected']}",
        ]
        for name, c in rr["cases"].items():
            lines += [
                f"- **{name}**: steps running at the stop: {c['at_restart'].get('steps_running')}; "
                f"down {c['down_s']} s; submit while down: {c['submit_while_down']}; "
                f"runs {c['runs']} ({c['runs_before']} before, {c['runs_after_restart']} "
                f"after), succeeded {c['succeeded']}, failed {c['failed']}, hanging "
                f"**{c['hanging']}**, lost {c['lost']}, duplicate step successes "
                f"{c['duplicate_step_successes']}, repeated executions "
                f"{c['repeated_executions']}; all ended "
                + (
                    f"{c['all_ended_s_after_restart']} s after the restart"
                    if c["all_ended_s_after_restart"] is not None
                    else "— **no**, see hanging runs"
                ),
                *_hangs(c),
            ]
    if ld and "error" not in ld:
        lines += [
            "",
            "## Load",
            "",
            f"{ld['runs']} runs of a 5-step canvas workflow (steps do nothing) submitted "
            "back to back with `submit()` from one process against "
            f"{ld['workers']} workers x {ld['concurrency']} processes, after 10 warm-up runs.",
            "",
            f"- submitting took {ld['submit_s']} s (**{ld['submit_per_s']} runs/s**)",
            f"- first submit → last run ended: {ld['wall_s']} s: **{ld['runs_per_s']} runs/s, "
            f"{ld['steps_per_s']} steps/s**",
            f"- worker RSS (MB, worker + pool): before {ld['rss_mb_before']}, peak "
            f"{ld['rss_mb_peak']}, after {ld['rss_mb_after']}",
            f"- succeeded {ld['succeeded']}/{ld['runs']}; lost {ld['lost']}; steps recorded "
            f"more than once {ld['duplicate_step_successes']}; step starts "
            f"{ld['step_starts']} for {ld['steps_checked']} steps",
        ]
    sec = r.get("security")
    if sec and "error" not in sec:
        lines += [
            "",
            "## Credentials",
            "",
            "A private redis-server with `--requirepass`; worker, CLI and Flower configured "
            "with `redis://:PASSWORD@127.0.0.1:PORT/0`. A workflow ran end to end, then the "
            "password (and a wrong one used on purpose) was searched for in: "
            + ", ".join(f"`{p}`" for p in sec["places_checked"])
            + ".",
            "",
            f"- found in: {sec['leaks'] or 'nowhere'}",
            f"- wrong password: `trigger` exits {sec['wrong_password_trigger_exit']}, "
            f"`status` exits {sec['wrong_password_status_exit']}; message: "
            f"`{sec['wrong_password_message']}`",
            f"- a step's environment contains the password (through the inherited "
            f"`RUNBOOK_REDIS_URL`): **{sec['step_env_has_password']}**",
        ]
    tls = r.get("tls")
    if tls:
        lines += ["", "## rediss:// (TLS)", ""]
        if "skipped" in tls:
            lines.append(f"Skipped: {tls['skipped']}.")
        else:
            lines.append(
                f"`{tls.get('redis_server')}` with `--tls-port` and a self-signed certificate "
                f"(password too); URL `{tls.get('url_shape')}`: trigger --wait exit "
                f"{tls.get('trigger_exit')}, password leaked: {tls.get('password_leaked')}."
            )
    problems = []
    all_hangs = [
        h
        for res in [soak or {}, ld or {}, *((rr or {}).get("cases", {}).values())]
        for h in res.get("examples", {}).get("hanging", {}).values()
    ]
    if any(
        any(st["status"] == "pending" and not st.get("attempts") for st in h["steps"].values())
        and any(st["status"] in ("succeeded", "failed") for st in h["steps"].values())
        for h in all_hangs
    ):
        problems.append(HANDON_LOST)
    if any(
        any(st["status"] == "pending" and not st.get("attempts") for st in h["steps"].values())
        and not any(st["status"] in ("succeeded", "failed") for st in h["steps"].values())
        for h in all_hangs
    ):
        problems.append(NEVER_STARTED)
    if any(
        h["mode"] == "canvas" and any(st["status"] == "running" for st in h["steps"].values())
        for h in all_hangs
    ):
        problems.append(CANVAS_ACKED)
    if sec and sec.get("step_env_has_password") == "yes":
        problems.append(
            "**Steps see the Redis password**: a step inherits the worker's environment, "
            "`RUNBOOK_REDIS_URL`/`RUNBOOK_BROKER_URL` included, so `env` or `set -x` in a "
            "step writes the password into the step's log."
        )
    lines += ["", "## Problems found in this run", ""]
    lines += [f"{i}. {p}" for i, p in enumerate(problems, 1)] or ["None."]
    lines += ["", "## Bugs found by earlier runs of this battery, now fixed", ""]
    lines += [f"{i}. {text}" for i, text in enumerate(FIXED, 1)]
    return "\n".join(lines) + "\n"
