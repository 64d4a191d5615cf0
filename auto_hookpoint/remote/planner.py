"""Where to split: end-to-end latency of every split for a link, and the best one (the
second half of the Neurosurgeon method).

For a split after block k with compression c::

    edge    = edge.until_ms[k] + edge.encode_ms[c][k]
    network = rtt + (request_bytes[c][k] + response_bytes) * 8 / bandwidth
    server  = server.forward_ms - sum(server.block_ms[:k + 1]) + server.decode_ms[c][k]

(a server resuming after block k computes everything but blocks 0..k: the embedding and
whatever else lies outside the stack runs there too). "All on the server" sends the
inputs and computes the whole forward there; "all on the edge" sends nothing.
The edge and server profiles may come from two machines (``SplitProfile.load``); they
must be of the same model, inputs and output.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from auto_hookpoint.remote import codec
from auto_hookpoint.remote.profile import SplitProfile, mode_name

ALL_SERVER, ALL_EDGE = "all on the server", "all on the edge"
_BITS = {
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "bps": 1,
    "kbps": 1e3,
    "mbps": 1e6,
    "gbps": 1e9,
}
_BYTES = {"b/s": 8, "kb/s": 8e3, "mb/s": 8e6, "gb/s": 8e9}
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def parse_bandwidth(text: str | float) -> float:
    """Bits per second from ``"20Mbit"``, ``"100 Mbps"``, ``"1Gbit"``, ``"2.5MB/s"`` (bytes,
    capital B) or a number of bits per second. Decimal units, as ``tc`` uses."""
    if isinstance(text, (int, float)):
        value, factor = float(text), 1.0
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Zµ/]*)\s*", text)
        unit = match.group(2) if match else ""
        if match and unit.upper().endswith("B/S") and unit[-3] == "B":
            factor = _BYTES.get(unit.lower())  # type: ignore[assignment]
        else:
            factor = _BITS.get(unit.lower().removesuffix("/s")) if unit else 1.0  # type: ignore[assignment]
        if not match or factor is None:
            raise ValueError(
                f"bandwidth {text!r} is not understood; write e.g. '20Mbit', '100Mbps', "
                "'1Gbit' (bits per second) or '2.5MB/s' (bytes per second)"
            )
        value = float(match.group(1))
    if value * factor <= 0:
        raise ValueError(f"bandwidth {text!r} must be positive")
    return value * factor


def parse_duration(text: str | float) -> float:
    """Seconds from ``"30ms"``, ``"0.5s"``, ``"800us"`` or a number of seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|ms|us|µs)\s*", text)
        if not match:
            raise ValueError(
                f"duration {text!r} is not understood; write e.g. '30ms', '0.2s', '500us'"
            )
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"duration {text!r} must not be negative")
    return seconds


@dataclass
class SplitOption:
    """One way to run the model: ``site`` None with ``label`` saying all on one side."""

    label: str
    site: str | None
    compress: str  # "none", "fp16", "bf16", "int8"
    edge_ms: float
    request_bytes: int
    response_bytes: int
    network_ms: float
    server_ms: float

    @property
    def total_ms(self) -> float:
        return self.edge_ms + self.network_ms + self.server_ms

    @property
    def exact(self) -> bool:
        return self.compress == "none"


@dataclass
class SplitPlan:
    edge: SplitProfile
    server: SplitProfile
    bandwidth_bps: float
    rtt_s: float
    options: list[SplitOption]
    allowed: tuple[str, ...]  # the compressions the best option may use

    @property
    def best(self) -> SplitOption:
        """The fastest option among the allowed compressions."""
        return min(
            (o for o in self.options if o.compress in self.allowed), key=lambda o: o.total_ms
        )

    def option(self, label: str, compress: str = "none") -> SplitOption:
        return next(o for o in self.options if o.label == label and o.compress == compress)

    @property
    def labels(self) -> list[str]:
        return [ALL_SERVER, *[_label(s) for s in self.edge.sites], ALL_EDGE]

    def table(self) -> str:
        """The latency of every split, per compression, with the best marked."""
        modes = [m for m in map(mode_name, codec.COMPRESSIONS)]
        width = max(len(label) for label in self.labels) + 2
        head = (f"{'split'.ljust(width)}{'edge ms':>9}{'server ms':>10}  "
                + "".join(f"{m + ' KiB':>10}" for m in modes) + "  "
                + "".join(f"{m + ' ms':>10}" for m in modes))  # fmt: skip
        link = f"link {_rate(self.bandwidth_bps)}, RTT {self.rtt_s * 1e3:g} ms"
        lines = [
            f"{self.edge.model_class}, inputs {self.edge.inputs}; {link}",
            f"edge: {self.edge.machine}",
            f"server: {self.server.machine}",
            head,
        ]
        best = self.best
        for label in self.labels:
            by_mode = {o.compress: o for o in self.options if o.label == label}
            first = by_mode["none"]
            sizes = "".join(
                f"{by_mode[m].request_bytes / 1024:10.1f}"
                if m in by_mode and label != ALL_EDGE
                else f"{'-':>10}"
                for m in modes
            )
            totals = "".join(
                (f"{by_mode[m].total_ms:9.1f}" + ("*" if by_mode[m] is best else " "))
                if m in by_mode
                else f"{'-':>9} "
                for m in modes
            )
            times = f"{first.edge_ms:9.1f}{first.server_ms:10.1f}"
            lines.append(f"{label.ljust(width)}{times}  {sizes}  {totals}")
        edge_only, server_only = self.option(ALL_EDGE), self.option(ALL_SERVER)
        lines.append(
            f"best: {best.label}{'' if best.exact else f' with {best.compress} (lossy)'}: "
            f"{best.total_ms:.1f} ms (edge {best.edge_ms:.1f} + network {best.network_ms:.1f} + "
            f"server {best.server_ms:.1f}); all on the edge {edge_only.total_ms:.1f} ms, "
            f"all on the server {server_only.total_ms:.1f} ms"
        )
        lossy = min(self.options, key=lambda o: o.total_ms)
        if lossy.total_ms < best.total_ms:
            lines.append(
                f"with {lossy.compress} compression (lossy, not allowed here): {lossy.label}, "
                f"{lossy.total_ms:.1f} ms"
            )
        return "\n".join(lines)

    def save_chart(self, path: str | os.PathLike[str]) -> None:
        """A PNG: end-to-end latency against the split, a line per compression, bars
        splitting the exact option's time into edge, network and server; the best starred.
        Needs matplotlib (``pip install 'auto_hookpoint[plot]'``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError(
                "save_chart needs matplotlib: pip install 'auto_hookpoint[plot]'"
            ) from error
        labels = self.labels
        xs = list(range(len(labels)))
        exact = [self.option(label) for label in labels]
        figure, axes = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) + 4.5), 4.2))
        edge = [o.edge_ms for o in exact]
        network = [o.network_ms for o in exact]
        server = [o.server_ms for o in exact]
        axes.bar(xs, edge, color="#9ecae1", label="edge compute (exact)")
        axes.bar(xs, network, bottom=edge, color="#fdd0a2", label="network (exact)")
        below = [e + n for e, n in zip(edge, network, strict=True)]
        axes.bar(xs, server, bottom=below, color="#c7e9c0", label="server compute (exact)")
        for mode, style in zip(
            map(mode_name, codec.COMPRESSIONS), ("k-o", "b--s", "g--^", "r--v"), strict=True
        ):
            points = [(x, o.total_ms) for x, label in zip(xs, labels, strict=True)
                      for o in self.options if o.label == label and o.compress == mode]  # fmt: skip
            if points:
                axes.plot(
                    *zip(*points, strict=True),
                    style,
                    markersize=4,
                    linewidth=1.2,
                    label=f"total, {mode}",
                )
        best = self.best
        axes.plot([labels.index(best.label)], [best.total_ms], "*", color="gold", markersize=16,
                  markeredgecolor="black", label=f"best ({best.compress})")  # fmt: skip
        axes.set_xticks(xs)
        axes.set_xticklabels(
            [_short(label) for label in labels], rotation=45, ha="right", fontsize=8
        )
        axes.set_ylabel("end-to-end latency (ms)")
        axes.set_title(
            f"{self.edge.model_class}: split latency, {_rate(self.bandwidth_bps)}, "
            f"RTT {self.rtt_s * 1e3:g} ms", fontsize=10,
        )  # fmt: skip
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)


def plan_split(
    edge: SplitProfile,
    server: SplitProfile | None = None,
    *,
    bandwidth: str | float,
    rtt: str | float,
    compress: tuple[codec.Compression | str, ...] = (None,),
) -> SplitPlan:
    """Every split's latency from the profiles of the edge and the server (the same one
    when None) over a link of ``bandwidth`` and ``rtt``; the best among the
    ``compress`` modes (default: exact only; the table shows the others too)."""
    for profile in (edge, server):
        if profile is not None and not isinstance(profile, SplitProfile):
            raise TypeError(
                "plan_split takes SplitProfiles, from profile_split(model, ...) or "
                f"SplitProfile.load(path); got {type(profile).__name__}"
            )
    server = server or edge
    _check_compatible(edge, server)
    bandwidth_bps, rtt_s = parse_bandwidth(bandwidth), parse_duration(rtt)
    allowed = tuple(mode_name(codec.check_compression(c)) for c in compress)

    def network_ms(up: int, down: int) -> float:
        return (rtt_s + (up + down) * 8 / bandwidth_bps) * 1e3

    down = edge.response_bytes
    up = edge.inputs_request_bytes
    options = [
        SplitOption(
            ALL_SERVER, None, "none", 0.0, up, down, network_ms(up, down), server.forward_ms
        )
    ]
    for k, site in enumerate(edge.sites):
        server_compute = server.forward_ms - sum(server.block_ms[: k + 1])
        for mode, sizes in edge.request_bytes.items():
            size = sizes[k]
            encode, decode = edge.encode_ms[mode][k], server.decode_ms[mode][k]
            if size is None or encode is None or decode is None:
                continue
            options.append(SplitOption(
                _label(site), site, mode, edge.until_ms[k] + encode, size, down,
                network_ms(size, down), max(server_compute, 0.0) + decode,
            ))  # fmt: skip
    options.append(SplitOption(ALL_EDGE, None, "none", edge.forward_ms, 0, 0, 0.0, 0.0))
    return SplitPlan(edge, server, bandwidth_bps, rtt_s, options, allowed)


def _check_compatible(edge: SplitProfile, server: SplitProfile) -> None:
    for name in ("fingerprint", "inputs", "sites", "output", "last_position"):
        if getattr(edge, name) != getattr(server, name):
            raise ValueError(
                f"the edge and server profiles differ in {name} ({getattr(edge, name)!r} vs "
                f"{getattr(server, name)!r}): profile the same model folder with the same "
                "inputs and output on both machines"
            )


def _label(site: str) -> str:
    return f"after {site.removesuffix('.hook_point')}"


def _short(label: str) -> str:
    return label if len(label) <= 28 else "after …" + label[-20:]


def _rate(bps: float) -> str:
    for unit, factor in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= factor:
            return f"{bps / factor:g} {unit}"
    return f"{bps:g} bit/s"
