"""process_batch: the framework-free data path, one batch at a time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stream_vae.model.train import train_model
from stream_vae.pipeline import Pipeline
from stream_vae.preprocess import make_windows
from stream_vae.synth import generate
from stream_vae.testing import iid_stream, iid_topology, keyed_records, loaded, quick_model, raw_records, synth_topology


def test_batch_outcome_accounts_for_every_record() -> None:
    """Every input record is either scored or rejected, and alerts carry version and calibration."""
    topo = synth_topology(epochs=6)
    p = Pipeline(topo, loaded(quick_model(topo), "v3"))
    s = generate(n_steps=300, t0=1200, anomaly_rate=0.02, seed=8)
    recs = raw_records([*s.rows, b"garbage", b'{"entity": "x"}'])
    out = p.process_batch(recs)
    assert len(out.scored) + len(out.rejections) == len(recs)
    assert {r.reason for r in out.rejections} == {"invalid_json", "missing_field"}
    assert out.alerts, "injected anomalies should raise alerts"
    a = out.alerts[0].to_event()
    assert a["specversion"] == "1.0" and a["type"] == "io.stream-vae.anomaly"
    d = a["data"]
    assert d["model_version"] == "v3" and d["calibration_id"].startswith("v3/")
    assert d["score"] > d["threshold"] and 0 < d["p_value"] <= 1
    assert {"feature", "contribution", "value"} <= set(d["top_features"][0])
    flagged = np.flatnonzero(out.is_anomaly)
    assert s.anomalous[flagged].mean() > 0.5  # most alerts are on injected anomalies


def test_swap_changes_version_for_next_batch_only() -> None:
    """After swap() the next batch is scored by the new version."""
    topo = synth_topology(epochs=2)
    m = quick_model(topo, steps=300)
    p = Pipeline(topo, loaded(m, "v1"))
    s = generate(n_steps=20, t0=300, seed=1)
    assert p.process_batch(raw_records(s.rows)).model_version == "v1"
    old = p.swap(loaded(m, "v2"))
    assert old.version == "v1"
    assert p.process_batch(raw_records(s.rows)).model_version == "v2"


def test_redacted_features_have_no_value() -> None:
    """Fields listed under alerts.redact appear without their value in alerts."""
    topo = synth_topology(epochs=4, alerts={"redact": ["cpu", "load", "mem", "net_in", "net_out", "latency_ms",
                                                       "errors", "disk_io"], "top_features": 8})
    p = Pipeline(topo, loaded(quick_model(topo)))
    s = generate(n_steps=400, t0=1200, anomaly_rate=0.03, seed=2)
    out = p.process_batch(raw_records(s.rows))
    assert out.alerts
    assert all("value" not in f for a in out.alerts for f in a.top_features)


def test_all_invalid_batch() -> None:
    """A batch of only bad records returns rejections and no result."""
    topo = synth_topology(epochs=2)
    p = Pipeline(topo, loaded(quick_model(topo, steps=300)))
    out = p.process_batch(raw_records([b"x", b"y"]))
    assert out.result is None and len(out.rejections) == 2 and not out.alerts


@pytest.mark.parametrize("adapt", ["track", "off"])
def test_observed_fpr_on_a_long_stationary_stream_is_within_a_quarter_of_the_budget(adapt: str) -> None:
    """60k stationary records through process_batch are flagged at the configured budget ±25 %."""
    topo = iid_topology(adapt=adapt)
    p = Pipeline(topo, loaded(train_model(iid_stream(40_000, 1), topo)))
    X = iid_stream(60_000, 2)
    keys = ["a", "b", "c"] * 20_000
    recs = keyed_records(X, keys)
    flagged = np.concatenate([p.process_batch(recs[i : i + 2000]).is_anomaly for i in range(0, len(recs), 2000)])
    assert abs(flagged.mean() - 0.02) / 0.02 < 0.25


def test_smoothing_averages_each_entity_and_alerts_carry_their_entity_threshold() -> None:
    """With smoothing n the scores are per-entity moving averages; each alert names its entity's threshold."""
    topo = iid_topology(smoothing=3, half_life=50, track_every=50)
    model = train_model(iid_stream(3000, 3), topo)
    p = Pipeline(topo, loaded(model))
    X = iid_stream(400, 4)
    X[390:, 0] += 30.0  # a burst on entity b's last rows (odd indices)
    keys = ["a", "b"] * 200
    out = p.process_batch(keyed_records(X, keys))
    assert out.result is not None
    raw = model.scorer().score_many(model.scaler.transform(make_windows(X[1::2], 2))).score
    expected_b = np.array([raw[max(0, i - 2) : i + 1].mean() for i in range(len(raw))])
    np.testing.assert_allclose(out.result.score[1::2], expected_b, rtol=1e-5)
    b_alerts = [a for a in out.alerts if a.key == "b"]
    assert b_alerts and all(a.score > a.threshold for a in out.alerts)
    assert [a.offset for a in out.alerts] == sorted(a.offset for a in out.alerts)
    # the tracker now differs per entity after a batch; the next batch's alerts use their entity's value
    thr = p.tracker.thresholds(["a", "b"])
    assert thr[0] != thr[1]
    out2 = p.process_batch(keyed_records(X[-20:], keys[-20:]))
    for a in out2.alerts:
        assert a.threshold == pytest.approx(thr[0] if a.key == "a" else thr[1])


def test_the_same_records_are_flagged_whatever_the_batching() -> None:
    """Records in one backlog batch, in odd batches or one by one get the same thresholds and flags
    (calibration.track_every): a replay after a restart alerts as the live worker did."""
    topo = iid_topology(half_life=200, track_every=100)
    model = loaded(train_model(iid_stream(3000, 7), topo))
    X = iid_stream(1500, 8)
    keys = ["a", "b", "b"] * 500
    X[1::3] *= 1.5  # b is noisier than in training: its threshold moves
    recs = keyed_records(X, keys)
    runs = {}
    for batch in (1500, 77, 1):
        p = Pipeline(topo, model)
        outs = [p.process_batch(recs[i : i + batch]) for i in range(0, len(recs), batch)]
        runs[batch] = (np.concatenate([o.thresholds for o in outs]), np.concatenate([o.is_anomaly for o in outs]))
    for batch in (77, 1):
        np.testing.assert_allclose(runs[batch][0], runs[1500][0], rtol=1e-9)
        np.testing.assert_array_equal(runs[batch][1], runs[1500][1])
    assert len(np.unique(runs[1500][0])) > 3  # the thresholds did move inside the one big batch


def test_swap_restarts_online_state_and_snapshot_restores_it() -> None:
    """A swapped-in model starts from its calibrated threshold; snapshot/restore resumes the online state."""
    topo = iid_topology(half_life=100)
    m = loaded(train_model(iid_stream(3000, 5), topo), "v1")
    p = Pipeline(topo, m)
    shifted = iid_stream(3000, 6) * 3.0
    for i in range(0, 3000, 500):
        p.process_batch(keyed_records(shifted[i : i + 500], ["a"] * 500))
    moved = p.tracker.thresholds(["a"])[0]
    assert moved > m.calibrator.threshold
    state = p.snapshot()
    p2 = Pipeline(topo, m)
    p2.restore(state)
    assert p2.tracker.thresholds(["a"])[0] == pytest.approx(moved)
    p.swap(loaded(train_model(iid_stream(3000, 5), topo), "v2"))
    assert p.tracker.thresholds(["a"])[0] == pytest.approx(p.model.calibrator.threshold)


def test_range_rule_flags_new_extremes_and_alerts_name_the_feature() -> None:
    """With calibration.range_tolerance, a record whose feature leaves the training range is flagged and
    its alert says which feature (beyond_range); a record within range that the score does not flag
    is not; without the setting no alert carries beyond_range."""
    topo = iid_topology(range_tolerance=0.05)
    model = train_model(iid_stream(3000, 3), topo)
    p = Pipeline(topo, loaded(model))
    X = iid_stream(50, 4)
    hi = model.calibrator.range_hi
    assert hi is not None
    X[20, 2] = hi[2] + 0.5 * (hi[2] - model.calibrator.range_lo[2])  # type: ignore[index]
    out = p.process_batch(keyed_records(X, ["a"] * 50))
    assert out.beyond_range.tolist() == [i == 20 for i in range(50)]
    assert out.is_anomaly[20]
    alert = next(a for a in out.alerts if a.offset == 20)
    assert alert.beyond_range == ["f2"] and alert.to_event()["data"]["beyond_range"] == ["f2"]
    assert all(a.beyond_range == [] for a in out.alerts if a.offset != 20)
    plain = Pipeline(iid_topology(), loaded(train_model(iid_stream(3000, 3), iid_topology())))
    out2 = plain.process_batch(keyed_records(X, ["a"] * 50))
    assert not out2.beyond_range.any() and all(a.beyond_range == [] for a in out2.alerts)


def _cycles(n_cycles: int, *, missing: int | None = None, seed: int = 0, period: int = 48) -> np.ndarray:  # type: ignore[type-arg]
    """A daily-like cycle: a bump of 5 over the first 12 records of every ``period``, noise 0.3;
    the bump of cycle ``missing`` does not come (every value stays one the entity shows daily)."""
    t = np.arange(n_cycles * period)
    bump = ((t % period) < 12).astype(float) * 5.0
    if missing is not None:
        bump[missing * period : missing * period + 12] = 0.0
    out: np.ndarray = (bump + 0.3 * np.random.default_rng(seed).normal(size=len(t))).reshape(-1, 1)  # type: ignore[type-arg]
    return out


def _cycle_topology(period: int | str, **calibration: object) -> object:
    from stream_vae.topology import parse_topology

    return parse_topology({
        "name": "cycle", "input_topic": "in", "key_field": "entity", "features": [{"name": "f0"}], "window": 8,
        "model": {"epochs": 15, "kl_warmup_epochs": 3, "hidden": [16, 8], "latent_dim": 2, "ensemble": 1,
                  "seasonal_period": period},
        "calibration": {"fpr": 0.005, **calibration},
    })


def test_a_missing_daily_peak_is_flagged_only_with_seasonal_differences() -> None:
    """A window of 8 cannot see a cycle of 48: without seasonal differences a missing bump is a run of
    ordinary low values; with seasonal_period 'auto' the period is found in training and the
    missing bump (and its echo one period later) is flagged, and alerts name the feature."""
    from stream_vae.topology import Topology

    train, test = _cycles(30, seed=1), _cycles(12, missing=6, seed=2)
    hole = slice(6 * 48, 6 * 48 + 12)
    flagged = {}
    for period in (0, "auto"):
        topo = _cycle_topology(period)
        assert isinstance(topo, Topology)
        m = train_model(train, topo)
        assert m.seasonal_period == (48 if period == "auto" else 0)
        out = Pipeline(topo, loaded(m)).process_batch(keyed_records(test, ["e"] * len(test)))
        flagged[period] = out.is_anomaly
        assert out.alerts and all([f["feature"] for f in a.top_features] == ["f0"] for a in out.alerts)
    assert flagged["auto"][hole].sum() >= 10
    assert flagged[0][hole].sum() <= 2


def test_swapping_to_and_from_a_seasonal_model_keeps_scoring_and_snapshots_round_trip() -> None:
    """Rows change width with the seasonal period: a swap either way scores the next batch, and a
    snapshot restores the seasonal history (the windows only into a pipeline of the same period)."""
    import json

    from stream_vae.topology import Topology

    train, test = _cycles(30, seed=1), _cycles(8, seed=3)
    models = {}
    for period in (0, 48):
        topo = _cycle_topology(period)
        assert isinstance(topo, Topology)
        models[period] = loaded(train_model(train, topo), f"v{period}")
    p = Pipeline(topo, models[0])
    recs = keyed_records(test, ["e"] * len(test))
    p.process_batch(recs[:100])
    p.swap(models[48])
    first = p.process_batch(recs[100:200])
    assert first.result is not None and np.all(np.isfinite(first.result.score))
    state = json.loads(json.dumps(p.snapshot()))
    assert state["seasonal_period"] == 48 and len(state["seasonal"]["history"]["e"]) == 48
    p2 = Pipeline(topo, models[48])
    p2.restore(state)
    a, b = p.process_batch(recs[200:300]), p2.process_batch(recs[200:300])
    assert a.result is not None and b.result is not None
    np.testing.assert_allclose(a.result.score, b.result.score)
    p.swap(models[0])
    back = p.process_batch(recs[300:])
    assert back.result is not None and np.all(np.isfinite(back.result.score))


def _grouped(topo: object, group: str) -> object:
    from stream_vae.topology import Topology

    assert isinstance(topo, Topology)
    return topo.model_copy(update={"alerts": topo.alerts.model_copy(update={"group": group})})


def test_incident_grouping_alerts_once_per_run_and_again_when_it_escalates() -> None:
    """alerts.group: incident. A run of flagged records alerts when it opens and when a feature leaves
    the range again inside it (escalate), both naming the incident by its first record; a snapshot
    taken mid-run resumes the open incident. alerts.group: record alerts on every flagged record."""
    import json

    from stream_vae.topology import Topology

    base = iid_topology(range_tolerance=0.05)
    model = loaded(train_model(iid_stream(3000, 3), base))
    lo, hi = model.calibrator.range_lo, model.calibrator.range_hi
    assert lo is not None and hi is not None
    X = iid_stream(60, 4)
    X[20:25, 2] = hi[2] + 3 * (hi[2] - lo[2])
    X[25:30, 2] = hi[2] + 10 * (hi[2] - lo[2])  # worse again: a new extreme inside the run
    recs = keyed_records(X, ["a"] * 60)
    inc = _grouped(base, "incident")
    assert isinstance(inc, Topology)
    out = Pipeline(inc, model).process_batch(recs)
    assert out.is_anomaly[20:30].all()
    run = [a for a in out.alerts if 20 <= a.offset < 32]
    assert [(a.offset, a.incident, a.incident_event) for a in run] == [
        (20, "t:0:20", "open"), (25, "t:0:20", "escalate")]
    assert run[1].to_event()["data"]["incident"] == {"id": "t:0:20", "event": "escalate"}
    p1 = Pipeline(inc, model)
    p1.process_batch(recs[:23])
    p2 = Pipeline(inc, model)
    p2.restore(json.loads(json.dumps(p1.snapshot())))
    rest = p2.process_batch(recs[23:])
    resumed = [a for a in rest.alerts if a.offset < 32]
    assert [(a.offset, a.incident, a.incident_event) for a in resumed] == [(25, "t:0:20", "escalate")]
    end = int(np.flatnonzero(~out.is_anomaly[20:])[0]) + 20  # a's first record back to normal
    ended = [(e.offset, e.incident, e.records) for e in out.resolved if e.incident == "t:0:20"]
    assert ended == [(end, "t:0:20", end - 20)]
    ev = out.resolved[0].to_event()
    assert ev["type"] == "io.stream-vae.incident.resolved" and ev["data"]["incident"]["event"] == "resolve"
    assert [(e.offset, e.records) for e in rest.resolved if e.incident == "t:0:20"] == [(end, end - 20)]  # resumed
    rec_topo = _grouped(base, "record")
    assert isinstance(rec_topo, Topology)
    every = [a for a in Pipeline(rec_topo, model).process_batch(recs).alerts if 20 <= a.offset < 30]
    assert [a.offset for a in every] == list(range(20, 30))
    assert all(a.incident == f"t:0:{a.offset}" and a.incident_event == "open" for a in every)


def test_an_incident_whose_key_goes_quiet_is_resolved_after_the_idle_time() -> None:
    """alerts.incident_idle_s: an open incident of a key that sends nothing more ends with reason idle
    (no record), once; the key's next wild record opens a new incident. The last-seen time survives a
    snapshot, and states saved before it existed resume as seen at restore."""
    import json

    from stream_vae.monitor import alert_messages
    from stream_vae.topology import Topology

    base = iid_topology()
    model = loaded(train_model(iid_stream(3000, 3), base))
    X = iid_stream(30, 4)
    X[20:, 1] = 50.0  # a wild run that is still going when the key stops sending
    recs = keyed_records(X, ["a"] * 20 + ["a"] * 10)
    inc = _grouped(base, "incident")
    assert isinstance(inc, Topology)
    idle = inc.alerts.incident_idle_s
    pipe = Pipeline(inc, model)
    t0 = time.time()
    out = pipe.process_batch(recs[:25])
    assert out.is_anomaly[20:25].all() and not [e for e in out.resolved if e.offset >= 20]
    assert pipe.expire_incidents(now=t0 + idle / 2) == []
    saved = json.loads(json.dumps(pipe.snapshot()))
    (end,) = pipe.expire_incidents(now=time.time() + idle)
    assert (end.key, end.incident, end.records, end.reason, end.offset) == ("a", "t:0:20", 5, "idle", None)
    data = end.to_event()["data"]
    assert data["record"] is None and data["incident"] == {"id": "t:0:20", "event": "resolve", "records": 5,
                                                           "reason": "idle"}
    assert pipe.expire_incidents(now=time.time() + 10 * idle) == [], "resolved once"
    later = pipe.process_batch(recs[25:])
    assert [(a.offset, a.incident_event) for a in later.alerts] == [(25, "open")], "the key is back: a new incident"
    # alert_messages puts an idle end (no record) before the batch's own events
    msgs = alert_messages(inc, later.alerts, [end])
    assert [json.loads(m.value)["type"] for m in msgs] == ["io.stream-vae.incident.resolved", "io.stream-vae.anomaly"]
    resumed = Pipeline(inc, model)
    resumed.restore(saved)
    assert resumed.expire_incidents(now=t0 + idle / 2) == []
    assert [e.incident for e in resumed.expire_incidents(now=time.time() + idle)] == ["t:0:20"]
    old = Pipeline(inc, model)  # a state saved before the last-seen time: seen at restore
    old.restore({**saved, "incidents": {"open": {"a": ["t:0:20", False, 5]}}})
    assert old.expire_incidents(now=time.time() + idle / 2) == []
    (e,) = old.expire_incidents(now=time.time() + idle)
    assert e.records == 5 and e.announced, "a state saved before the announced flag: its resolve is published"
    never = Pipeline(inc.model_copy(update={"alerts": inc.alerts.model_copy(update={"incident_idle_s": 0.0})}),
                     model)
    never.process_batch(recs[:25])
    assert never.expire_incidents(now=time.time() + 1e9) == [], "incident_idle_s 0: never"


def test_incident_alerts_do_not_depend_on_the_batching_or_on_other_entities() -> None:
    """IncidentTracker over interleaved entities in batches of 1, 7 or all equals incident_alerts per entity,
    and ends each incident at its entity's next unflagged record, counting its flagged records."""
    from stream_vae.alerts import IncidentTracker, incident_alerts
    from stream_vae.records import ValidBatch
    from stream_vae.validate import Validator

    rng = np.random.default_rng(5)
    n = 120
    keys = [["a", "b", "c"][i] for i in rng.integers(0, 3, n)]
    flagged = rng.random(n) < 0.4
    beyond = flagged & (rng.random(n) < 0.4)
    batch, _ = Validator(iid_topology()).validate(keyed_records(iid_stream(n, 6), keys))
    want = np.zeros(n, dtype=bool)
    want_ends = []
    for k in "abc":
        idx = np.flatnonzero(np.array(keys) == k)
        want[idx] = incident_alerts(flagged[idx], beyond[idx])
        f = flagged[idx]
        for j in range(1, len(idx)):  # a run of f ends at j: count it back to where it started
            if f[j - 1] and not f[j]:
                start = j - 1
                while start > 0 and f[start - 1]:
                    start -= 1
                want_ends.append((int(idx[j]), f"t:0:{idx[start]}", j - start))
    def part(i: int, j: int) -> ValidBatch:
        return ValidBatch(batch.records[i:j], batch.X[i:j], batch.keys[i:j], batch.event_times[i:j])

    assert len(want_ends) > 10
    for step in (1, 7, n):
        tracker = IncidentTracker("incident")
        starts = range(0, n, step)
        sel = [tracker.select(part(i, i + step), flagged[i : i + step], beyond[i : i + step]) for i in starts]
        np.testing.assert_array_equal(np.concatenate([x.alert for x in sel]), want)
        ends = [(i0 + row, inc, count) for i0, x in zip(starts, sel, strict=True) for row, inc, count, _ in x.ends]
        assert sorted(ends) == sorted(want_ends)
        assert not any(told for x in sel for *_, told in x.ends), "nothing announced them"
    assert IncidentTracker("record").select(batch, flagged, beyond).ends == []


def test_entities_resumed_from_their_saved_state_are_judged_as_if_the_worker_never_stopped() -> None:
    """A worker checkpoints each entity's state (``snapshot(keys)`` cut per entity); a new worker that
    resumes the entities it meets from it gives the same scores, thresholds, flags and incident alerts
    as one pipeline that saw every record. Without the saved state it does not (windows, seasonal
    history, smoothing, thresholds and open incidents all restart)."""
    import json

    from stream_vae.state import split_entities
    from stream_vae.topology import Topology

    base = iid_topology(half_life=200, track_every=100, range_tolerance=0.05, smoothing=3)
    topo = _grouped(base.model_copy(update={"model": base.model.model_copy(update={"seasonal_period": 7})}),
                    "incident")
    assert isinstance(topo, Topology)
    model = loaded(train_model(iid_stream(3000, 11), topo))
    X = iid_stream(1800, 12)
    keys = ["a", "b", "c"] * 600
    X[1::3] *= 1.6  # b is noisier than in training: its threshold moves
    X[882:960:3, 2] += 20.0  # an incident of a, open across the cut at record 900
    recs = keyed_records(X, keys)
    cut = 900

    def run(p: Pipeline, part: list, **kw: object) -> tuple:  # type: ignore[type-arg]
        outs = [p.process_batch(part[i : i + 128], **kw) for i in range(0, len(part), 128)]  # type: ignore[arg-type]
        scores = np.concatenate([o.result.score for o in outs if o.result is not None])
        alerts = [(a.offset, a.incident, a.incident_event) for o in outs for a in o.alerts]
        flags = np.concatenate([o.is_anomaly for o in outs])
        return scores, np.concatenate([o.thresholds for o in outs]), flags, alerts

    whole = run(Pipeline(topo, model), recs)
    first = Pipeline(topo, model)
    run(first, recs[:cut])
    saved = {k: json.loads(json.dumps(v)) for k, v in split_entities(first.snapshot(["a", "b", "c"])).items()}
    assert set(saved) == {"a", "b", "c"} and set(saved["b"]["tracker"]["hist"]) == {"b"}
    opened = saved["a"]["incidents"]["open"]["a"][0]  # an incident of a is open at the cut
    assert 882 <= int(opened.split(":")[-1]) < cut
    asked: list[str] = []

    def resume(batch_keys: object) -> list:  # type: ignore[type-arg]
        new = [k for k in dict.fromkeys(batch_keys) if k in saved]  # type: ignore[call-overload]
        asked.extend(new)
        return [saved.pop(k) for k in new]

    resumed = run(Pipeline(topo, model), recs[cut:], resume=resume)
    assert sorted(asked) == ["a", "b", "c"]  # each entity asked for once
    np.testing.assert_allclose(resumed[0], whole[0][cut:], rtol=1e-9)
    np.testing.assert_allclose(resumed[1], whole[1][cut:], rtol=1e-9)
    np.testing.assert_array_equal(resumed[2], whole[2][cut:])
    tail = [a for a in whole[3] if a[0] >= cut]
    assert resumed[3] == tail
    fresh = run(Pipeline(topo, model), recs[cut:])
    assert any(a[1] == opened for a in resumed[3])  # the incident open at the cut goes on, under its id
    assert not np.allclose(fresh[1], whole[1][cut:])  # without the saved state the thresholds restart,
    assert (cut, f"t:0:{cut}", "open") in fresh[3]  # and the incident under way pages again


def test_forgetting_entities_keeps_the_others() -> None:
    """``forget`` drops the entities of partitions another worker took over, and nothing else."""
    topo = iid_topology(smoothing=3)
    p = Pipeline(topo, loaded(train_model(iid_stream(2000, 1), topo)))
    p.process_batch(keyed_records(iid_stream(30, 2), ["a", "b", "c"] * 10))
    p.forget(["b"])
    snap = p.snapshot()
    assert set(snap["windower"]["buffers"]) == set(snap["smoother"]["buffers"]) == {"a", "c"}
    assert set(snap["tracker"]["hist"]) == {"a", "c"}


def test_an_incident_is_announced_only_by_its_own_published_alert() -> None:
    """IncidentTracker.announce marks the key's open incident if the id matches (among the several
    incidents one key may have alerted on in a batch); the end carries it, and the key's next incident
    starts unannounced (also after an idle end)."""

    from stream_vae.alerts import IncidentTracker
    from stream_vae.validate import Validator

    batch, _ = Validator(iid_topology()).validate(keyed_records(iid_stream(8, 1), ["a"] * 8))
    flagged = np.array([1, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    tracker = IncidentTracker("incident")
    sel = tracker.select(batch, flagged, np.zeros(8, dtype=bool))
    assert [(i, inc, n, told) for i, inc, n, told in sel.ends] == [(2, "t:0:0", 2, False), (5, "t:0:3", 2, False)]
    tracker.announce([("a", "t:0:3")])  # an id that is no longer open: nothing to mark
    assert tracker.snapshot()["open"]["a"][4] is False
    # the batch published alerts of three incidents of "a": the one still open is marked, whatever the order
    tracker.announce([("a", "t:0:6"), ("a", "t:0:0"), ("a", "t:0:3")])
    ((key, inc, n, told),) = tracker.expire(1, now=time.time() + 10)
    assert (key, inc, n, told) == ("a", "t:0:6", 2, True)
    again = tracker.select(batch, flagged, np.zeros(8, dtype=bool))
    assert [told for *_, told in again.ends] == [False, False]


def test_every_per_entity_table_forgets_at_the_same_bound_as_the_checkpoints() -> None:
    """An entity one table forgot while the checkpoints still count it as held is never read back from
    Redis: with more than 10,000 entities the threshold tracker (then bounded at 10,000, the rest at
    100,000) dropped entities' adaptive thresholds for good."""
    import inspect

    from stream_vae.state import EntityCheckpoints

    pipe = Pipeline(iid_topology(), loaded(train_model(iid_stream(600, 0), iid_topology())))
    tables = [pipe.seasonal, pipe.windower, pipe.incidents, pipe._active.smoother, pipe._active.tracker,
              pipe._active.ranges]
    bound = inspect.signature(EntityCheckpoints).parameters["max_entities"].default
    assert {type(t).__name__: t.max_entities for t in tables} == {type(t).__name__: bound for t in tables}


def test_keys_that_differ_by_a_trailing_nul_are_two_entities() -> None:
    """A numpy string array drops trailing NULs, so a batch of mixed keys filed 'a\\0' (a big-endian
    integer Kafka key, say) under 'a': two entities shared their state and the result hung on batching."""
    from stream_vae.lru import entity_groups

    groups = entity_groups(["b", "a\0", "b", "a"])
    assert {k: v.tolist() for k, v in groups.items()} == {"a": [3], "a\0": [1], "b": [0, 2]}


def test_a_record_with_an_older_timestamp_does_not_end_an_incident_as_idle() -> None:
    """host-a's incident is open, its records arrive with Kafka timestamps T, T + 1 s, then one of
    T + 1 s minus an hour (out of order: event time from a re-sent buffer, another producer's clock). The key
    was seen at T + 1 s, not an hour earlier: 10 s later its incident has not been idle for incident_idle_s."""
    import dataclasses

    from stream_vae.alerts import IncidentTracker
    from stream_vae.validate import Validator

    batch, _ = Validator(iid_topology()).validate(keyed_records(iid_stream(3, 6), ["host-a"] * 3))
    t = int(time.time() * 1000) - 86_400_000  # ms, a day ago (a stamp ahead of the clock counts as the clock)
    stamps = [t, t + 1000, t + 1000 - 3_600_000]
    batch = dataclasses.replace(batch, records=[dataclasses.replace(r, timestamp_ms=t)
                                                for r, t in zip(batch.records, stamps, strict=True)])
    on = np.ones(3, dtype=bool)
    for split in ([slice(0, 3)], [slice(0, 2), slice(2, 3)]):  # one batch, or the late record in the next
        tracker = IncidentTracker("incident")
        for s in split:
            part = dataclasses.replace(batch, records=batch.records[s], X=batch.X[s], keys=batch.keys[s],
                                       event_times=batch.event_times[s])
            tracker.select(part, on[s], ~on[s])
        assert tracker.expire(600, partition_now={0: t / 1000 + 11}) == []
