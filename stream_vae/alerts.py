"""alert: turn flagged records into typed ``Alert``s (severity, top features, redaction)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from stream_vae.lru import entity_groups, forget, lru_slot, pick, put
from stream_vae.records import Alert, BoolArray, FloatArray, ScoreResult, ValidBatch
from stream_vae.topology import AlertGrouping, Topology


def severity(p_value: float, *, fpr: float, high: float, critical: float) -> str:
    """Severity from how far below the false-positive budget the p-value is.

    Examples
    --------
    >>> severity(0.004, fpr=0.005, high=0.1, critical=0.01), severity(1e-6, fpr=0.005, high=0.1, critical=0.01)
    ('medium', 'critical')
    """
    if p_value <= fpr * critical:
        return "critical"
    if p_value <= fpr * high:
        return "high"
    return "medium"


class AlertBuilder:
    """Builds alerts for the rows a calibrator flagged."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._names = topology.feature_names
        self._redact = set(topology.alerts.redact)

    def build(
        self,
        batch: ValidBatch,
        result: ScoreResult,
        flagged: np.ndarray,  # type: ignore[type-arg]
        p_values: FloatArray,
        *,
        threshold: float,
        calibration_id: str,
        drift_episode: str | None = None,
        outside: np.ndarray | None = None,  # type: ignore[type-arg]
        incidents: Sequence[str | None] | None = None,
    ) -> list[Alert]:
        """One alert per flagged row; ``outside[i, j]``: feature j of row i left its range (RangeTracker);
        ``incidents[i]``: the incident row i belongs to (:class:`IncidentTracker`; default: its own)."""
        spec = self.topology.alerts
        fpr = self.topology.calibration.fpr
        k = min(spec.top_features, len(self._names))
        out: list[Alert] = []
        for i in np.flatnonzero(flagged).tolist():
            contrib = result.attributions[i]
            top = np.argsort(-contrib)[:k]
            total = float(np.abs(contrib).sum()) or 1.0
            feats = []
            for j in top:
                name = self._names[j]
                item: dict[str, object] = {"feature": name, "contribution": round(float(contrib[j]) / total, 4)}
                if name not in self._redact:
                    item["value"] = float(batch.X[i, j])
                feats.append(item)
            rec = batch.records[i]
            own = _record_id(batch, i)
            incident = (incidents[i] if incidents is not None else None) or own
            p = float(p_values[i])
            out.append(
                Alert(
                    stream=self.topology.name,
                    topology_id=self.topology.name,
                    key=batch.keys[i],
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                    event_time=batch.event_times[i],
                    score=float(result.score[i]),
                    threshold=threshold,
                    p_value=p,
                    severity=severity(p, fpr=fpr, high=spec.severity_high, critical=spec.severity_critical),
                    top_features=feats,
                    latent_mu=[round(float(v), 4) for v in result.latent_mu[i]],
                    model_version=result.model_version,
                    calibration_id=calibration_id,
                    drift_episode=drift_episode,
                    beyond_range=[] if outside is None else [self._names[j] for j in np.flatnonzero(outside[i])],
                    incident=incident,
                    incident_event="open" if incident == own else "escalate",
                )
            )
        return out


def incident_alerts(
    flagged: BoolArray, beyond: BoolArray, *, in_run: bool = False, in_range_run: bool = False
) -> BoolArray:
    """Which records of one entity (arrival order) an incident-grouped stream alerts on.

    An incident is a run of consecutive flagged records. It alerts when it opens (its first
    record) and when it escalates: the first record of a run of range-rule hits inside it (a
    feature beyond everything the entity has shown, ``beyond``). ``in_run`` / ``in_range_run``:
    whether the record before the first one was flagged / a range-rule hit.

    Examples
    --------
    >>> f = np.array([0, 1, 1, 1, 1, 0, 1], dtype=bool)
    >>> b = np.array([0, 0, 1, 1, 0, 0, 0], dtype=bool)
    >>> incident_alerts(f, b).astype(int).tolist()
    [0, 1, 1, 0, 0, 0, 1]
    >>> incident_alerts(f[1:], b[1:], in_run=True).astype(int).tolist()  # the incident was already open
    [0, 1, 0, 0, 0, 1]
    """
    f = np.asarray(flagged, dtype=bool)
    b = np.asarray(beyond, dtype=bool) & f
    prev_f = np.concatenate([[in_run], f[:-1]])
    prev_b = np.concatenate([[in_run and in_range_run], b[:-1]])
    out: BoolArray = (f & ~prev_f) | (b & ~prev_b)
    return out


class IncidentTracker:
    """Per entity, whether an incident is open: turns flagged records into incident alerts (``alerts.group``).

    With ``group = "record"`` every flagged record alerts (each is its own incident). With
    ``"incident"`` only :func:`incident_alerts` records do, so a sustained anomaly pages once (and
    again when it escalates), not once per record; every alert names its incident by the record
    that opened it (``topic:partition:offset``), stable across replays, and the entity's next
    record that is not flagged ends it (:attr:`Selection.ends`), or :meth:`expire` when the entity
    stops sending. Bounded to ``max_entities`` (least recently seen forgotten); snapshot/restorable.

    An incident is *announced* once one of its alerts got past the worker's alert gate
    (:meth:`announce`); each end says whether it was, so the worker publishes the resolve of an
    incident a consumer heard of and drops the resolve of one it never did (the cool-down or a
    drift episode held back every alert of it).
    """

    state_keys = ("open",)

    def __init__(self, group: AlertGrouping, *, max_entities: int = 100_000) -> None:
        self.group = group
        self.max_entities = max_entities
        # key -> [incident id or None, in a range run, flagged records so far in the incident,
        #         the key's last record's Kafka timestamp (s; the clock without one), announced,
        #         the key's partition (None: not known, a state saved before it was kept)]
        self._open: OrderedDict[str, list[Any]] = OrderedDict()

    def select(
        self, batch: ValidBatch, flagged: BoolArray, beyond: BoolArray, *, now: float | None = None
    ) -> Selection:
        """Records to alert on, each record's incident id (None: not flagged, or its own incident), and
        the incidents that ended. A key is last seen at its newest record's Kafka timestamp, or at
        ``now`` (default: the clock) for records without one or stamped later."""
        now = time.time() if now is None else now
        n = len(flagged)
        ids: list[str | None] = [None] * n
        ends: list[tuple[int, str, int, bool]] = []
        if self.group == "record":
            return Selection(np.asarray(flagged, dtype=bool), ids, ends)
        alert = np.zeros(n, dtype=bool)
        for key, idx in entity_groups(batch.keys).items():
            state = lru_slot(self._open, key, lambda: [None, False, 0, now, False, None], self.max_entities)
            f, b = flagged[idx], beyond[idx] & flagged[idx]
            alert[idx] = incident_alerts(f, b, in_run=state[0] is not None, in_range_run=bool(state[1]))
            current, count, announced = state[0], state[2], bool(state[4])
            for j, i in enumerate(idx.tolist()):
                if not f[j]:
                    if current is not None:
                        ends.append((i, current, count, announced))
                    current, count, announced = None, 0, False
                    continue
                if current is None:
                    current = _record_id(batch, i)
                count += 1
                ids[i] = current
            last = batch.records[idx[-1]]
            newest = max(batch.records[i].timestamp_ms for i in idx.tolist())
            # a timestamp ahead of the clock counts as the clock (as in StreamClock): a broken producer clock
            # a year ahead would keep this key's incident from ever ending as idle
            seen = min(newest / 1000, now) if newest > 0 else now
            if state[0] is not None:  # a record with an older timestamp (out of order) does not turn back the
                seen = max(seen, state[3])  # time the key was last seen: its open incident would end as idle
            state[:] = [current, bool(b[-1]) if current is not None else False, count, seen, announced,
                        last.partition]
        return Selection(alert, ids, sorted(ends))

    def announce(self, incidents: Iterable[tuple[str, str]]) -> None:
        """``(key, incident id)`` of alerts the worker published: those incidents, if still open, are
        announced. (A key may have opened and ended several incidents in one batch: pairs, not a mapping.)"""
        for key, incident in incidents:
            state = self._open.get(key)
            if state is not None and state[0] == incident:
                state[4] = True

    def expire(self, idle_s: float, *, now: float | None = None,
               partition_now: Mapping[int, float] | None = None) -> list[tuple[str, str, int, bool]]:
        """End the open incidents of keys that sent nothing for ``idle_s`` seconds (0: never): ``(key,
        incident id, flagged records, announced)`` each. A key that went quiet mid-incident would
        otherwise leave it open, and its pager paging, for good.

        Idleness is measured up to the time the stream has reached: ``partition_now[p]`` for a key of
        partition ``p`` (how far the worker has read that partition, in its producers' clock), else
        ``now`` (default: the clock, right for a consumer that has caught up). So neither a backlog
        nor a producer whose clock runs behind the worker's ends an incident early.

        Examples
        --------
        >>> t = IncidentTracker("incident")
        >>> t.restore({"open": {"host-1": ["t:0:5", False, 3, 1000.0, True, 0]}})
        >>> t.expire(600, now=1500.0), t.expire(600, now=1600.0), t.expire(600, now=9999.0)
        ([], [('host-1', 't:0:5', 3, True)], [])
        >>> t.restore({"open": {"host-1": ["t:0:5", False, 3, 1000.0, True, 0]}})
        >>> t.expire(600, now=9999.0, partition_now={0: 1500.0}), t.expire(600, partition_now={0: 1600.0})
        ([], [('host-1', 't:0:5', 3, True)])
        """
        if idle_s <= 0 or self.group == "record":
            return []
        now = time.time() if now is None else now
        partition_now = partition_now or {}
        out = []
        for key, state in self._open.items():
            reached = partition_now.get(state[5], now) if state[5] is not None else now
            if state[0] is not None and reached - state[3] >= idle_s:
                out.append((key, state[0], state[2], bool(state[4])))
                state[:3] = [None, False, 0]
                state[4] = False
        return out

    def snapshot(self, keys: Collection[str] | None = None) -> dict[str, Any]:
        return {"open": {k: v for k, v in pick(self._open, keys) if v[0] is not None}}

    def restore(self, state: dict[str, Any], *, merge: bool = False) -> None:
        """Take back ``snapshot()``; ``merge`` adds its entities to the ones held instead of replacing them."""
        if not merge:
            self._open = OrderedDict()
        for k, v in state.get("open", {}).items():
            # states saved before the count / the last-seen time / the announced flag / the partition:
            # count 0, seen now, announced (their resolve was always published), partition not known
            count, seen = (int(v[2]) if len(v) > 2 else 0), (float(v[3]) if len(v) > 3 else time.time())
            partition = int(v[5]) if len(v) > 5 and v[5] is not None else None
            put(self._open, k, [v[0], bool(v[1]), count, seen, bool(v[4]) if len(v) > 4 else True, partition],
                self.max_entities)

    def forget(self, keys: Iterable[str]) -> None:
        forget(self._open, keys)


class Selection(NamedTuple):
    """What :meth:`IncidentTracker.select` decided for a batch."""

    alert: BoolArray  # records to alert on
    incidents: list[str | None]  # each flagged record's incident id (None: its own)
    ends: list[tuple[int, str, int, bool]]  # (row of the first unflagged record, incident id, its flagged
    # records, announced)


def _record_id(batch: ValidBatch, i: int) -> str:
    """An incident's id: where its first record is in Kafka (stable when the records are replayed)."""
    rec = batch.records[i]
    return f"{rec.topic}:{rec.partition}:{rec.offset}"

