"""What the server does with one split request, apart from HTTP: decode, check, run, encode.

Every way a request can be wrong ends in :class:`RequestRejected` with an HTTP status
and a message that says what was wrong and what to do; anything else that goes wrong
while computing is a server error (500). Either way the model is left as it was and
the next request is served.

Requests run one at a time on the model (a lock): ``resume_from`` makes the skipped
blocks stand in for themselves on the shared model for the duration of its call, so a
second forward running at the same time on another thread would see the stand-ins.
Decoding and encoding, and the network I/O around them, overlap freely.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auto_hookpoint.core.sites import SiteKind, site_name
from auto_hookpoint.core.structure import find_primary, get_at, tensors_with_paths
from auto_hookpoint.errors import EarlyOutputError, ResumeError, UnknownHookNameError
from auto_hookpoint.hooked import HookedModule, auto_hook
from auto_hookpoint.observers.capture import capture
from auto_hookpoint.remote.wire import (
    REQUEST_FORMAT,
    SplitRequest,
    SplitResponse,
    WireFormatError,
    decode_request,
    encode_response,
)
from auto_hookpoint.split.early_output import EarlyOutput, cached_fingerprint
from auto_hookpoint.split.resume import resume_from
from auto_hookpoint.split.stacks import block_stack

DEFAULT_MAX_REQUEST_BYTES = 256 * 2**20


@dataclass
class RequestRejected(Exception):
    """A request the server will not run: ``status`` (4xx), ``kind`` and why, in ``message``."""

    status: int
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


class SplitExecutor:
    """Runs split requests (safetensors bytes in, safetensors bytes out) on one model.

    ``model`` is hooked with ``auto_hook`` if it is not already. The model should be in
    eval mode and hold the weights the edge has: requests from another model are
    refused by fingerprint.
    """

    def __init__(self, model: nn.Module, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.model: Any = model if isinstance(model, HookedModule) else auto_hook(model)
        self.max_request_bytes = max_request_bytes
        self.fingerprint = cached_fingerprint(self.model)
        self._lock = threading.Lock()
        try:
            stack = block_stack(self.model)
            self.blocks = [
                site_name(f"{stack}.{name}" if stack else name)
                for name in self.model.get_submodule(stack)._modules
            ]
        except ValueError:
            self.blocks = []
        first = next(self.model.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")

    def info(self) -> dict[str, Any]:
        """What a client needs to know: the model, its fingerprint, where it can be split."""
        first = next(self.model.parameters(), None)
        return {
            "format": REQUEST_FORMAT,
            "model_class": type(self.model).__name__,
            "fingerprint": self.fingerprint,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(first.dtype) if first is not None else None,
            "device": str(self.device),
            "split_sites": self.blocks,
            "max_request_bytes": self.max_request_bytes,
        }

    def run(self, body: bytes) -> bytes:
        """The response's bytes for a request's; RequestRejected for a bad request."""
        start = time.perf_counter()
        if len(body) > self.max_request_bytes:
            raise too_large(len(body), self.max_request_bytes)
        try:
            request = decode_request(body)
        except WireFormatError as error:
            raise RequestRejected(400, "malformed", str(error)) from error
        name, output = self._compute(request)
        if request.last_position:
            if output.dim() < 2:
                raise RequestRejected(
                    422, "bad_output",
                    f"last_position needs an output with a position dimension (1); {name!r} "
                    f"has shape {list(output.shape)}",
                )  # fmt: skip
            output = output[:, -1]
        return encode_response(SplitResponse(output, name, (time.perf_counter() - start) * 1e3))

    # ------------------------------------------------------------------ the steps
    def _compute(self, request: SplitRequest) -> tuple[str, torch.Tensor]:
        early = request.early
        if early is not None:
            self._check_early(early, request)
        output_site = self._output_site(request)
        args = tuple(a.to(self.device) for a in request.args)
        kwargs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                  for k, v in request.kwargs.items()}  # fmt: skip
        with self._lock, torch.no_grad(), contextlib.ExitStack() as scope:
            captured = scope.enter_context(capture(self.model, output_site)) if output_site else {}
            try:
                if early is None:
                    result = self.model(*args, **kwargs)
                else:
                    result = resume_from(
                        self.model, early.site, early.to(self.device), *args, **kwargs
                    )
            except ResumeError as error:
                raise RequestRejected(422, "cannot_resume", str(error)) from error
            except (TypeError, ValueError, IndexError, RuntimeError) as error:
                if early is not None:
                    raise
                raise RequestRejected(
                    422, "bad_inputs",
                    f"the forward failed on these inputs: {type(error).__name__}: {error}",
                ) from error  # fmt: skip
            if output_site:
                if output_site not in captured:
                    raise RequestRejected(
                        422, "bad_output",
                        f"{output_site!r} did not fire on the server for this request (its "
                        "module is not called for these inputs, or its output holds no tensor)",
                    )  # fmt: skip
                return output_site, captured[output_site]
        return self._field(result, request.output)

    def _check_early(self, early: EarlyOutput, request: SplitRequest) -> None:
        try:
            early.check_belongs_to(self.model)
        except EarlyOutputError as error:
            raise RequestRejected(
                409, "wrong_model",
                f"{error} This server holds a {type(self.model).__name__} with fingerprint "
                f"{self.fingerprint}; load the same model folder on both sides.",
            ) from error  # fmt: skip
        if early.site not in self.model.hook_dict:
            self._unknown_site(early.site)
        activation = early.activation
        given = [
            t for t in (*request.args, *request.kwargs.values()) if isinstance(t, torch.Tensor)
        ]
        if (
            given
            and activation.dim()
            and given[0].dim()
            and activation.shape[0] != given[0].shape[0]
        ):
            raise RequestRejected(
                422, "wrong_shape",
                f"the activation at {early.site!r} has batch size {activation.shape[0]} "
                f"(shape {list(activation.shape)}) but the inputs have {given[0].shape[0]}: it "
                "must be what that site produced for these same inputs",
            )  # fmt: skip
        ids = request.kwargs.get("input_ids")
        config = getattr(self.model, "config", None)
        decoder_only = config is not None and not getattr(config, "is_encoder_decoder", False)
        if (
            decoder_only and isinstance(ids, torch.Tensor) and ids.dim() == 2
            and activation.dim() == 3 and activation.shape[:2] != ids.shape
        ):  # fmt: skip
            raise RequestRejected(
                422, "wrong_shape",
                f"the activation at {early.site!r} has shape {list(activation.shape)} but "
                f"input_ids has shape {list(ids.shape)}: a block's output is [batch, positions, "
                "hidden] for these same inputs",
            )  # fmt: skip

    def _output_site(self, request: SplitRequest) -> str | None:
        output = request.output
        if output is None or "hook_point" not in output:
            return None
        if output not in self.model.hook_dict:
            self._unknown_site(output)
        early = request.early
        if early is not None:
            stack, _, index = early.site.removesuffix(".hook_point").rpartition(".")
            if index.isdigit():
                for i in range(int(index) + 1):
                    block = f"{stack}.{i}" if stack else str(i)
                    if output == site_name(block) or output.startswith(f"{block}."):
                        raise RequestRejected(
                            422, "bad_output",
                            f"{output!r} is computed on the edge (block {i} runs before the split "
                            f"at {early.site!r}), not on the server; ask for a site after the "
                            "split, or take it from the edge with run_until(..., bank=[...])",
                        )  # fmt: skip
        return output

    def _field(self, result: Any, field: str | None) -> tuple[str, torch.Tensor]:
        if field is None:
            path = find_primary(result)
            if path is None:
                raise RequestRejected(422, "bad_output", "the model's output holds no tensor")
            return ".".join(str(p) for p in path) or "output", get_at(result, path)
        value = None
        with contextlib.suppress(KeyError, AttributeError, TypeError):
            value = result[field] if isinstance(result, dict) else getattr(result, field)
        if not isinstance(value, torch.Tensor):
            fields = sorted({p.lstrip(".").split(".")[0].split("[")[0]
                             for p, _ in tensors_with_paths(result)} - {""})  # fmt: skip
            raise RequestRejected(
                422, "bad_output",
                f"the model's output has no tensor field {field!r}; it has {fields}. Ask for "
                "one of those, or for a site ('model.layers.3.hook_point')",
            )  # fmt: skip
        return field, value

    def _unknown_site(self, name: str) -> None:
        sites = [n for n, s in self.model.hook_sites.items() if s.kind is SiteKind.OUTPUT]
        raise RequestRejected(422, "unknown_site", str(UnknownHookNameError(name, sites)))


def too_large(size: int | None, limit: int) -> RequestRejected:
    """The rejection of a request over ``limit`` bytes (``size`` when it is known)."""
    told = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return RequestRejected(
        413, "too_large",
        f"the request is {told}, over this server's limit of {limit:,} "
        "(auto-hookpoint serve --max-request-mb); send fewer positions or a smaller batch, or "
        "compress the activation (compress='int8' sends a quarter of float32's bytes)",
    )  # fmt: skip
