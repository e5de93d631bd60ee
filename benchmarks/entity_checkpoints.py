"""What checkpointing each entity's state costs a worker (``state.EntityCheckpoints``, real Redis).

The demo's model (8 features, window 5, three VAEs) on a synthetic stream of many entities:
20 records per entity in batches of 1,000 through ``Pipeline.process_batch``; then one ``save``
of every entity (what a checkpoint writes when every entity sent something in the interval, the
worst case), and a fresh pipeline that resumes all of them from Redis while scoring their next
record, against one that starts them afresh. Same process, same Redis, three rounds, medians; the
scoring itself is timed with and without the checkpoint hooks (``resume``, ``touched``). Last, the
scan for incidents gone idle (``Pipeline.expire_incidents``, ``alerts.group: incident``), which a
worker runs with every checkpoint, over every entity it holds.

    REDIS_URL=redis://127.0.0.1:6379/0 python benchmarks/entity_checkpoints.py [ENTITIES]
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import numpy as np
import redis
import torch

from stream_vae.model.train import train_model
from stream_vae.pipeline import Pipeline
from stream_vae.records import RawRecord
from stream_vae.state import EntityCheckpoints
from stream_vae.synth import FEATURES, generate
from stream_vae.testing import loaded, synth_topology


def main(n_entities: int = 2000, per_entity: int = 20) -> None:
    torch.set_num_threads(1)
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    train = generate(n_steps=3000, anomaly_rate=0.0, seed=0)
    topo = synth_topology(window=5, model={"latent_dim": 3, "hidden": [32, 16], "epochs": 5, "kl_warmup_epochs": 2,
                                           "ensemble": 3})
    model = loaded(train_model(train.X, topo, entities=list(train.entities)))
    rows = generate(n_steps=per_entity + 1, anomaly_rate=0.0, seed=1).X
    rng = np.random.default_rng(2)

    def records(step: int) -> list[RawRecord]:
        out = []
        for e in range(n_entities):
            row = rows[(step * 6 + e) % len(rows)] * (1 + 0.05 * rng.normal())
            body = {"entity": f"host-{e:05d}", "ts": 0, **dict(zip(FEATURES, row.tolist(), strict=True))}
            out.append(RawRecord(json.dumps(body).encode(), None, "bench", e % 8, step * n_entities + e, 0))
        return out

    stream = [r for step in range(per_entity) for r in records(step)]
    last = records(per_entity)
    res: dict[str, list[float]] = {"process_per_record_us": [], "plain_per_record_us": [], "save_per_entity_us": [],
                                   "bytes_per_entity": [], "resume_batch_s": [], "fresh_batch_s": [],
                                   "idle_scan_per_entity_us": []}
    grouped = topo.model_copy(update={"alerts": topo.alerts.model_copy(update={"group": "incident"})})
    for _ in range(3):
        plain = Pipeline(topo, model)
        t0 = time.perf_counter()
        for i in range(0, len(stream), 1000):
            plain.process_batch(stream[i : i + 1000])
        res["plain_per_record_us"].append((time.perf_counter() - t0) / len(stream) * 1e6)
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        ck = EntityCheckpoints(client, prefix=prefix, stream=topo.name)
        p = Pipeline(topo, model)
        t0 = time.perf_counter()
        for i in range(0, len(stream), 1000):
            out = p.process_batch(stream[i : i + 1000], resume=ck.resume)
            assert out.batch is not None
            ck.touched(out.batch.keys, (r.partition for r in out.scored))
        res["process_per_record_us"].append((time.perf_counter() - t0) / len(stream) * 1e6)
        t0 = time.perf_counter()
        n = ck.save(p)
        res["save_per_entity_us"].append((time.perf_counter() - t0) / n * 1e6)
        keys = list(client.scan_iter(f"{prefix}:*", count=1000))
        res["bytes_per_entity"].append(sum(client.strlen(k) for k in keys) / len(keys))
        fresh = Pipeline(topo, model)
        t0 = time.perf_counter()
        fresh.process_batch(last)
        res["fresh_batch_s"].append(time.perf_counter() - t0)
        resumed = Pipeline(topo, model)
        t0 = time.perf_counter()
        resumed.process_batch(last, resume=EntityCheckpoints(client, prefix=prefix, stream=topo.name).resume)
        res["resume_batch_s"].append(time.perf_counter() - t0)
        client.delete(*keys)
        inc = Pipeline(grouped, model)
        for i in range(0, len(stream), 1000):
            inc.process_batch(stream[i : i + 1000])
        t0 = time.perf_counter()
        inc.expire_incidents(now=time.time() + 1.0)  # nothing is idle yet: every entity is looked at, none ends
        res["idle_scan_per_entity_us"].append((time.perf_counter() - t0) / n_entities * 1e6)
    med = {k: float(np.median(v)) for k, v in res.items()}
    print(json.dumps({"entities": n_entities, **{k: round(v, 4) for k, v in med.items()}}))
    every = 10.0
    print(f"process_batch {med['process_per_record_us']:.1f} us/record with resume + touched, "
          f"{med['plain_per_record_us']:.1f} without "
          f"(ratio {med['plain_per_record_us'] / med['process_per_record_us']:.2f}); "
          f"save {med['save_per_entity_us']:.0f} us and "
          f"{med['bytes_per_entity'] / 1024:.1f} KiB per entity; a 10 s checkpoint of {n_entities} entities takes "
          f"{med['save_per_entity_us'] * n_entities / 1e6:.2f} s "
          f"({med['save_per_entity_us'] * n_entities / 1e6 / every:.1%} of the interval)")
    print(f"first batch after a restart ({n_entities} entities, one record each): resumed "
          f"{med['resume_batch_s']:.3f} s, fresh {med['fresh_batch_s']:.3f} s")
    print(f"idle-incident scan: {med['idle_scan_per_entity_us']:.2f} us per entity held "
          f"({med['idle_scan_per_entity_us'] * 100_000 / 1e3:.0f} ms for 100,000 entities, once per checkpoint)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
