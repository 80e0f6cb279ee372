"""The worker's own components are bootsteps of our app's worker, and importing starts nothing.

A worker built from our app (not started: no broker needed) has the containment, reconciler
and hand-back steps in its blueprint, after the pool (they are closed right after it stops
taking tasks, stopped before it waits for running ones) and before the consumer. Importing
every engine module, as the CLI and the web process do, starts no thread. The steps' hooks
behave as the worker relies on: the reconciler thread runs between start and stop, and
closing the hand-back step raises the flag file after the shutdown grace.
"""

from __future__ import annotations

import dataclasses
import os
import pkgutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from celery.worker import components
from celery.worker.worker import WorkController

import runbook_celery.engine
from runbook_celery.core.settings import get_settings
from runbook_celery.engine import containment, workersteps, workerstore
from runbook_celery.engine.app import make_app

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def test_importing_every_engine_module_starts_no_thread():
    package = runbook_celery.engine
    modules = [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    code = (
        "import importlib, sys, threading\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(','.join(t.name for t in threading.enumerate()))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, *modules],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "runbook_celery.engine.workersteps" in modules
    assert res.stdout.strip() == "MainThread"


def test_a_worker_of_our_app_has_our_bootsteps_between_the_pool_and_the_consumer(monkeypatch):
    chosen: list[str] = []
    monkeypatch.setattr(containment, "setup", lambda mode: chosen.append(mode))
    app = make_app(get_settings())
    worker = WorkController(app=app, pool_cls="solo", concurrency=1, without_heartbeat=True)
    order = [type(step) for step in worker.steps]
    assert chosen == [get_settings().containment]  # while the worker was built, not at import
    pool, consumer = order.index(components.Pool), order.index(components.Consumer)
    for step in (workersteps.Containment, workersteps.Reconciler, workersteps.HandBack):
        assert step in order
    for step in (workersteps.Reconciler, workersteps.HandBack):
        assert pool < order.index(step) < consumer
    assert consumer == len(order) - 1


class _Worker:
    """What the steps read of a WorkController: nothing."""


def test_the_reconciler_thread_runs_from_start_to_stop(monkeypatch):
    passes = threading.Event()
    monkeypatch.setattr(workersteps.Reconciler, "reconcile", staticmethod(lambda *a: passes.set()))
    monkeypatch.setattr(workerstore, "worker_store", lambda: (get_settings(), None))
    monkeypatch.setattr(workersteps, "client_for", lambda url: None)
    step = workersteps.Reconciler(_Worker())
    step.start(_Worker())
    try:
        assert step.thread is not None
        assert step.thread.name == workersteps.RECONCILER_THREAD
        assert passes.wait(timeout=10)  # a pass every third of a lease
    finally:
        step.close(_Worker())
        step.stop(_Worker())
    assert not step.thread.is_alive()


def test_closing_the_hand_back_step_raises_the_flag_after_the_grace(monkeypatch):
    raised = threading.Event()
    settings = dataclasses.replace(get_settings(), shutdown_grace=0.0)
    monkeypatch.setattr(workersteps, "get_settings", lambda: settings)

    def flag(grace: float) -> None:
        raised.set()

    monkeypatch.setattr(workersteps, "_raise_flag", flag)
    step = workersteps.HandBack(_Worker())
    step.close(_Worker())
    assert raised.wait(timeout=10)
    step.stop(_Worker())


def test_the_flag_file_is_raised_and_cleared_for_this_worker_process():
    path = workerstore.shutdown_flag_path(os.getpid())
    workersteps._raise_flag(0)
    assert Path(path).read_text() == "handback\n"
    workersteps._on_worker_shutdown()
    assert not os.path.exists(path)
