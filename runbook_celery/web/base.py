"""What every handler of ours shares: Flower's login, who the user is, the control rule.

Authentication is Flower's (``BaseHandler.get_current_user``: ``--basic-auth``, or
``--auth`` with an OAuth provider). On top of it:

* ``by``: the name recorded with every action: the OAuth e-mail, else the basic-auth
  user name, else ``anonymous`` (only possible with ``FLOWER_UNAUTHENTICATED_API``).
* Control actions follow Flower's rule for its API: refused without authentication
  unless ``FLOWER_UNAUTHENTICATED_API`` is true, and refused under ``--read_only``.
* A POST must be JSON from the same origin (so a form on another site cannot post with
  the browser's basic-auth credentials), and with an OAuth cookie session it must carry
  the XSRF token too. No CORS headers: other origins cannot read or drive these pages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlparse

import tornado.web
from flower.utils import strtobool
from flower.views import BaseHandler
from tornado.web import StaticFileHandler

from ..core.errors import (
    BackendUnavailable,
    InvalidOperation,
    InvalidParams,
    RunbookError,
    RunNotFound,
)
from ..core.settings import Settings
from ..store import RunStore
from ..store.history import EndedRuns
from ..store.redisconn import BACKEND_ERRORS, describe_backend_error
from .definitions import Definitions

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'"
)
_T = TypeVar("_T")


@dataclass
class WebContext:
    """Shared by every handler: our settings, the run store, the definitions folder."""

    settings: Settings
    store: RunStore
    definitions: Definitions
    ended: EndedRuns = field(default_factory=EndedRuns)  # makes filtering the history cheap
    # Short Redis reads and actions run here, never on the IOLoop.
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(8, thread_name_prefix="runbook-web")
    )


def unauthenticated_api() -> bool:
    """Flower's switch for using its API without a login (``FLOWER_UNAUTHENTICATED_API``)."""
    try:
        return bool(strtobool(os.environ.get("FLOWER_UNAUTHENTICATED_API") or "false"))
    except ValueError:
        return False


class RunbookHandler(BaseHandler):  # type: ignore[misc]  # Flower has no types: Any
    """Base of our pages and API: Flower's login plus the rules in the module docstring."""

    ctx: WebContext

    def initialize(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def set_default_headers(self) -> None:
        # Not Flower's: it may add CORS headers; ours are same-origin only.
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Content-Security-Policy", CSP)

    @property
    def authenticated_flower(self) -> bool:
        options = self.application.options
        return bool(options.basic_auth or options.auth)

    def user_name(self) -> str:
        """Who is acting, as recorded in ``by``: OAuth e-mail, basic-auth user, or anonymous."""
        if self.application.options.auth and isinstance(self.current_user, str):
            return self.current_user
        if self.application.options.basic_auth:
            scheme, _, encoded = self.request.headers.get("Authorization", "").partition(" ")
            if scheme == "Basic":
                try:
                    return base64.b64decode(encoded).decode().partition(":")[0]
                except (binascii.Error, UnicodeDecodeError):
                    pass
        return "anonymous"

    def control_refusal(self) -> str | None:
        """Why control actions are refused here, or None when they are allowed."""
        if getattr(self.application.options, "read_only", False):
            return "Flower runs with --read_only: runs can be viewed, not changed."
        if not self.authenticated_flower and not unauthenticated_api():
            return (
                "Controls are off: this Flower has no login (--basic-auth or --auth), and "
                "like Flower's own API they then need FLOWER_UNAUTHENTICATED_API=true."
            )
        return None

    def check_xsrf_cookie(self) -> None:
        """Done in ``check_post`` instead, the same under every Flower version."""

    def check_post(self) -> None:
        """Refuse cross-site and non-JSON POSTs; OAuth cookie sessions need the XSRF token."""
        site = self.request.headers.get("Sec-Fetch-Site")
        if site and site not in ("same-origin", "none"):
            raise tornado.web.HTTPError(403, "cross-site request refused")
        origin = self.request.headers.get("Origin")
        if origin and urlparse(origin).netloc != self.request.host:
            raise tornado.web.HTTPError(403, "cross-origin request refused")
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if self.request.body and ctype != "application/json":
            raise tornado.web.HTTPError(415, "send JSON (Content-Type: application/json)")
        if self.application.options.auth and not self.request.headers.get("Authorization"):
            tornado.web.RequestHandler.check_xsrf_cookie(self)

    def url(self, path: str) -> str:
        """An absolute path under Flower's --url_prefix."""
        prefix = (self.application.options.url_prefix or "").strip("/")
        return f"/{prefix}{path}" if prefix else path

    def static(self, name: str) -> str:
        version = StaticFileHandler.get_version({"static_path": str(STATIC_DIR)}, name)
        return self.url(f"/runbook-static/{name}?v={version}")

    def task_url(self, task_id: str) -> str:
        return self.url("/task/" + quote(task_id, safe=""))

    async def blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a Redis call in our pool, so the IOLoop serves other requests meanwhile.

        A Redis or broker failure becomes BackendUnavailable (503), never a 500.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.ctx.executor, fn, *args)
        except BACKEND_ERRORS as exc:
            raise BackendUnavailable(describe_backend_error(exc)) from exc


def error_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message for an error of ours (never a 500 for bad input)."""
    if isinstance(exc, RunNotFound):
        return 404, str(exc)
    if isinstance(exc, InvalidParams):
        return 400, str(exc)
    if isinstance(exc, InvalidOperation):
        return 409, str(exc)
    if isinstance(exc, BackendUnavailable):
        return 503, str(exc)
    if isinstance(exc, RunbookError):
        return 400, str(exc)
    return 500, "internal error; see Flower's log"


def json_body(handler: tornado.web.RequestHandler) -> dict[str, Any]:
    """The request body as a JSON object ({} when empty); 400 for anything else."""
    raw = handler.request.body
    if not raw or not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise tornado.web.HTTPError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise tornado.web.HTTPError(400, "the body must be a JSON object")
    return body
