"""Measuring what each split of a model costs on this machine: the first half of the
Neurosurgeon method (Kang et al., ASPLOS 2017).

    profile = profile_split(model, input_ids=ids)      # on the edge device
    profile.save("edge.json")                           # ... and again on the server
    plan = plan_split(SplitProfile.load("edge.json"), SplitProfile.load("server.json"),
                      bandwidth="20Mbit", rtt="30ms")

Per block of the model's stack (the split candidates), with the trace observer: the time
from the start of the forward until the block returned (what the edge computes before
sending) and the block's own time (what a server resuming after it does not compute);
with the memory observer: the bytes the block outputs. Per split and compression: the
bytes of the real request the client would send, and the time to encode and decode it.
The bytes of the response come from running the real server code once. Times are
medians over ``repeats`` forwards after one warm-up.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from auto_hookpoint.core.sites import site_name
from auto_hookpoint.observers.capture import capture
from auto_hookpoint.observers.memory import memory_profile
from auto_hookpoint.observers.trace import trace
from auto_hookpoint.remote import codec
from auto_hookpoint.remote.executor import SplitExecutor
from auto_hookpoint.remote.wire import SplitRequest, decode_request, encode_request
from auto_hookpoint.split.early_output import EarlyOutput, cached_fingerprint
from auto_hookpoint.split.inputs import input_shapes
from auto_hookpoint.split.stacks import block_stack

PROFILE_FORMAT = "auto_hookpoint.split-profile/1"


def mode_name(compress: codec.Compression) -> str:
    return compress or "none"


@dataclass
class SplitProfile:
    """One model's costs on one machine for one input shape (all times in milliseconds).

    Lists run over ``sites``, the outputs of the blocks of the model's stack, in order.
    ``request_bytes``, ``encode_ms`` and ``decode_ms`` map a compression (``"none"``,
    ``"fp16"``, ``"bf16"``, ``"int8"``) to one value per site (None where that
    compression refuses the activation, e.g. fp16 beyond its range).
    """

    model_class: str
    fingerprint: str
    machine: str
    inputs: dict[str, list[int]]
    output: str | None
    last_position: bool
    sites: list[str]
    forward_ms: float
    until_ms: list[float]
    block_ms: list[float]
    activation_bytes: list[int]
    request_bytes: dict[str, list[int | None]]
    encode_ms: dict[str, list[float | None]]
    decode_ms: dict[str, list[float | None]]
    inputs_request_bytes: int
    response_bytes: int
    repeats: int
    format: str = field(default=PROFILE_FORMAT)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this profile as JSON (to combine with another machine's in a plan)."""
        with open(path, "w") as file:
            json.dump(asdict(self), file, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SplitProfile:
        """Read a profile written by :meth:`save`; ValueError if it is not one."""
        with open(path) as file:
            try:
                data = json.load(file)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not a split profile (not JSON: {error})") from error
        found = data.get("format") if isinstance(data, dict) else None
        if found != PROFILE_FORMAT:
            raise ValueError(
                f"{path} is not a split profile (format {found!r}, "
                f"expected {PROFILE_FORMAT!r}); write one with profile_split(...).save(path) "
                "or auto-hookpoint plan --save-profile"
            )
        try:
            return cls(**data)
        except TypeError as error:
            raise ValueError(f"{path} is a damaged split profile: {error}") from error


def profile_split(
    model: Any,
    *args: Any,
    repeats: int = 5,
    output: str | None = None,
    last_position: bool = False,
    **inputs: Any,
) -> SplitProfile:
    """Measure ``model(*args, **inputs)`` split after each block of its stack; see the
    module docstring. ``output`` and ``last_position`` are those the client will ask for
    (they decide the response's bytes)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: at least one measured forward is needed")
    stack = block_stack(model)
    sites = [site_name(f"{stack}.{i}" if stack else i) for i in model.get_submodule(stack)._modules]
    paths = [s.removesuffix(".hook_point") for s in sites]
    with torch.no_grad():
        model(*args, **inputs)  # warm-up
        forward, until, own = [], [], []
        for _ in range(repeats):
            with trace(model, names=[site_name(""), *sites]) as recorded:
                model(*args, **inputs)
            events = {e.module: e for e in recorded.events}
            root = events[""]
            forward.append(root.duration_ns / 1e6)
            until.append([(events[p].end_ns - root.start_ns) / 1e6 for p in paths])
            own.append([events[p].duration_ns / 1e6 for p in paths])
        with memory_profile(model, names=sites) as memory, capture(model, sites) as acts:
            model(*args, **inputs)
    output_bytes = {r.module: r.output_bytes for r in memory.records}
    fingerprint = cached_fingerprint(model)
    shapes = input_shapes(model, args, inputs)  # as run_until records them: the same bytes
    request_bytes: dict[str, list[int | None]] = {}
    encode_ms: dict[str, list[float | None]] = {}
    decode_ms: dict[str, list[float | None]] = {}
    for compress in codec.COMPRESSIONS:
        mode = mode_name(compress)
        request_bytes[mode], encode_ms[mode], decode_ms[mode] = [], [], []
        for site in sites:
            early = EarlyOutput(site, {site: acts[site]}, [site], type(model).__name__,
                                fingerprint=fingerprint, inputs=shapes)  # fmt: skip
            request = SplitRequest(early, args, inputs, compress, output, last_position)
            try:
                body = encode_request(request)
            except ValueError:
                for values in (request_bytes, encode_ms, decode_ms):
                    values[mode].append(None)  # type: ignore[arg-type]
                continue
            request_bytes[mode].append(len(body))
            encode_ms[mode].append(_median_ms(lambda r=request: encode_request(r), repeats))  # type: ignore[misc]
            decode_ms[mode].append(_median_ms(lambda b=body: decode_request(b), repeats))  # type: ignore[misc]
    whole = encode_request(SplitRequest(None, args, inputs, None, output, last_position))
    response = SplitExecutor(model).run(whole)
    return SplitProfile(
        model_class=type(model).__name__,
        fingerprint=fingerprint,
        machine=_machine(model),
        inputs={**{f"arg{i}": list(a.shape) for i, a in enumerate(args)},
                **{k: list(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)}},
        output=output,
        last_position=last_position,
        sites=sites,
        forward_ms=statistics.median(forward),
        until_ms=[statistics.median(column) for column in zip(*until, strict=True)],
        block_ms=[statistics.median(column) for column in zip(*own, strict=True)],
        activation_bytes=[output_bytes.get(p, 0) for p in paths],
        request_bytes=request_bytes,
        encode_ms=encode_ms,
        decode_ms=decode_ms,
        inputs_request_bytes=len(whole),
        response_bytes=len(response),
        repeats=repeats,
    )  # fmt: skip


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _machine(model: Any) -> str:
    first = next(model.parameters(), None)
    device = str(first.device) if first is not None else "cpu"
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(first.device)})"  # type: ignore[union-attr]
    processor = platform.processor() or platform.machine()
    return f"{platform.node()}: {device}, {processor}, {torch.get_num_threads()} torch threads"
