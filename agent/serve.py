"""`sealab serve`: a live, read-only dashboard of one workspace (a Starlette app run by uvicorn).

Nothing here can change state: the routes are GET only, and every request opens the ledger read-only
(`executor.ledger.reading`: SQLite `mode=ro`, a WAL reader that never blocks the writer), so a running `sealab run` goes on
unhindered. The page is static; its script polls the JSON API and writes ledger text with
`textContent` only, under a Content-Security-Policy that allows no inline script at all.

Stopping: each API request reads the ledger and git in a daemon thread of its own, so a slow one (a ledger
locked by a writer, a large history) never blocks the event loop; SIGTERM or Ctrl-C waits at most
STOP_GRACE_S for requests in flight, then the process exits without waiting for their threads (they only read).
The one Dashboard lives as long as the server: it keeps each run's view between polls (a poll costs what
changed since the last one) and has the ledger's hash chain checked in a child process (never in a poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import math
import socket
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.dashboard import Dashboard
from executor import git_source
from executor.errors import SealabError
from executor.ledger import reading

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
STOP_GRACE_S = 0.25  # seconds requests in flight get after SIGTERM/Ctrl-C (uvicorn's timeout_graceful_shutdown;
# a poll answers well within it): with uvicorn's own 0.2 s of ticks and the exit, gone within a second


class BadRequest(ValueError):
    """A query parameter that is not what the route takes (answered 400)."""


def whole(params: Mapping[str, str], name: str) -> int | None:
    """The query parameter `name` as a non-negative integer, None when absent."""
    text = params.get(name)
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise BadRequest(f"{name} must be a whole number, not {text[:40]!r}")
    return int(text)


def experiments(board: Dashboard, ledger: Any, tag: str | None, params: Mapping[str, str]) -> dict[str, Any]:
    """`/api/experiments?limit=&before=&since=&chain=`: see Dashboard.experiments."""
    return board.experiments(ledger, tag, limit=whole(params, "limit"), before=whole(params, "before"),
                             since=whole(params, "since"), chain=whole(params, "chain"))


API: dict[str, Callable[[Dashboard, Any, str | None, Mapping[str, str]], dict[str, Any]]] = {
    "/api/state": lambda board, ledger, tag, params: board.state(ledger, tag),
    "/api/experiments": experiments,
    "/api/kept": lambda board, ledger, tag, params: board.kept(ledger, tag),
    "/api/drift": lambda board, ledger, tag, params: board.drift(ledger, tag),
    "/api/review": lambda board, ledger, tag, params: board.review(ledger, tag),
}


class StrictJSON(JSONResponse):
    """JSON where a non-finite float (a NaN metric, say) is null: the browser's JSON.parse rejects NaN.

    A large value of the top-level object (the experiments' rows, the chart) is encoded once for as long as
    the same object is answered again: the Dashboard answers an unchanged run with the very objects of its
    last answer, and never changes an object it has handed out."""

    def render(self, content: Any) -> bytes:
        if not isinstance(content, dict):
            return _dumps(content).encode()
        return ("{" + ",".join(f"{_dumps(str(k))}:{_encoded(v)}" for k, v in content.items()) + "}").encode()


ENCODED_KEPT = 8  # large values whose encoding is kept
ENCODED_BYTES = 4096  # what counts as large
_encoded_texts: OrderedDict[int, tuple[Any, str]] = OrderedDict()  # id -> (the value itself, its JSON)
_encoded_lock = threading.Lock()


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:  # a NaN or an infinity in it (rare): null in its place, at the cost of a walk
        return json.dumps(finite(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _encoded(value: Any) -> str:
    """`_dumps(value)`, remembered for a large list or dict (by identity: the entry holds the value, so its
    id cannot be reused by another object while the entry lives)."""
    if not isinstance(value, (list, dict)):
        return _dumps(value)
    with _encoded_lock:
        kept = _encoded_texts.get(id(value))
        if kept is not None and kept[0] is value:
            _encoded_texts.move_to_end(id(value))
            return kept[1]
    text = _dumps(value)
    if len(text) >= ENCODED_BYTES:
        with _encoded_lock:
            _encoded_texts[id(value)] = (value, text)
            while len(_encoded_texts) > ENCODED_KEPT:
                _encoded_texts.popitem(last=False)
    return text


def finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class ServeError(SealabError):
    """The dashboard cannot start (address in use, unknown host)."""

    exit_code = 2


async def in_daemon_thread(work: Callable[[], Any]) -> Any:
    """`work()` run in a new daemon thread, awaited. A cancelled wait (the server stopping) abandons the
    thread, and the interpreter's exit does not wait for it (anyio's worker threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting request, which answers or re-raises it
            failure = exc
            outcome = lambda: future.set_exception(failure)  # noqa: E731
        else:
            outcome = lambda: future.set_result(result)  # noqa: E731
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="sealab-serve-request", daemon=True).start()
    return await future


def create_app(root: Path, *, ledger_path: Path, allowed_hosts: list[str] | None = None,
               board: Dashboard | None = None) -> Starlette:
    """The dashboard app of the workspace at `root` (`allowed_hosts` None: any Host header)."""
    board = board or Dashboard(root=root, repo=git_source.open_repo(root))

    def api(build: Callable[..., dict[str, Any]]):
        async def endpoint(request: Request) -> Response:
            tag = request.query_params.get("tag") or None
            params = dict(request.query_params)

            def read() -> dict[str, Any]:
                with reading(ledger_path) as ledger:
                    return build(board, ledger, tag, params)
            try:
                body = await in_daemon_thread(read)
            except BadRequest as exc:
                return StrictJSON({"error": str(exc)}, status_code=400, headers=HEADERS)
            except asyncio.CancelledError:  # the server stopping past STOP_GRACE_S: its answer, not a traceback
                return StrictJSON({"error": "sealab serve is stopping"}, status_code=503, headers=HEADERS)
            except SealabError as exc:
                return StrictJSON({"error": str(exc)}, status_code=503, headers=HEADERS)
            return StrictJSON(body, headers=HEADERS)
        return endpoint

    def page(name: str, media_type: str):
        content = resources.files("agent").joinpath("dashboard_static", name).read_bytes()

        async def endpoint(request: Request) -> Response:
            return Response(content, media_type=media_type, headers=HEADERS)
        return endpoint

    routes = [Route(path, page(*spec), methods=["GET"]) for path, spec in STATIC.items()]
    routes += [Route(path, api(build), methods=["GET"]) for path, build in API.items()]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    return Starlette(routes=routes, middleware=middleware)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port, or a one-line ServeError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServeError(f"cannot serve on {host}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on {host} is already in use; choose another with --port") from None
        raise ServeError(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
    return sock


def serve(root: Path, ledger_path: Path, host: str, port: int, *, announce: Callable[[str], None]) -> None:
    """Serve the dashboard until interrupted. A loopback host accepts only loopback Host headers
    (a page elsewhere cannot reach it through DNS rebinding)."""
    import uvicorn

    sock = bind(host, port)
    app = create_app(root, ledger_path=ledger_path, allowed_hosts=LOOPBACK_NAMES if is_loopback(host) else None)
    actual = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    announce(f"sealab serve: http://{shown}:{actual}/ (read-only; Ctrl-C to stop)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False,
                            timeout_graceful_shutdown=STOP_GRACE_S)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down gracefully on Ctrl-C or SIGTERM, then passed the signal on
        announce("sealab serve: stopped")
