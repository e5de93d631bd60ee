"""Alert hygiene: one alert per key per cool-down (not escalations), marked or thinned during a drift episode."""

from __future__ import annotations

import dataclasses

from stream_vae.lifecycle import EpisodeStore
from stream_vae.records import Alert
from stream_vae.topology import Topology

_RANK = {"medium": 0, "high": 1, "critical": 2}


class AlertGate:
    """Deduplicates and cools down anomaly alerts per key across all workers (through the shared store).

    Examples
    --------
    >>> from stream_vae.lifecycle import MemoryEpisodeStore
    >>> from stream_vae.topology import parse_topology
    >>> topo = parse_topology({"name": "s", "input_topic": "i", "features": [{"name": "a"}]})
    >>> a = Alert("s", "s", "host-1", "i", 0, 1, None, 9.0, 5.0, 1e-4, "medium", [], [], "v1", "c")
    >>> gate = AlertGate(topo, MemoryEpisodeStore(), prefix="p")
    >>> len(gate.filter([a, dataclasses.replace(a, offset=2)], episode=None)[0])  # same key: one alert
    1
    >>> gate.filter([a], episode="drift-1")  # medium alerts are held back during a drift episode
    ([], 1)
    """

    def __init__(self, topology: Topology, store: EpisodeStore, *, prefix: str) -> None:
        self.topology = topology
        self.store = store
        self.prefix = prefix

    def filter(self, alerts: list[Alert], *, episode: str | None) -> tuple[list[Alert], int]:
        """Returns the alerts to publish and how many were suppressed."""
        if not alerts:
            return [], 0
        spec = self.topology.alerts
        keep = alerts
        if episode is not None:
            keep = [dataclasses.replace(a, drift_episode=episode) for a in keep]
            if spec.during_drift == "suppress_all":
                keep = []
            elif spec.during_drift == "suppress_medium":
                keep = [a for a in keep if _RANK.get(a.severity, 0) > 0]
        if keep and spec.cooldown_s > 0:
            # an incident that escalates (alerts.group: incident) is news: it is not cooled down
            escalations = [a for a in keep if a.incident_event == "escalate"]
            # the strongest other alert of each key in this batch competes for the key's cool-down slot
            best: dict[str, Alert] = {}
            for a in keep:
                if a.incident_event != "escalate" and (a.key not in best or a.score > best[a.key].score):
                    best[a.key] = a
            # The slot holds the record that took it, so a worker that crashed after claiming and before
            # publishing (the batch is not committed) publishes that alert again when the records are
            # replayed, whatever the batching then, rather than finding its own slot taken.
            keys = list(best)
            holders = self.store.claim_many(
                [f"{self.prefix}:{self.topology.name}:cool:{k}" for k in keys], [_where(best[k]) for k in keys],
                spec.cooldown_s,
            ) if keys else []
            holder = dict(zip(keys, holders, strict=True))
            keep = [a for a in keep if a.incident_event != "escalate" and holder[a.key] == _where(a)] + escalations
        return keep, len(alerts) - len(keep)


def _where(alert: Alert) -> str:
    """The alerted record's place in Kafka: the same when a restarted worker replays it."""
    return f"{alert.topic}:{alert.partition}:{alert.offset}"
