"""The JSON API: runs as ``status --json`` shows them, triggering, and every control action.

Under Flower's rule for its API: with no login configured it answers only when
``FLOWER_UNAUTHENTICATED_API`` is true. Bad input is a 4xx with ``{"error": ...}``;
see docs/http-api.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import tornado.web

from ..client.api import submit
from ..client.render import record_json
from ..client.run import Run
from ..core.errors import InvalidOperation, RunbookError, RunNotFound
from ..plan.runrecord import RunRecord
from ..store.events import RunStatus
from ..store.history import page_runs
from .base import RunbookHandler, error_status, json_body, unauthenticated_api

MAX_LIMIT = 200
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
FLOWER_RULE = (
    "FLOWER_UNAUTHENTICATED_API environment variable is required to enable API "
    "without authentication"
)


class ApiHandler(RunbookHandler):
    """JSON in, JSON out, errors included."""

    def prepare(self) -> None:
        if not self.authenticated_flower and not unauthenticated_api():
            raise tornado.web.HTTPError(401, FLOWER_RULE)
        if not self.current_user:  # OAuth without a session cookie
            raise tornado.web.HTTPError(401, "log in to Flower first")
        if self.request.method == "POST":
            refusal = self.control_refusal()
            if refusal:
                raise tornado.web.HTTPError(403, refusal)
            self.check_post()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code == 401:
            message = "log in first (this Flower runs with --basic-auth or --auth)"
        else:
            message = self._reason
        if status_code == 401 and self.application.options.basic_auth:
            self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish({"error": message, "status": status_code})

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` off the IOLoop; our errors become their HTTP status."""
        try:
            return await self.blocking(fn)
        except RunbookError as exc:
            status, message = error_status(exc)
            raise tornado.web.HTTPError(status, "%s", message) from None

    def record(self, run_id: str) -> RunRecord:
        return self.ctx.store.get_run(run_id)

    def respond(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        self.write(body)


class NotFound(ApiHandler):
    def get(self) -> None:
        raise tornado.web.HTTPError(404, "no such endpoint; see docs/http-api.md")

    post = get


def _int_arg(handler: ApiHandler, name: str, default: int, low: int, high: int) -> int:
    raw = handler.get_query_argument(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise tornado.web.HTTPError(400, "%s must be a whole number", name) from None
    if not low <= value <= high:
        raise tornado.web.HTTPError(400, "%s must be between %d and %d", name, low, high)
    return value


class Runs(ApiHandler):
    async def get(self) -> None:
        """The history, newest first: ``?workflow=&status=&limit=&offset=``."""
        workflow = self.get_query_argument("workflow", "") or None
        status = self.get_query_argument("status", "") or None
        if status is not None and status not in {s.value for s in RunStatus}:
            known = ", ".join(s.value for s in RunStatus)
            raise tornado.web.HTTPError(400, "unknown status %r (one of: %s)", status, known)
        limit = _int_arg(self, "limit", 20, 1, MAX_LIMIT)
        offset = _int_arg(self, "offset", 0, 0, 10**9)

        def read() -> dict[str, Any]:
            found = page_runs(
                self.ctx.store,
                workflow=workflow,
                status=status,
                offset=offset,
                limit=limit,
                ended=self.ctx.ended,
            )
            runs = []
            for summary in found.runs:
                try:
                    runs.append(record_json(self.record(summary.id)))
                except RunNotFound:
                    continue  # expired between the two reads
            return {"total": found.total, "offset": offset, "limit": limit, "runs": runs}

        self.respond(200, await self.call(read))

    async def post(self) -> None:
        """Trigger a workflow of the definitions folder: ``{"workflow": NAME, "params": {}}``."""
        body = json_body(self)
        name = body.get("workflow")
        params = body.get("params", {})
        if not isinstance(name, str) or not name:
            raise tornado.web.HTTPError(400, "give the workflow's name as a string: workflow")
        if not isinstance(params, dict):
            raise tornado.web.HTTPError(400, "params must be an object of name: value")
        unknown = set(body) - {"workflow", "params"}
        if unknown:
            raise tornado.web.HTTPError(400, "unknown field(s): %s", ", ".join(sorted(unknown)))
        if self.ctx.definitions.directory is None:
            raise tornado.web.HTTPError(
                404,
                "no definitions folder: start Flower with runbook-celery flower --definitions DIR",
            )
        by = self.user_name()

        def start() -> str:
            found = self.ctx.definitions.find(name)
            if not found:
                raise InvalidOperation(
                    f"no valid workflow named {name!r} in the definitions folder"
                )
            if len(found) > 1:
                files = ", ".join(str(d.file) for d in found)
                raise InvalidOperation(
                    f"workflow name {name!r} is defined by several files: {files}"
                )
            loaded = found[0].loaded
            assert loaded is not None  # find() returns valid definitions only
            run = submit(loaded, params, settings=self.ctx.settings, extra={"triggered_by": by})
            return run.id

        try:
            run_id = await self.blocking(start)
        except InvalidOperation as exc:
            status = 404 if "no valid workflow" in str(exc) else 409
            raise tornado.web.HTTPError(status, "%s", str(exc)) from None
        except RunbookError as exc:
            status, message = error_status(exc)
            raise tornado.web.HTTPError(status, "%s", message) from None
        self.set_header("Location", self.url(f"/api/runs/{run_id}"))
        self.respond(201, {"id": run_id, "url": self.url(f"/runs/{run_id}")})


class OneRun(ApiHandler):
    async def get(self, run_id: str) -> None:
        record = await self.call(lambda: self.record(run_id))
        self.respond(200, record_json(record))


class RunAction(ApiHandler):
    """cancel | pause | resume | rerun | abort, recorded with the user as ``by``."""

    async def post(self, run_id: str, action: str) -> None:
        body = json_body(self)
        by = self.user_name()
        run = Run(run_id, self.ctx.settings)
        if action == "rerun":
            from_failed, from_step = _rerun_args(body)

            def again() -> Run:
                _require_run(self, run_id)
                return run.rerun(from_failed=from_failed, from_step=from_step, by=by)

            new = await self.call(again)
            self.set_header("Location", self.url(f"/api/runs/{new.id}"))
            self.respond(
                201, {"id": new.id, "url": self.url(f"/runs/{new.id}"), "rerun_of": run_id}
            )
            return
        if body:
            raise tornado.web.HTTPError(400, "%s takes no body", action)

        def act() -> dict[str, Any]:
            record = _require_run(self, run_id)
            if action == "cancel":
                if record.finished:
                    raise InvalidOperation(f"run {run_id} has already ended ({record.status})")
                run.cancel(by=by)
            elif action == "pause":
                run.pause(by=by)
            elif action == "resume":
                run.resume(by=by)
            else:
                run.abort(by=by)
            return record_json(self.record(run_id))

        self.respond(200, await self.call(act))


def _require_run(handler: ApiHandler, run_id: str) -> RunRecord:
    return handler.record(run_id)  # RunNotFound -> 404


def _rerun_args(body: dict[str, Any]) -> tuple[bool, str | None]:
    unknown = set(body) - {"from_failed", "from_step"}
    if unknown:
        raise tornado.web.HTTPError(400, "unknown field(s): %s", ", ".join(sorted(unknown)))
    from_failed = body.get("from_failed", False)
    from_step = body.get("from_step")
    if not isinstance(from_failed, bool):
        raise tornado.web.HTTPError(400, "from_failed must be true or false")
    if from_step is not None and (not isinstance(from_step, str) or not from_step):
        raise tornado.web.HTTPError(400, "from_step must be a step id")
    if from_failed and from_step:
        raise tornado.web.HTTPError(400, "give from_failed or from_step, not both")
    return from_failed, from_step


class StepAction(ApiHandler):
    """approve | reject | retry | skip one step, recorded with the user as ``by``."""

    async def post(self, run_id: str, step_id: str, action: str) -> None:
        body = json_body(self)
        allowed = {"retry": {"env"}, "skip": {"outputs"}}.get(action, set())
        unknown = set(body) - allowed
        if unknown:
            raise tornado.web.HTTPError(400, "unknown field(s): %s", ", ".join(sorted(unknown)))
        values = _string_map(body, "env" if action == "retry" else "outputs")
        by = self.user_name()
        run = Run(run_id, self.ctx.settings)

        def act() -> dict[str, Any]:
            if action == "approve":
                run.approve(step_id, by=by)
            elif action == "reject":
                run.reject(step_id, by=by)
            elif action == "retry":
                run.retry_step(step_id, env=values, by=by)
            else:
                run.skip_step(step_id, outputs=values, by=by)
            return record_json(self.record(run_id))

        record = await self.call(lambda: _require_run(self, run_id))
        if step_id not in record.steps:
            raise tornado.web.HTTPError(404, "run %s has no step %r", run_id, step_id)
        self.respond(200, await self.call(act))


def _string_map(body: dict[str, Any], name: str) -> dict[str, str]:
    raw = body.get(name, {})
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise tornado.web.HTTPError(400, "%s must be an object of string: string", name)
    if name == "env":
        bad = [k for k in raw if not ENV_NAME.match(k)]
        if bad:
            raise tornado.web.HTTPError(400, "not an environment variable name: %r", bad[0])
    elif any(not k or "\x00" in k for k in raw):
        raise tornado.web.HTTPError(400, "output names must be non-empty")
    return dict(raw)
