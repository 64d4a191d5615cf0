"""``auto-hookpoint serve [MODEL_DIR]``: the cloud half of a split, over HTTP."""

from __future__ import annotations

from pathlib import Path

import torch

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    model_dir: Path | None, host: str, port: int, max_request_mb: float, threads: int | None
) -> None:
    from auto_hookpoint.commands.split_model import load_for_split
    from auto_hookpoint.remote.server import SplitServer

    if threads:
        torch.set_num_threads(threads)
    model, label = load_for_split(model_dir)
    server = SplitServer(
        model, host, port, max_request_bytes=int(max_request_mb * 2**20), log_level="info"
    )
    try:
        server.bind()
    except OSError as error:
        from auto_hookpoint.commands import CommandError, first_line

        raise CommandError(
            f"cannot listen on {host}:{port} ({first_line(error)}): give an address of this "
            "machine and a free port (--port 0 picks one)"
        ) from error
    info = server.executor.info()
    print(f"auto-hookpoint: serving {label} (fingerprint {info['fingerprint']}, "
          f"{len(info['split_sites'])} split sites) at {server.url}", flush=True)  # fmt: skip
    print(
        f"  POST {server.url}/run, GET {server.url}/info, GET {server.url}/health; Ctrl-C stops",
        flush=True,
    )
    if host not in LOOPBACK:
        print(f"  warning: {host} is not loopback and there is no authentication: anyone who can "
              "reach this port can run the model", flush=True)  # fmt: skip
    server.serve_forever()
