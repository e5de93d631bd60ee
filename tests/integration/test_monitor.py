"""The worker's closed loop (StreamMonitor) on batches, against a real Redis (no broker needed)."""

from __future__ import annotations

import json
import time

import pytest

from stream_vae.model.train import train_model
from stream_vae.monitor import StreamMonitor
from stream_vae.pipeline import Pipeline
from stream_vae.state import redis_client
from stream_vae.testing import iid_stream, iid_topology, keyed_records, loaded

from .helpers import settings

pytestmark = pytest.mark.integration


def test_an_incident_whose_every_alert_was_held_back_ends_without_a_resolve(
        redis_url: str, redis_prefix: str) -> None:
    """alerts.group: incident with a one-hour cool-down. The first incident of host-a opens (published)
    and its resolve is published. The second one, a few records later, is held back by the
    cool-down, and so is its resolve: a pager must not hear of an end it never heard begin. A third,
    held back too, goes quiet: its idle end is dropped as well. (Every end was published before.)"""
    base = iid_topology()
    topo = base.model_copy(update={"name": "mon", "alerts": base.alerts.model_copy(
        update={"group": "incident", "cooldown_s": 3600.0, "incident_idle_s": 1.0})})
    pipeline = Pipeline(topo, loaded(train_model(iid_stream(1500, 0), topo)))
    client = redis_client(settings("unused:1", redis_url, redis_prefix).redis)
    monitor = StreamMonitor(topo, lambda: pipeline, client=client, prefix=redis_prefix, checkpoint_s=3600)
    X = iid_stream(60, 1)
    for lo in (10, 30, 57):  # three runs of wild records, the last one still going at the end
        X[lo : lo + 3] += 40.0
    recs = keyed_records(X, ["host-a"] * len(X))
    # the records through a pipeline alone (no alert gate): which incidents open, which end
    alone = Pipeline(topo, pipeline.model)
    outs = [alone.process_batch(recs[lo : lo + 20]) for lo in range(0, len(X), 20)]
    opened = [a.incident for o in outs for a in o.alerts if a.incident_event == "open"]
    ended = [e.incident for o in outs for e in o.resolved]
    assert opened[0] == "t:0:10" and "t:0:30" in ended and opened[-1] == "t:0:57" and "t:0:57" not in ended
    events = []
    for lo in range(0, len(X), 20):
        em = monitor.process(recs[lo : lo + 20])
        events += [json.loads(m.value)["data"]["incident"] for m in em.messages if m.topic == topo.alerts.anomaly_topic]
    assert [(e["event"], e["id"]) for e in events] == [("open", "t:0:10"), ("resolve", "t:0:10")], events
    time.sleep(1.2)  # > incident_idle_s: the key went quiet mid-incident
    monitor.checkpoint_s = 0.0  # tick() does the periodic work now
    assert [m for m in monitor.tick() if m.topic == topo.alerts.anomaly_topic] == []
    assert pipeline.incidents.snapshot()["open"] == {}, "the held-back incident ended all the same"
    assert [e.incident for e in alone.expire_incidents(now=time.time() + 2)] == ["t:0:57"], "alone, it would end"
