"""The dashboard's web application: the JSON API under ``/api``, the pages, and the static files.

``create_app(store_url, token)`` opens the store (reading; the controls are the only writes) and
returns a FastAPI application. Every route but ``/static`` needs the token (``engine.serve.auth``).
Errors are JSON ``{"error": "<what went wrong>"}`` with a 4xx status (unknown run 404, malformed
id or parameter 422, a control on a run without a daemon 409), a store that cannot be read 503,
and anything unexpected a 500 that says only that: the traceback goes to the server's log, never to
the client. No CORS middleware: a page of another origin cannot read an answer. The OpenAPI
document is ``/api/openapi.json``; the interactive Swagger pages are off, as they load from a CDN.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.serve import pages
from engine.serve.auth import COOKIE, CSRF_HEADER, bearer, token_matches
from engine.serve.data import NoDaemon, Reader
from engine.store.db import RunNotFound, StoreError

log = logging.getLogger("engine.serve")

STATIC = Path(__file__).resolve().parent / "static"
RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$"  # what new_run_id makes, and prefixes of it
RunId = Annotated[str, PathParam(pattern=RUN_ID, max_length=64, description="a run id, or a unique prefix of one")]
Limit = Annotated[int, Query(ge=1, le=1000, description="how many rows (1-1000)")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="rows to skip, newest first")]
MaxPoints = Annotated[int, Query(ge=2, le=100_000, description="thin the series to at most this many points")]
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "Cache-Control": "no-store",
}


class HaltRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="halted from the dashboard", min_length=1, max_length=500,
                        description="recorded with the halt, shown by `paper status`")
    flatten: bool = Field(default=False, description="also cancel the open orders and close the positions")


class Unauthorised(Exception):
    pass


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """JSON whatever the store held: NaN and infinities become null instead of a failed response."""

    def render(self, content: Any) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=str).encode("utf-8")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return SafeJSONResponse({"error": message, **extra}, status_code=status, headers=SECURITY_HEADERS)


def create_app(store_url: str, token: str, *, config: Any = None, create: bool = False) -> FastAPI:
    """The dashboard over the store at ``store_url`` (a URL or a SQLite path), guarded by ``token``.
    ``config`` (the checked ``Config``; defaults when None) gives the daemons' staleness limits;
    ``create`` makes an empty store where there is none (a daemon about to record into it)."""
    if len(token) < 16:
        raise ValueError("the dashboard token must be at least 16 characters")
    from engine.store.db import open_store

    if config is None:
        from engine.session import load_settings

        config = load_settings(None, [])
    store = open_store(store_url, create=create, busy_timeout=config.store.busy_timeout)
    reader = Reader(store, lease_stale_ms=int(config.paper.lease_stale_s * 1000))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(title="llmtrader dashboard API", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, description=__doc__,
                  default_response_class=SafeJSONResponse)
    app.state.reader, app.state.store, app.state.config = reader, store, config

    def authorised(request: Request) -> None:
        header = bearer(request.headers.get("authorization"))
        if header is not None:
            if not token_matches(header, token):
                raise Unauthorised("the token does not match")
            return
        cookie = request.cookies.get(COOKIE)
        if cookie is None:
            raise Unauthorised("send the token as `Authorization: Bearer <token>` (it is in the token file named "
                               "by `python -m engine serve --help`)")
        if not token_matches(cookie, token):
            raise Unauthorised("the token does not match")
        if request.method not in ("GET", "HEAD") and request.headers.get(CSRF_HEADER) != "1":
            raise Unauthorised(f"a request authorised by the cookie must send the header {CSRF_HEADER}: 1")

    bearer_doc = HTTPBearer(auto_error=False, description="the token in the token file")  # for the OpenAPI doc
    api = APIRouter(prefix="/api", dependencies=[Depends(authorised), Depends(bearer_doc)])
    _api_routes(api, reader, config)
    app.include_router(api)

    @app.get("/api/openapi.json", include_in_schema=False, dependencies=[Depends(authorised)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    _page_routes(app, reader, token)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _error_handlers(app)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            if name == "Cache-Control" and request.url.path.startswith("/static/"):
                continue
            response.headers.setdefault(name, value)
        return response

    return app


# -- the API ---------------------------------------------------------------------------------------
def _api_routes(api: APIRouter, reader: Reader, config: Any) -> None:
    @api.get("/runs", summary="the recorded runs, newest first, with their mode, status and daemon state")
    def runs(limit: Limit = 50) -> dict[str, Any]:
        return {"store": reader.store.name, "runs": reader.runs(limit)}

    @api.get("/runs/{run_id}", summary="one run: its record, metrics, costs and counts")
    def summary(run_id: RunId) -> dict[str, Any]:
        return reader.summary(reader.info(run_id))

    @api.get("/runs/{run_id}/equity", summary="equity, buy-and-hold and drawdown at each bar close (thinned)")
    def equity(run_id: RunId, max_points: MaxPoints = 4000) -> dict[str, Any]:
        return reader.equity(reader.info(run_id), max_points)

    @api.get("/runs/{run_id}/prices", summary="each symbol's closes (thinned) and the fills on it")
    def prices(run_id: RunId, max_points: MaxPoints = 4000,
               max_fills: Annotated[int, Query(ge=0, le=100_000)] = 5000) -> dict[str, Any]:
        return reader.prices(reader.info(run_id), max_points, max_fills)

    @api.get("/runs/{run_id}/orders", summary="orders, newest first, with their status history")
    def orders(run_id: RunId, limit: Limit = 100, offset: Offset = 0,
               status: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$", description="only this status")] = None,
               open_only: Annotated[bool, Query(alias="open", description="only orders not final")] = False,
               ) -> dict[str, Any]:
        return reader.orders(reader.info(run_id), limit=limit, offset=offset, status=status, open_only=open_only)

    @api.get("/runs/{run_id}/fills", summary="fills, newest first, with fee, liquidity, spread and slippage")
    def fills(run_id: RunId, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
        return reader.fills(reader.info(run_id), limit=limit, offset=offset)

    @api.get("/runs/{run_id}/positions", summary="the positions at the last checkpoint and the open orders")
    def positions(run_id: RunId) -> dict[str, Any]:
        return reader.positions(reader.info(run_id))

    @api.get("/runs/{run_id}/costs", summary="each cost ledger: fees, spread, slippage, funding")
    def costs(run_id: RunId) -> dict[str, Any]:
        return reader.costs(reader.info(run_id))

    @api.get("/runs/{run_id}/signals", summary="the strategy's signals (LLM runs): summary, series, latest rows")
    def signals(run_id: RunId, max_points: MaxPoints = 4000,
                last: Annotated[int, Query(ge=0, le=1000)] = 50) -> dict[str, Any]:
        return reader.signals(reader.info(run_id), max_points, last)

    @api.get("/runs/{run_id}/predictions", summary="the model's predictions (LLM runs), newest first")
    def predictions(run_id: RunId, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
        return reader.predictions(reader.info(run_id), limit=limit, offset=offset)

    @api.get("/runs/{run_id}/reconciliations", summary="what live reconciliations found and did, newest first")
    def reconciliations(run_id: RunId, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
        return reader.reconciliations(reader.info(run_id), limit=limit, offset=offset)

    @api.get("/runs/{run_id}/daemon", summary="a paper or live daemon's health: state, lease, heartbeat, last bar",
             responses={409: {"description": "the run has no daemon (a backtest)"}})
    def daemon(run_id: RunId) -> dict[str, Any]:
        return _health(reader, config, run_id)

    @api.post("/runs/{run_id}/halt", summary="halt a daemon: from its next step it sends no new order",
              responses={409: {"description": "the run has no daemon, or it has finished"}})
    def halt(run_id: RunId, body: HaltRequest | None = None) -> dict[str, Any]:
        from engine.store.daemons import request_halt

        body = body or HaltRequest()
        info, daemon = _control_target(reader, run_id)
        request_halt(reader.store, daemon.run_pk, body.reason, flatten=body.flatten)
        what = "cancels its open orders, closes its positions and sends nothing more" if body.flatten \
            else "sends no new order"
        return _controlled(reader, info.run_id, "halt", f"halted: from its next step it {what}")

    @api.post("/runs/{run_id}/resume", summary="lift a daemon's halt: it trades again from its next step",
              responses={409: {"description": "the run has no daemon, or it has finished"}})
    def resume(run_id: RunId) -> dict[str, Any]:
        from engine.store.daemons import clear_halt

        info, daemon = _control_target(reader, run_id)
        clear_halt(reader.store, daemon.run_pk)
        return _controlled(reader, info.run_id, "resume", "halt lifted: it trades again from its next step")

    @api.post("/runs/{run_id}/stop", summary="stop a daemon: it finishes its current step and records 'stopped'",
              responses={409: {"description": "the run has no daemon, or it is not running"}})
    def stop(run_id: RunId) -> dict[str, Any]:
        from engine.store.daemons import request_stop
        from engine.store.journal import now_ms

        info, daemon = _control_target(reader, run_id)
        state = reader.daemon_state(daemon, now_ms())
        if state in ("stopped", "failed", "dead"):
            raise NoDaemon(f"run {info.run_id} is not running ({state}); nothing to stop")
        request_stop(reader.store, daemon.run_pk)
        return _controlled(reader, info.run_id, "stop",
                           "stop requested: it finishes its current step, records 'stopped' and exits")


def _control_target(reader: Reader, run_id: str) -> tuple[Any, Any]:
    info = reader.info(run_id)
    daemon = reader.require_daemon(info)
    if daemon.state == "finished":
        raise NoDaemon(f"run {info.run_id} has finished (its replay ended): there is nothing to control")
    return info, daemon


def _controlled(reader: Reader, run_id: str, action: Literal["halt", "resume", "stop"],
                message: str) -> dict[str, Any]:
    from engine.store.daemons import read_controls

    daemon = reader.require_daemon(reader.info(run_id))
    return {"run_id": run_id, "action": action, "message": f"run {run_id} {message}",
            "controls": read_controls(reader.store, daemon.run_pk)}


def _health(reader: Reader, config: Any, run_id: str) -> dict[str, Any]:
    """``paper status`` / ``live status`` (one function for the command line and the dashboard), the
    controls as written, and the lease."""
    from engine.daemon.commands import status_of
    from engine.store.daemons import read_controls

    info = reader.info(run_id)
    daemon = reader.require_daemon(info)
    status = status_of(reader.store, daemon, config)
    return status | {"mode": info.mode, "controls": read_controls(reader.store, daemon.run_pk),
                     "lease": {"host": daemon.lease_host, "pid": daemon.lease_pid,
                               "heartbeat": None if daemon.heartbeat_ms is None else _iso(daemon.heartbeat_ms)}}


def _iso(ms: int) -> str:
    from engine.timeutil import iso

    return iso(ms)


# -- the pages -------------------------------------------------------------------------------------
def _page_routes(app: FastAPI, reader: Reader, token: str) -> None:
    def page(request: Request, render: Callable[[], str]) -> Response:
        given = request.query_params.get("token")
        if given is not None:
            if not token_matches(given, token):
                return HTMLResponse(pages.unauthorised("the token in the address does not match"), status_code=401)
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
            return response
        if not token_matches(request.cookies.get(COOKIE), token):
            return HTMLResponse(pages.unauthorised("this browser has no valid token cookie"), status_code=401)
        return HTMLResponse(render())

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    def runs_page(request: Request) -> Response:
        return page(request, lambda: pages.runs_page(reader.store.name))

    @app.get("/runs/{run_id}", include_in_schema=False)
    def run_page(request: Request, run_id: RunId) -> Response:
        def render() -> str:
            return pages.run_page(reader.info(run_id).run_id)

        return page(request, render)

    @app.get("/compare", include_in_schema=False)
    def compare_page(request: Request, a: Annotated[str, Query(pattern=RUN_ID, max_length=64)],
                     b: Annotated[str, Query(pattern=RUN_ID, max_length=64)]) -> Response:
        return page(request, lambda: pages.compare_page(reader.info(a).run_id, reader.info(b).run_id))


# -- errors ----------------------------------------------------------------------------------------
def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def _error_handlers(app: FastAPI) -> None:
    def answer(request: Request, status: int, message: str, **extra: Any) -> Response:
        if _wants_html(request):
            return HTMLResponse(pages.error_page(status, message), status_code=status, headers=SECURITY_HEADERS)
        return _error(status, message, **extra)

    async def unauthorised(request: Request, exc: Exception) -> Response:
        response = answer(request, 401, f"unauthorised: {exc}")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def not_found(request: Request, exc: Exception) -> Response:
        return answer(request, 404, str(exc))

    async def no_daemon(request: Request, exc: Exception) -> Response:
        return answer(request, 409, str(exc))

    async def store_error(request: Request, exc: Exception) -> Response:
        log.warning("store error on %s %s: %s", request.method, request.url.path, exc)
        return answer(request, 503, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such page or endpoint: {request.url.path} (the API is under /api, its document " \
                      "/api/openapi.json)"
        response = answer(request, exc.status_code, message)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = [{"where": ".".join(str(p) for p in e.get("loc", ())), "problem": str(e.get("msg", ""))}
                    for e in exc.errors()]
        message = "; ".join(f"{p['where']}: {p['problem']}" for p in problems) or "invalid request"
        return answer(request, 422, message, problems=problems)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return answer(request, 500, "internal error: the server's log has the details")

    app.add_exception_handler(Unauthorised, unauthorised)
    app.add_exception_handler(RunNotFound, not_found)
    app.add_exception_handler(NoDaemon, no_daemon)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)
