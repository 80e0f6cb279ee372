"""The pages: the runs list, a run (DAG, steps, logs, buttons) and the trigger form.

Pages follow Flower's rule for its pages: open without a login unless Flower has one.
They are rendered on the server; a run page then follows the run's event stream and
swaps in the parts that changed (``/runs/<id>/live``), rendered by the same templates.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, NoReturn

import tornado.web

from ..core.errors import RunbookError
from ..plan.runrecord import RunRecord
from ..store.codec import range_reply
from ..store.events import RunStatus
from ..store.history import RunPage as HistoryPage
from ..store.history import page_runs
from .base import RunbookHandler, error_status
from .view import RunView, run_view, seconds_text

PER_PAGE = 50


def clock(iso: str | None) -> str:
    """``2026-01-02T03:04:05.678Z`` as ``2026-01-02 03:04:05Z``."""
    return f"{iso[:10]} {iso[11:19]}Z" if iso and len(iso) >= 19 else ""


class PageHandler(RunbookHandler):
    """A page: errors of ours become Flower's error page with our message."""

    def page(self, template: str, **kwargs: Any) -> None:
        _ = self.xsrf_token  # sets the _xsrf cookie our scripts send back
        self.render(template, clock=clock, refusal=self.control_refusal(), **kwargs)

    def fail(self, exc: RunbookError) -> NoReturn:
        status, message = error_status(exc)
        raise tornado.web.HTTPError(status, message) from None


class RunsPage(PageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        workflow = self.get_query_argument("workflow", "").strip() or None
        status = self.get_query_argument("status", "").strip() or None
        if status is not None and status not in {s.value for s in RunStatus}:
            raise tornado.web.HTTPError(400, f"unknown status {status!r}")
        try:
            number = max(1, int(self.get_query_argument("page", "1")))
        except ValueError:
            raise tornado.web.HTTPError(400, "page must be a whole number") from None
        try:
            found: HistoryPage = await self.blocking(
                lambda: page_runs(
                    self.ctx.store,
                    workflow=workflow,
                    status=status,
                    offset=(number - 1) * PER_PAGE,
                    limit=PER_PAGE,
                    ended=self.ctx.ended,
                )
            )
            names = await self.blocking(lambda: [d.name for d in self.ctx.definitions.all()])
        except RunbookError as exc:
            self.fail(exc)
        known = sorted({n for n in names if n} | {r.workflow for r in found.runs})
        self.page(
            "runbook_runs.html",
            found=found,
            workflow=workflow or "",
            status=status or "",
            statuses=[s.value for s in RunStatus],
            workflows=known,
            number=number,
            pages=max(1, math.ceil(found.total / PER_PAGE)),
            seconds=seconds_text,
            has_definitions=self.ctx.definitions.directory is not None,
        )


class TriggerPage(PageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        found = await self.blocking(self.ctx.definitions.all)
        self.page(
            "runbook_trigger.html",
            definitions=found,
            directory=self.ctx.definitions.directory,
            chosen=self.get_query_argument("workflow", ""),
        )


class RunPageBase(PageHandler):
    async def load(self, run_id: str) -> tuple[RunView, str]:
        """The run's view and the id of its newest event (live updates follow from there)."""

        def read() -> tuple[RunRecord, dict[str, Any], str]:
            store = self.ctx.store
            newest = range_reply(store.r.xrevrange(store.keys.run_events(run_id), count=1))
            last = newest[0][0] if newest else b"0-0"
            record = store.get_run(run_id)
            return (
                record,
                store.snapshot(run_id),
                last.decode() if isinstance(last, bytes) else last,
            )

        try:
            record, snapshot, last = await self.blocking(read)
        except RunbookError as exc:
            self.fail(exc)
        view = run_view(record, snapshot, datetime.now(UTC), self.ctx.settings.default_queue)
        return view, last

    def parts(self, view: RunView) -> dict[str, str]:
        common = {
            "view": view,
            "run": view.record,
            "refusal": self.control_refusal(),
            "clock": clock,
        }
        return {
            "header": self.render_string("runbook_run_header.html", **common).decode(),
            "steps": self.render_string("runbook_run_steps.html", **common).decode(),
            "dag": view.dag,
        }


class RunPage(RunPageBase):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        view, last = await self.load(run_id)
        self.page("runbook_run.html", view=view, run=view.record, parts=self.parts(view), last=last)


class RunLive(RunPageBase):
    """The changing parts of a run page, as HTML rendered by the page's own templates."""

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        view, last = await self.load(run_id)
        self.set_header("Cache-Control", "no-store")
        self.write(
            {
                "status": view.record.status,
                "finished": view.finished,
                "last_event_id": last,
                **self.parts(view),
            }
        )
