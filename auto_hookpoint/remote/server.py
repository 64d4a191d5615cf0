"""The cloud half: an ASGI app (Starlette) that finishes forwards, and running it (uvicorn).

    app = split_server_app(model)                      # mount it, or run it with any ASGI server
    with SplitServer(model, port=0) as server:         # uvicorn in a background thread
        SplitClient(server.url).run(edge, site, input_ids=ids)

Endpoints:

- ``GET /health``: ``{"status": "ok"}``
- ``GET /info``: the model's class, fingerprint, dtype, device, the sites it can be split
  at, the request size limit
- ``POST /run``: a split request (safetensors bytes, see :mod:`~auto_hookpoint.remote.wire`)
  in, a split response out. A bad request gets a 4xx JSON body ``{"error": message,
  "kind": ...}``: 400 malformed body, 409 a different model, 413 over the size limit,
  422 a request this model cannot run (unknown site, wrong shape or dtype, a site that
  cannot be resumed from, an unknown output). A failure while computing is a 500 with
  the same body. The server goes on serving either way.

The model runs in a worker thread, so the event loop keeps accepting and reading
requests while one computes; requests compute one at a time (see
:mod:`~auto_hookpoint.remote.executor`). There is no authentication: bind to localhost
(the default) unless the network is trusted.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from torch import nn

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "the split server needs starlette and uvicorn: pip install 'auto_hookpoint[serve]'"
    ) from error

from auto_hookpoint.remote.executor import (
    DEFAULT_MAX_REQUEST_BYTES,
    RequestRejected,
    SplitExecutor,
    too_large,
)
from auto_hookpoint.remote.wire import MEDIA_TYPE

LOG = logging.getLogger("auto_hookpoint.remote.server")
ENDPOINTS = "GET /health, GET /info, POST /run"


def split_server_app(
    model: nn.Module, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> Starlette:
    """The ASGI app serving ``model`` (hooked here if it is not already)."""
    executor = SplitExecutor(model, max_request_bytes)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def info(request: Request) -> Response:
        return JSONResponse(executor.info())

    async def run(request: Request) -> Response:
        try:
            body = await _read_body(request, executor.max_request_bytes)
            data = await run_in_threadpool(executor.run, body)
        except RequestRejected as rejected:
            LOG.info("rejected (%s %s): %s", rejected.status, rejected.kind, rejected.message)
            return error_response(rejected.status, rejected.kind, rejected.message)
        except Exception as error:  # the request was fine; computing it failed
            LOG.exception("split request failed")
            return error_response(500, "server_error", f"{type(error).__name__}: {error}")
        return Response(data, media_type=MEDIA_TYPE)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        where = f"{request.method} {request.url.path}"
        message = f"{where}: {error.detail}. This server answers {ENDPOINTS}."
        kind = "not_found" if error.status_code == 404 else "method_not_allowed"
        return error_response(error.status_code, kind, message)

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/info", info, methods=["GET"]),
            Route("/run", run, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
    )
    app.state.executor = executor
    return app


def error_response(status: int, kind: str, message: str) -> Response:
    return JSONResponse({"error": message, "kind": kind, "status": status}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestRejected(400, "malformed", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


class SplitServer:
    """Serve ``model`` with uvicorn on ``host:port`` (port 0: a free one, see ``url``).

    ``start()``/``stop()`` (or ``with``) run it in a background thread; ``serve_forever()``
    runs it in this thread until interrupted (what ``auto-hookpoint serve`` does).
    """

    def __init__(
        self,
        model: nn.Module,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        log_level: str = "warning",
    ):
        self.app = split_server_app(model, max_request_bytes)
        self.host, self.port, self.log_level = host, port, log_level
        self._socket: socket.socket | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def executor(self) -> SplitExecutor:
        return self.app.state.executor  # type: ignore[no-any-return]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def bind(self) -> socket.socket:
        """Bind the listening socket now (so ``url`` knows the port) and return it."""
        if self._socket is None:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so,
            # and without it every keep-alive response waits ~40 ms for a delayed ACK.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart on the same port
            try:
                sock.bind((self.host, self.port))
            except OSError:
                sock.close()
                raise
            self.port = sock.getsockname()[1]
            self._socket = sock
        return self._socket

    def _uvicorn(self, background: bool) -> Any:
        config = uvicorn.Config(
            self.app,
            log_level=self.log_level,
            # In a thread, leave the process's logging alone and never wait forever on
            # a request that is still computing when asked to stop.
            log_config=None if background else uvicorn.config.LOGGING_CONFIG,
            access_log=not background,
            timeout_graceful_shutdown=5 if background else None,
        )
        self._server = uvicorn.Server(config)
        return self._server

    def serve_forever(self) -> None:
        sock = self.bind()
        try:
            self._uvicorn(background=False).run(sockets=[sock])
        finally:
            self._close_socket()

    def start(self, timeout: float = 30.0) -> SplitServer:
        """Start serving in a daemon thread; return once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("this SplitServer is already running; stop() it first")
        sock = self.bind()
        server = self._uvicorn(background=True)
        self._thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"SplitServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the split server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (in-flight requests get up to 5 s) and release the port."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"the split server on {self.url} did not stop in {timeout} s")
        self._thread = self._server = None
        self._close_socket()

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> SplitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
