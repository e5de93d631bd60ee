"""Baseline for ``stream-vae bench throughput``: a plain faust agent that consumes each event and sends it on.

Run as ``python -m stream_vae.bench_faust BOOTSTRAP TOPIC N``; prints one JSON line with the rate
measured from the first event to the N-th, then stops itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from typing import Any

import faust


def main(bootstrap: str, topic: str, n: int) -> None:
    app = faust.App(
        f"bench-faust-{uuid.uuid4().hex[:6]}", broker=f"kafka://{bootstrap}", store="memory://",
        web_enabled=False, broker_session_timeout=6, broker_rebalance_timeout=3, topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
    )
    src = app.topic(topic, value_serializer="raw", key_serializer="raw")
    out = app.topic(f"{topic}.faust-out", value_serializer="raw", key_serializer="raw", partitions=1)
    state: dict[str, Any] = {"n": 0, "t0": 0.0}

    @app.agent(src)
    async def passthrough(stream: Any) -> None:
        async for value in stream:
            if state["n"] == 0:
                state["t0"] = time.perf_counter()
            await out.send(value=value)
            state["n"] += 1
            if state["n"] == n:
                el = time.perf_counter() - state["t0"]
                print(json.dumps({"records": n, "seconds": el, "per_s": n / el}), flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

    faust.Worker(app, loglevel="ERROR", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
