"""The bytes between the edge and the server: one safetensors blob each way, never pickle.

A request holds, as tensors, the :class:`EarlyOutput`'s activations (``early:<site>``,
in the EarlyOutput's own safetensors form, the split activation possibly compressed,
its int8 scales as ``early-scale:<site>``) and the tensor inputs (``arg:<i>``,
``kwarg:<name>``); as string metadata, the EarlyOutput's metadata (``early``, JSON), the
compression, the inputs that are not tensors (JSON scalars) and what to return. A
request without an EarlyOutput asks the server for the whole forward.

A response holds the output tensor (``output``) and metadata naming what it is and the
server's compute time.

Decoding checks everything a well-formed blob must satisfy and raises
:class:`WireFormatError` saying what is wrong; whether the request fits the server's
model is the executor's business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from auto_hookpoint.errors import AutoHookError, EarlyOutputError
from auto_hookpoint.remote import codec
from auto_hookpoint.split.early_output import EarlyOutput

REQUEST_FORMAT = "auto_hookpoint.split-request/1"
RESPONSE_FORMAT = "auto_hookpoint.split-response/1"
MEDIA_TYPE = "application/octet-stream"
JSON_SCALARS = (type(None), bool, int, float, str)


class WireFormatError(AutoHookError, ValueError):
    """Bytes that are not a well-formed split request or response; the message says why."""


@dataclass
class SplitRequest:
    """What the edge asks of the server.

    ``early`` is the edge half's EarlyOutput, or None to run the whole forward on the
    server. ``output`` names what to return: None for the model output's primary tensor
    (the logits of a causal LM), a field of the model output (``"logits"``,
    ``"last_hidden_state"``), or a site (``"model.layers.5.hook_point"``) that fires after
    the split. ``last_position`` returns only the last position (dimension 1) of it.
    """

    early: EarlyOutput | None
    args: tuple[torch.Tensor, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    compress: codec.Compression = None
    output: str | None = None
    last_position: bool = False


@dataclass
class SplitResponse:
    output: torch.Tensor
    name: str  # what output is: a field of the model output, or a site name
    server_ms: float  # the server's time from the request's bytes to the response's


def check_sendable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """TypeError naming the first input that cannot be sent: positional inputs must be
    tensors, keyword inputs tensors or JSON scalars (None, bool, int, float, str)."""
    for index, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            raise TypeError(
                f"positional input {index} is a {type(arg).__name__}; positional inputs must be "
                "tensors (pass other values by keyword)"
            )
    for name, value in kwargs.items():
        if not isinstance(value, (torch.Tensor, *JSON_SCALARS)):
            raise TypeError(
                f"input {name}= is a {type(value).__name__}; only tensors and None, bool, int, "
                "float or str values can be sent to the server"
            )


def encode_request(request: SplitRequest) -> bytes:
    """The request as safetensors bytes. TypeError for an input that is neither a tensor
    nor a JSON scalar (None, bool, int, float, str); ValueError if compression refuses."""
    tensors: dict[str, torch.Tensor] = {}
    metadata = {
        "format": REQUEST_FORMAT,
        "compress": request.compress or "none",
        "output": json.dumps(request.output),
        "last_position": json.dumps(bool(request.last_position)),
        "args": str(len(request.args)),
    }
    if request.early is not None:
        early_tensors, early_metadata = request.early.to_safetensors()
        site = request.early.site
        split = early_tensors.pop(site)
        parts = codec.encode(split, request.compress)
        tensors[f"early:{site}"] = parts[""].to("cpu").contiguous()
        if "scale" in parts:
            tensors[f"early-scale:{site}"] = parts["scale"].to("cpu").contiguous()
        tensors.update({f"early:{name}": t.to("cpu") for name, t in early_tensors.items()})
        metadata["early"] = json.dumps(early_metadata)
    check_sendable(request.args, request.kwargs)
    for index, arg in enumerate(request.args):
        tensors[f"arg:{index}"] = _sendable(arg)
    scalars = {}
    for name, value in request.kwargs.items():
        if isinstance(value, torch.Tensor):
            tensors[f"kwarg:{name}"] = _sendable(value)
        else:
            scalars[name] = value
    metadata["kwargs"] = json.dumps(scalars)
    return save_safetensors(tensors, metadata=metadata)


def decode_request(data: bytes) -> SplitRequest:
    """The request in ``data``; WireFormatError if it is not a well-formed one."""
    tensors, metadata = _read(data, REQUEST_FORMAT, "split request")
    try:
        compress = codec.check_compression(metadata.get("compress", "none"))
        output = json.loads(metadata.get("output", "null"))
        last_position = json.loads(metadata.get("last_position", "false"))
        scalars = json.loads(metadata.get("kwargs", "{}"))
        n_args = int(metadata.get("args", "0"))
    except (ValueError, TypeError) as error:
        raise WireFormatError(f"the split request's metadata is damaged: {error}") from error
    if not (output is None or isinstance(output, str)) or not isinstance(last_position, bool):
        raise WireFormatError("the split request's 'output' must be null or a string")
    if not isinstance(scalars, dict) or not all(
        isinstance(v, JSON_SCALARS) for v in scalars.values()
    ):
        raise WireFormatError("the split request's 'kwargs' must map names to JSON scalars")

    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        kind, sep, name = key.partition(":")
        if not sep or kind not in ("early", "early-scale", "arg", "kwarg") or not name:
            raise WireFormatError(
                f"the split request holds a tensor named {key!r}; names are 'early:<site>', "
                "'early-scale:<site>', 'arg:<index>' or 'kwarg:<name>'"
            )
        groups.setdefault(kind, {})[name] = tensor
    args = groups.get("arg", {})
    if sorted(args) != [str(i) for i in range(n_args)]:
        raise WireFormatError(
            f"the split request announces {n_args} positional inputs but holds {sorted(args)}"
        )
    kwargs: dict[str, Any] = {**groups.get("kwarg", {})}
    clash = set(kwargs) & set(scalars)
    if clash:
        raise WireFormatError(f"the split request gives {sorted(clash)} twice")
    kwargs.update(scalars)
    early = _decode_early(
        metadata, groups.get("early", {}), groups.get("early-scale", {}), compress
    )
    return SplitRequest(
        early, tuple(args[str(i)] for i in range(n_args)), kwargs, compress, output, last_position
    )


def encode_response(response: SplitResponse) -> bytes:
    metadata = {
        "format": RESPONSE_FORMAT,
        "name": response.name,
        "server_ms": f"{response.server_ms:.6f}",
    }
    return save_safetensors({"output": _sendable(response.output)}, metadata=metadata)


def decode_response(data: bytes) -> SplitResponse:
    tensors, metadata = _read(data, RESPONSE_FORMAT, "split response")
    if set(tensors) != {"output"}:
        raise WireFormatError(f"the split response holds {sorted(tensors)}, not one 'output'")
    try:
        server_ms = float(metadata.get("server_ms", "nan"))
    except ValueError as error:
        raise WireFormatError(f"the split response's metadata is damaged: {error}") from error
    return SplitResponse(tensors["output"], metadata.get("name", ""), server_ms)


def read_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of safetensors bytes (the header's ``__metadata__``)."""
    if len(data) < 8:
        raise WireFormatError(f"{len(data)} bytes are too few to be safetensors")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise WireFormatError(
            f"not safetensors: the header claims {size} bytes but only {len(data) - 8} follow"
        )
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WireFormatError(f"not safetensors: the header is not JSON ({error})") from error
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WireFormatError("the safetensors header has no string metadata")
    return metadata


def _read(data: bytes, expected: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    metadata = read_metadata(data)
    if metadata.get("format") != expected:
        raise WireFormatError(
            f"these safetensors bytes are not a {what} (format {metadata.get('format')!r}, "
            f"expected {expected!r})"
        )
    try:
        tensors = load_safetensors(data)
    except Exception as error:  # safetensors reports damage as several exception types
        raise WireFormatError(f"the {what}'s tensors cannot be read: {error}") from error
    return tensors, metadata


def _decode_early(
    metadata: dict[str, str],
    tensors: dict[str, torch.Tensor],
    scales: dict[str, torch.Tensor],
    compress: codec.Compression,
) -> EarlyOutput | None:
    if "early" not in metadata:
        if tensors or scales:
            raise WireFormatError("the split request holds activations but no EarlyOutput metadata")
        return None
    if scales and compress != "int8":
        raise WireFormatError(f"the split request holds int8 scales but compress={compress!r}")
    try:
        early_metadata = json.loads(metadata["early"])
        if not isinstance(early_metadata, dict) or not all(
            isinstance(v, str) for v in early_metadata.values()
        ):
            raise TypeError("it is not a mapping of strings")
        site = early_metadata["site"]
        dtype = _dtype(json.loads(early_metadata["dtypes"])[site])
    except (ValueError, TypeError, KeyError) as error:
        raise WireFormatError(
            f"the split request's EarlyOutput metadata is damaged: {error}"
        ) from error
    if site not in tensors:
        raise WireFormatError(
            f"the split request does not hold the activation of its site {site!r}"
        )
    if set(scales) - {site}:
        raise WireFormatError(f"int8 scales for sites other than the split site: {sorted(scales)}")
    parts = {"": tensors[site], **({"scale": scales[site]} if site in scales else {})}
    try:
        tensors = {**tensors, site: codec.decode(parts, compress, dtype)}
        return EarlyOutput.from_safetensors(tensors, early_metadata, "the split request")
    except (ValueError, TypeError) as error:  # EarlyOutputError is a ValueError
        if isinstance(error, EarlyOutputError):
            raise WireFormatError(str(error)) from error
        raise WireFormatError(
            f"the split request's activation cannot be decoded: {error}"
        ) from error


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name!r} is not a torch dtype")
    return dtype


def _sendable(tensor: torch.Tensor) -> torch.Tensor:
    # A copy of its own: safetensors refuses tensors that share memory (ids and a view of them).
    return tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
