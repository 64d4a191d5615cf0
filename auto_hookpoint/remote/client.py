"""The edge half: run the first blocks here, send the activation, get the result back.

    client = SplitClient("http://127.0.0.1:8000", compress="fp16")
    logits = client.run(edge, "model.layers.3.hook_point", input_ids=ids)

``run`` computes ``run_until(edge, site, ...)`` locally (nothing after ``site`` runs
here), sends the activation with the inputs to the server, which resumes from it, and
returns the tensor the server computed. Uncompressed, it is bit-identical to
``edge(...)``'s logits; compressed, it differs by what the rounding changes (see
``docs/split_network.md`` for measured figures).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

try:
    import httpx
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError("SplitClient needs httpx: pip install 'auto_hookpoint[serve]'") from error

from auto_hookpoint.errors import SplitConnectionError, SplitServerError
from auto_hookpoint.remote import codec
from auto_hookpoint.remote.wire import (
    MEDIA_TYPE,
    SplitRequest,
    WireFormatError,
    check_sendable,
    decode_response,
    encode_request,
)
from auto_hookpoint.split.exit import run_until


@dataclass
class SplitStats:
    """What one ``run`` cost: local compute, bytes each way, the server's compute time and
    the whole round trip (milliseconds)."""

    edge_ms: float
    request_bytes: int
    response_bytes: int
    server_ms: float
    round_trip_ms: float
    total_ms: float


class SplitClient:
    """A client of an ``auto-hookpoint serve`` server (a :func:`split_server_app`).

    ``compress``: None (exact), ``"fp16"``, ``"bf16"`` or ``"int8"`` for the activation
    sent. ``timeout``: seconds for connecting and for each read/write. ``transport``: an
    ``httpx`` transport (to route or shape the traffic; by default httpx's own). Safe to
    share between threads (each thread has its own connection).
    """

    def __init__(
        self,
        url: str,
        compress: codec.Compression = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        if not isinstance(url, str):
            raise TypeError(
                "SplitClient takes the server's URL as a string, e.g. "
                f"'http://127.0.0.1:8000'; got {type(url).__name__}"
            )
        self.url = url.rstrip("/")
        self.compress = codec.check_compression(compress)
        self.timeout = timeout
        self.transport = transport
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- the split
    def run(
        self,
        edge: Any,
        site: str | None,
        *args: Any,
        output: str | None = None,
        last_position: bool = False,
        **inputs: Any,
    ) -> torch.Tensor:
        """Compute ``edge`` up to ``site`` here and the rest on the server; the result
        (on the CPU, in the dtype the server computed).

        ``site=None`` runs the whole forward on the server (``edge`` may then be None).
        ``output``: None for the model output's primary tensor (a causal LM's logits), a
        field of the model output (``"last_hidden_state"``), or a site after the split.
        ``last_position=True`` returns only the last position (``[:, -1]``) of it, what
        next-token prediction needs, so fewer bytes come back.
        """
        return self.run_with_stats(
            edge, site, *args, output=output, last_position=last_position, **inputs
        )[0]

    def run_with_stats(
        self,
        edge: Any,
        site: str | None,
        *args: Any,
        output: str | None = None,
        last_position: bool = False,
        **inputs: Any,
    ) -> tuple[torch.Tensor, SplitStats]:
        """:meth:`run`, and what it cost (:class:`SplitStats`)."""
        start = time.perf_counter()
        check_sendable(args, inputs)  # before computing anything
        early = None
        if site is not None:
            with torch.no_grad():
                early = run_until(edge, site, *args, **inputs)
        request = SplitRequest(early, args, inputs, self.compress, output, last_position)
        body = encode_request(request)
        sent = time.perf_counter()
        response = self._post("/run", body)
        received = time.perf_counter()
        try:
            result = decode_response(response.content)
        except WireFormatError as error:
            raise SplitServerError(
                response.status_code, "bad_response", f"{self.url} answered with {error}"
            ) from error
        done = time.perf_counter()
        stats = SplitStats(
            (sent - start) * 1e3, len(body), len(response.content), result.server_ms,
            (received - sent) * 1e3, (done - start) * 1e3,
        )  # fmt: skip
        return result.output, stats

    # ----------------------------------------------------------------- the server
    def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"status": "ok"}`` from a live server."""
        return self._get("/health")

    def info(self) -> dict[str, Any]:
        """``GET /info``: the server's model, fingerprint and split sites."""
        return self._get("/info")

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()

    def __enter__(self) -> SplitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- HTTP
    def _http(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(base_url=self.url, timeout=self.timeout, transport=self.transport)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _get(self, path: str) -> dict[str, Any]:
        response = self._send("GET", path)
        try:
            value = response.json()
        except ValueError as error:
            raise SplitServerError(
                response.status_code, "bad_response", f"{self.url}{path} did not answer JSON"
            ) from error
        return value  # type: ignore[no-any-return]

    def _post(self, path: str, body: bytes) -> httpx.Response:
        return self._send("POST", path, content=body, headers={"content-type": MEDIA_TYPE})

    def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            response = self._http().request(method, path, **options)
        except httpx.TimeoutException as error:
            raise SplitConnectionError(
                f"{method} {self.url}{path} timed out after {self.timeout} s "
                f"({type(error).__name__}); the server may be overloaded, or raise "
                "SplitClient(timeout=...)"
            ) from error
        except httpx.TransportError as error:
            raise SplitConnectionError(
                f"cannot reach the split server at {self.url} ({type(error).__name__}: {error}); "
                "is `auto-hookpoint serve MODEL_DIR` running there?"
            ) from error
        if response.status_code >= 400:
            raise _server_error(method, self.url + path, response)
        return response


def _server_error(method: str, url: str, response: httpx.Response) -> SplitServerError:
    try:
        body = response.json()
        message, kind = str(body["error"]), str(body.get("kind", ""))
    except (ValueError, KeyError, TypeError):
        message, kind = response.text[:500] or response.reason_phrase, ""
    return SplitServerError(
        response.status_code, kind, f"{method} {url}: {response.status_code} {message}"
    )
