"""``auto-hookpoint plan [MODEL_DIR] --bandwidth 20Mbit --rtt 30ms``: where to split."""

from __future__ import annotations

from typing import Any

import torch

from auto_hookpoint.commands.split_model import load_for_split, sample_inputs


def plan(args: Any) -> int:
    """Profile this machine (unless both profiles are given), print the plan, draw it."""
    from auto_hookpoint.remote.codec import check_compression
    from auto_hookpoint.remote.planner import parse_bandwidth, parse_duration, plan_split
    from auto_hookpoint.remote.profile import SplitProfile, profile_split

    try:  # every mistake in the arguments, before minutes of measuring
        compress = tuple(check_compression(c) for c in args.compress.split(","))
        parse_bandwidth(args.bandwidth)
        parse_duration(args.rtt)
        edge = SplitProfile.load(args.edge_profile) if args.edge_profile else None
        server = SplitProfile.load(args.server_profile) if args.server_profile else None
        if args.repeats < 1 or args.batch < 1 or args.seq_len < 1:
            raise ValueError("--repeats, --batch and --seq-len must be at least 1")
    except (ValueError, OSError) as error:
        raise SystemExit(f"auto-hookpoint plan: {error}") from error
    if edge is None or server is None:
        if args.threads:
            torch.set_num_threads(args.threads)
        model, label = load_for_split(args.model_dir)
        inputs: dict[str, Any] = sample_inputs(model, args.batch, args.seq_len)
        shapes = {k: list(v.shape) for k, v in inputs.items()}
        print(f"profiling {label} on {shapes} ({args.repeats} forwards) ...", flush=True)
        here = profile_split(
            model, repeats=args.repeats, last_position=args.last_position, **inputs
        )
        if args.save_profile:
            here.save(args.save_profile)
            print(f"profile saved to {args.save_profile}")
        edge, server = edge or here, server or here
    try:
        result = plan_split(edge, server, bandwidth=args.bandwidth, rtt=args.rtt, compress=compress)
    except ValueError as error:  # profiles that do not go together
        raise SystemExit(f"auto-hookpoint plan: {error}") from error
    print(result.table())
    try:
        result.save_chart(args.chart)
        print(f"chart written to {args.chart}")
    except ImportError as error:
        print(f"(no chart: {error})")
    return 0
