"""Flower with our pages: one process, one port, Flower's auth, URL prefix and navbar.

``serve()`` does what Flower's own ``celery flower`` command does (its option parsing,
settings and banner functions from ``flower.command``), then adds our handlers to the
Flower tornado Application with ``add_handlers`` (consulted before Flower's catch-all
404) and gives it a template loader that serves our templates next to Flower's.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import tornado.template
import tornado.web
from celery import Celery
from flower import command as flower_command
from flower.app import Flower, rewrite_handler
from flower.utils.tasks import get_task_by_id
from flower.views.tasks import TaskView
from tornado.web import StaticFileHandler, url

from ..core.settings import Settings, get_settings
from ..store import RunStore
from ..store.redisconn import get_client
from . import api, pages, streams
from .base import STATIC_DIR, TEMPLATE_DIR, WebContext
from .definitions import Definitions

logger = logging.getLogger(__name__)

RUN_ID = r"([A-Za-z0-9_-]{1,128})"
STEP_ID = r"([^/]{1,300})"


def routes(ctx: WebContext) -> list[Any]:
    """Our handlers; page routes follow Flower's page rule, /api ones its API rule."""
    kw = {"ctx": ctx}
    return [
        url(r"/runs", pages.RunsPage, kw, name="runbook_runs"),
        url(r"/runs/new", pages.TriggerPage, kw, name="runbook_trigger"),
        url(rf"/runs/{RUN_ID}", pages.RunPage, kw, name="runbook_run"),
        url(rf"/runs/{RUN_ID}/live", pages.RunLive, kw),
        url(rf"/runs/{RUN_ID}/events", streams.PageEvents, kw),
        url(rf"/runs/{RUN_ID}/logs/{STEP_ID}", streams.StepLog, kw),
        url(r"/api/runs", api.Runs, kw),
        url(rf"/api/runs/{RUN_ID}", api.OneRun, kw),
        url(rf"/api/runs/{RUN_ID}/events", streams.ApiEvents, kw),
        url(rf"/api/runs/{RUN_ID}/(cancel|pause|resume|rerun|abort)", api.RunAction, kw),
        url(
            rf"/api/runs/{RUN_ID}/steps/{STEP_ID}/(approve|reject|retry|skip)",
            api.StepAction,
            kw,
        ),
        url(r"/api/runs/.*", api.NotFound, kw),
        url(r"/runbook-static/(.*)", StaticFileHandler, {"path": str(STATIC_DIR)}),
    ]


class TemplateLoader(tornado.template.Loader):
    """Flower's templates, ours beside them, and Flower's navbar with a Runs tab.

    Tornado lets an Application bring its own loader (the ``template_loader`` setting);
    Flower renders ``navbar.html`` on every page, so serving it with one more tab puts
    Runs next to Workers, Tasks and Broker on Flower's pages and ours alike.
    """

    def _create_template(self, name: str) -> tornado.template.Template:
        ours = TEMPLATE_DIR / name
        if name == "navbar.html":
            text = with_runs_tab((Path(self.root) / name).read_text())
        elif name.startswith("runbook_") and ours.is_file():
            text = ours.read_text()
        else:
            return super()._create_template(name)
        return tornado.template.Template(text, name=name, loader=self)


def with_runs_tab(navbar: str) -> str:
    """Flower's navbar template with a Runs tab after Broker, styled like Broker's.

    The Broker item is copied and renamed, so the tab follows Flower's markup as it
    changes between versions; a navbar without a Broker item is left as it is.
    """
    at = navbar.find("reverse_url('broker')")
    start = navbar.rfind("<li", 0, at)
    end = navbar.find("</li>", at)
    if at < 0 or start < 0 or end < 0:
        logger.warning("Flower's navbar has no Broker tab; the Runs tab is not shown")
        return navbar
    end += len("</li>")
    broker = navbar[start:end]
    runs = (
        broker.replace("reverse_url('broker')", "reverse_url('runbook_runs')")
        .replace("'broker'", "'runs'")
        .replace(">Broker<", ">Runs<")
    )
    return navbar[:end] + "\n" + runs + navbar[end:]


def build_app(
    capp: Celery,
    options: Any,
    settings: dict[str, Any],
    definitions: Path | None = None,
    rb_settings: Settings | None = None,
) -> Flower:
    """A Flower Application for ``capp`` with our pages and API added."""
    rb = rb_settings or get_settings()
    ctx = WebContext(
        settings=rb,
        store=RunStore(get_client(rb), rb.prefix, rb.retention),
        definitions=Definitions(definitions),
    )
    loader = TemplateLoader(settings["template_path"])
    app = Flower(capp=capp, options=options, template_loader=loader, **settings)
    handlers = routes(ctx)
    if options.url_prefix:
        handlers = [rewrite_handler(h, options.url_prefix) for h in handlers]
    app.add_handlers(r".*", handlers)
    _lead_run_ids_to_run_pages(app, ctx)
    return app


def _lead_run_ids_to_run_pages(app: Flower, ctx: WebContext) -> None:
    """Flower links every step's root id, which is its run id, to ``/task/<run id>``; no
    task has that id. Flower's own task page gets a subclass that sends such ids to the
    run page, and shows real tasks as before."""

    class TaskOrRunView(TaskView):  # type: ignore[misc]  # Flower has no types: Any
        @tornado.web.authenticated
        def get(self, task_id: str) -> None:
            if get_task_by_id(self.application.events, task_id) is None and _is_run(ctx, task_id):
                self.redirect(self.reverse_url("runbook_run", task_id))
                return
            TaskView.get.__wrapped__(self, task_id)

    for rule in _rules(app.default_router):
        if rule.target is TaskView:
            rule.target = TaskOrRunView


def _rules(router: Any) -> list[Any]:
    out = []
    for rule in getattr(router, "rules", []):
        out.append(rule)
        out += _rules(rule.target)
    return out


def _is_run(ctx: WebContext, run_id: str) -> bool:
    try:
        return ctx.store.run_status(run_id) is not None
    except Exception:  # a malformed id or Redis trouble: Flower's own answer (404)
        return False


def serve(capp: Celery, argv: list[str], definitions: Path | None = None) -> None:
    """Parse Flower's options (argv, FLOWER_* variables, flowerconfig.py) and serve."""
    flower_command.apply_env_options()
    flower_command.apply_options("runbook-celery flower", argv)
    flower_command.extract_settings()
    flower_command.setup_logging()
    settings = dict(flower_command.settings)
    app = build_app(capp, flower_command.options, settings, definitions)
    atexit.register(app.stop)

    def stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s detected, shutting down", signum)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    port = app.start_http_server()
    flower_command.print_banner(capp, "ssl_options" in settings, port)
    logger.info("Runs at /runs%s", f" (definitions: {definitions})" if definitions else "")
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        app.start()
