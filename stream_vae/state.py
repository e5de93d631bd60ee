"""Redis connections and small state helpers (snapshots of online components)."""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Protocol

import structlog
from redis import RedisError, WatchError

from stream_vae.config import RedisSettings
from stream_vae.exceptions import StateStoreError
from stream_vae.lru import forget, put

log = structlog.get_logger("stream_vae.state")
_REDIS_DOWN = (RedisError, OSError)


class Snapshottable(Protocol):
    """An online component whose learned state can be checkpointed and restored."""

    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


def redis_client(settings: RedisSettings, *, check: bool = True) -> Any:
    """A ``redis.Redis`` client (bytes responses); with ``check`` it pings and fails with a clear message."""
    import redis

    pw = settings.password.get_secret_value() if settings.password else None
    if not settings.url.startswith(("redis://", "rediss://", "unix://")):
        raise StateStoreError(f"the Redis URL {settings.redacted_url()} must start with redis://, rediss:// or "
                              "unix:// (e.g. redis://127.0.0.1:6379/0)")
    try:
        client = redis.Redis.from_url(settings.url, password=pw, socket_connect_timeout=3, socket_timeout=10)
    except ValueError:  # redis-py's message quotes the part of the URL it could not read: a password, maybe
        raise StateStoreError(
            f"cannot read the Redis URL {settings.redacted_url()}: a password holding '/', '#' or '@' must be "
            "percent-encoded, or set STREAM_VAE_REDIS__PASSWORD instead"
        ) from None
    try:
        if check:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise StateStoreError(
            f"cannot reach Redis at {settings.redacted_url()}: {exc}. Set REDIS_URL or STREAM_VAE_REDIS__URL"
        ) from None
    return client


def load_snapshot(client: Any, key: str, component: Snapshottable) -> bool:
    raw = client.get(key)
    if raw is None:
        return False
    component.restore(json.loads(raw))
    return True


def split_entities(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A ``Pipeline.snapshot`` cut into one snapshot per entity (each a valid snapshot of its own).

    Every component's state is ``{part: {entity: value}}``; the plain values (model version, window)
    describe all of them and go with each entity.

    >>> split_entities({"v": 1, "c": {"buf": {"a": [1], "b": [2]}, "n": {"a": 3}}})
    {'a': {'v': 1, 'c': {'buf': {'a': [1]}, 'n': {'a': 3}}}, 'b': {'v': 1, 'c': {'buf': {'b': [2]}}}}
    """
    meta = {k: v for k, v in snapshot.items() if not isinstance(v, dict)}
    out: dict[str, dict[str, Any]] = {}
    for comp, parts in snapshot.items():
        if not isinstance(parts, dict):
            continue
        for part, table in parts.items():
            for entity, value in table.items():
                one = out.setdefault(entity, dict(meta))
                one.setdefault(comp, {}).setdefault(part, {})[entity] = value
    return out


class EntityCheckpoints:
    """Each entity's pipeline state in Redis, so a restarted or rebalanced worker resumes its entities.

    What a worker holds per entity (its window, seasonal history, smoothing buffer, threshold
    histogram, range and open incident) would otherwise start afresh after every deploy or
    rebalance: thresholds back at the calibrated value, an incident under way opened again. One key
    per entity, ``{prefix}:{stream}:entity:{key}``, holds ``Pipeline.snapshot([key])`` as JSON and
    expires ``ttl_s`` after its last write (entities that stop sending are forgotten).

    A worker reports the entities each batch touched (:meth:`touched`), writes them with
    :meth:`save` (every checkpoint interval, and for the partitions it loses on a rebalance,
    :meth:`release`, and at shutdown), and passes :meth:`resume` to ``Pipeline.process_batch``:
    the first time it meets an entity it reads that entity's saved state, once. A crash loses at most
    the updates since the last save; a graceful stop or a rebalance loses none (unless Redis is down then:
    ``entity_state_released_unsaved`` says so). Entities with an open
    incident are also listed per input partition (``{prefix}:{stream}:open:{partition}``), and a
    worker given a partition reads them at once (:meth:`adopt`), so it can resolve an incident whose
    key has gone quiet (``alerts.incident_idle_s``) without waiting for a record that may never come.

    Writes are fenced per partition: a worker given a partition takes a new ownership epoch for it
    (``{prefix}:{stream}:owner:{partition}``, :meth:`adopt`), and writes the state of that partition's
    entities only while the epoch is still its own. A worker the group expelled (it stalled past the
    session timeout) learns it late, and its checkpoint, or its ``release`` when aiokafka finally revokes
    the partitions, would otherwise write the state it had over what the partition's new owner saved since.
    """

    def __init__(self, client: Any, *, prefix: str, stream: str, ttl_s: float = 7 * 86400,
                 max_entities: int = 100_000) -> None:
        self.client = client
        self.prefix = f"{prefix}:{stream}:entity:"
        # per input partition, a hash of the entities with an open incident (entity -> incident id): a
        # worker that is given the partition adopts them, so a key that went quiet before a rebalance
        # or a restart still has an owner that can resolve its incident as idle
        self.open_prefix = f"{prefix}:{stream}:open:"
        self.owner_prefix = f"{prefix}:{stream}:owner:"
        self._epoch: dict[int, int] = {}  # partition -> the ownership epoch this worker took when given it
        self.ttl_s = max(1, int(ttl_s))
        self.max_entities = max_entities
        self._held: OrderedDict[str, int] = OrderedDict()  # entity -> the partition it last came from
        self._dirty: set[str] = set()

    def resume(self, keys: Sequence[str], *, pipeline: Any = None) -> list[dict[str, Any]]:
        """The saved state of the entities among ``keys`` that this worker has not held yet.

        With ``pipeline``, room is made for them first: beyond ``max_entities`` the least recently seen
        entities are saved and forgotten (the pipeline's own bound would forget them unsaved, and they
        would come back from an older checkpoint). A Redis error is raised (before the pipeline changes
        anything: the hot loop reads the batch again): an entity started afresh was never read back, and
        its first save overwrote what it had."""
        new = [k for k in dict.fromkeys(keys) if k not in self._held]
        if pipeline is not None:
            self._make_room(pipeline, len(new), set(keys))
        states = self._fetch(new)
        for k in new:
            put(self._held, k, -1, self.max_entities)
        return states

    def _make_room(self, pipeline: Any, incoming: int, keep: set[str]) -> None:
        excess = len(self._held) + incoming - self.max_entities
        if excess <= 0:
            return
        old = list(itertools.islice((k for k in self._held if k not in keep), excess))
        self.save(pipeline, old)
        if any(k in self._dirty for k in old):  # not written (Redis down): nothing changed yet, read the batch again
            raise StateStoreError(f"could not save {len(old)} least recently seen entities to make room")
        pipeline.forget(old)
        for k in old:
            self._held.pop(k, None)
            self._dirty.discard(k)

    def adopt(self, partitions: Collection[int]) -> list[dict[str, Any]]:
        """The saved state of the entities with an open incident in ``partitions`` (just assigned to this
        worker) that it does not hold yet: their incidents can then end here, even if they never send again.
        First it takes a new ownership epoch of each partition, so that their previous owner writes no more."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for p in partitions:
                pipe.incr(self.owner_prefix + str(p))
            self._epoch.update(zip(partitions, (int(e) for e in pipe.execute()), strict=True))
            found = {p: self.client.hkeys(self.open_prefix + str(p)) for p in partitions}
            new = {k.decode(): p for p, ks in found.items() for k in ks if k.decode() not in self._held}
            states = self._fetch(list(new))
        except _REDIS_DOWN as exc:  # not held: they are resumed when they next send
            log.warning("open_incidents_unavailable", partitions=len(partitions), error=type(exc).__name__)
            return []
        for k, p in new.items():
            put(self._held, k, p, self.max_entities)
        return states

    def _fetch(self, new: Sequence[str]) -> list[dict[str, Any]]:
        if not new:
            return []
        raws = self.client.mget([self.prefix + k for k in new])
        states = []
        for k, raw in zip(new, raws, strict=True):
            if raw is None:
                continue
            try:
                states.append(json.loads(raw))
            except ValueError:
                log.warning("entity_state_unreadable", entity=k)
        return states

    def touched(self, keys: Iterable[str], partitions: Iterable[int]) -> None:
        for k, p in zip(keys, partitions, strict=True):
            put(self._held, k, p, self.max_entities)
            self._dirty.add(k)

    def unsaved(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` whose state changed since it was last written."""
        return {k for k in keys if k in self._dirty}

    def changed(self, keys: Iterable[str]) -> None:
        """These entities' state changed outside a batch (an incident resolved as idle): save them too."""
        self._dirty.update(k for k in keys if k in self._held)

    def save(self, pipeline: Any, keys: Collection[str] | None = None) -> int:
        """Write the state of ``keys`` (default: every entity touched since the last save); returns how many."""
        todo = self._dirty if keys is None else self._dirty & set(keys)
        if not todo:
            return 0
        states = split_entities(pipeline.snapshot(todo))
        fenced = [p for p in {self._held.get(k, -1) for k in states} if p in self._epoch]
        try:
            with self.client.pipeline(transaction=True) as pipe:
                if fenced:  # the epochs are checked and the state written in one MULTI (EXEC fails if one moved)
                    pipe.watch(*(self.owner_prefix + str(p) for p in fenced))
                    now = dict(zip(fenced, pipe.mget([self.owner_prefix + str(p) for p in fenced]), strict=True))
                    # only a newer epoch is another owner's; an older or missing one is Redis having lost our
                    # INCR (a restart from a snapshot, a failover): put ours back so the next adopter goes above
                    lost = {p for p, e in now.items() if e is not None and int(e) > self._epoch[p]}
                    pipe.multi()
                    for p, e in now.items():
                        if e is None or int(e) < self._epoch[p]:
                            pipe.set(self.owner_prefix + str(p), self._epoch[p])
                else:
                    lost = set()
                if lost:  # another worker owns these partitions now: what this one holds of them is stale
                    log.warning("entity_state_fenced", partitions=sorted(lost))
                    gone = {k for k in states if self._held.get(k, -1) in lost}
                    states = {k: v for k, v in states.items() if k not in gone}
                    self._dirty -= gone
                written = self._queue(pipe, states)
                pipe.execute()
        except WatchError:  # a partition changed hands meanwhile: kept dirty, judged again at the next save
            log.warning("entity_state_not_saved", entities=len(states), error="WatchError")
            return 0
        except _REDIS_DOWN as exc:  # kept dirty: written at the next save
            log.warning("entity_state_not_saved", entities=len(states), error=type(exc).__name__)
            return 0
        self._dirty -= todo
        return written

    def _queue(self, pipe: Any, states: dict[str, dict[str, Any]]) -> int:
        opened: dict[int, dict[str, str]] = {}
        closed: dict[int, list[str]] = {}
        for k, state in states.items():
            pipe.set(self.prefix + k, json.dumps(state, separators=(",", ":")), ex=self.ttl_s)
            p = self._held.get(k, -1)
            incident = state.get("incidents", {}).get("open", {}).get(k)
            if incident is not None and p >= 0:
                opened.setdefault(p, {})[k] = str(incident[0])
            elif p >= 0:
                closed.setdefault(p, []).append(k)
        for p, table in opened.items():
            pipe.hset(self.open_prefix + str(p), mapping=table)
            pipe.expire(self.open_prefix + str(p), self.ttl_s)
        for p, gone in closed.items():
            pipe.hdel(self.open_prefix + str(p), *gone)
        return len(states)

    def drop(self, pipeline: Any, partitions: Collection[int]) -> list[str]:
        """Forget the entities of ``partitions`` here without saving them (a batch of theirs could not be
        committed: their state holds it); whoever reads them next resumes the last saved state. Returns
        the keys forgotten."""
        gone = [k for k, p in self._held.items() if p in partitions]
        pipeline.forget(gone)
        forget(self._held, gone)
        self._dirty.difference_update(gone)
        return gone

    def release(self, pipeline: Any, partitions: Collection[int]) -> int:
        """Partitions moved to another worker: save their entities, then forget them here."""
        gone = [k for k, p in self._held.items() if p in partitions]
        n = self.save(pipeline, gone)
        unsaved = self._dirty.intersection(gone)
        if unsaved:  # Redis down: a rebalance cannot wait for it (and this worker may not get them back)
            log.warning("entity_state_released_unsaved", partitions=sorted(partitions), entities=len(unsaved),
                        why="Redis unavailable: their next owner resumes their last saved state, as after a crash")
        self.drop(pipeline, partitions)
        for p in partitions:
            self._epoch.pop(p, None)
        return n
