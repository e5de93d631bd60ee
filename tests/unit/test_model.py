"""The VAE, its training and its scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream_vae.exceptions import ConfigError
from stream_vae.model.scorer import VAEScorer
from stream_vae.model.vae import VAE
from stream_vae.synth import generate
from stream_vae.testing import loaded, quick_model, synth_topology
from stream_vae.topology import Topology


def test_vae_shapes_and_kl_nonnegative() -> None:
    """Encoder/decoder shapes match and the KL term is never negative."""
    vae = VAE(5, hidden=(8, 4), latent_dim=2)
    x = torch.randn(7, 5)
    x_hat, mu, logvar = vae(x)
    assert x_hat.shape == (7, 5) and mu.shape == (7, 2) and logvar.shape == (7, 2)
    assert torch.all(VAE.kl(mu, logvar) >= -1e-6)


def test_training_lowers_validation_loss_and_calibrates() -> None:
    """Training reduces the validation ELBO and yields a calibrated threshold."""
    m = quick_model(synth_topology(epochs=8))
    assert m.history[-1]["val"] < m.history[0]["val"]
    assert m.calibrator.calibrated
    assert len(m.reference["latent_mu_mean"]) == 3


def test_anomalies_score_higher_than_normal() -> None:
    """Injected anomalies get clearly higher scores than normal records."""
    topo = synth_topology(epochs=10)
    m = quick_model(topo)
    s = generate(n_steps=1500, t0=1200, anomaly_rate=0.01, seed=5)
    scores = m.scorer().score_many(m.scaler.transform(s.X)).score
    assert np.median(scores[s.anomalous]) > np.quantile(scores[~s.anomalous], 0.95)


def test_contributions_point_at_the_changed_feature() -> None:
    """A spike on one feature makes that feature the top contributor."""
    topo = synth_topology(epochs=10)
    m = quick_model(topo)
    s = generate(n_steps=300, t0=1200, anomaly_rate=0.0, seed=6)
    X = s.X.copy()
    sd = s.X.std(0)
    X[10, 6] += 10 * sd[6]  # errors
    res = VAEScorer(m.vae, n_features=8, model_version="x").score_many(m.scaler.transform(X))
    assert int(np.argmax(res.contributions[10])) == 6
    assert np.all(res.contributions >= 0)


def test_attributions_are_each_features_peak_over_the_window() -> None:
    """contributions sum each feature's squared standardised residual over the window's records (the
    score's terms); attributions, what an alert names, take its largest term; with one record per
    window the two are the same."""
    m = quick_model(synth_topology(epochs=3, window=3), steps=300)
    x = np.random.default_rng(0).normal(size=(25, 3 * 8))
    res = m.scorer().score_many(x)
    vae = m.vae
    with torch.no_grad():
        xt = torch.as_tensor(x, dtype=torch.float32)
        z2 = (0.5 * (xt - vae.decode(vae.encode(xt)[0])) ** 2 * torch.exp(-vae.out_log_variance())).numpy()
    by_record = z2.reshape(25, 3, 8)
    np.testing.assert_allclose(res.contributions, by_record.sum(1), rtol=1e-5)
    np.testing.assert_allclose(res.attributions, by_record.max(1), rtol=1e-5)
    assert not np.allclose(res.attributions, res.contributions)
    one = quick_model(synth_topology(epochs=3), steps=300).scorer().score_many(x[:, :8])
    np.testing.assert_array_equal(one.attributions, one.contributions)


def test_training_rejects_bad_data() -> None:
    """Wrong shapes, too few rows and NaNs fail with a message that says what to fix."""
    topo = synth_topology()
    with pytest.raises(ConfigError, match="expects 8 columns"):
        quick_model_x(np.zeros((200, 3)), topo)
    with pytest.raises(ConfigError, match="at least 100"):
        quick_model_x(np.zeros((50, 8)), topo)
    bad = np.zeros((200, 8))
    bad[3, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        quick_model_x(bad, topo)


def quick_model_x(X: np.ndarray, topo: object) -> object:
    from stream_vae.model.train import train_model

    return train_model(X, topo)  # type: ignore[arg-type]


def test_windowed_model_trains_and_scores() -> None:
    """A window > 1 trains on per-entity windows and scores with per-feature contributions."""
    topo = synth_topology(epochs=3, window=4)
    m = quick_model(topo, steps=400)
    assert m.vae.n_in == 32
    from stream_vae.preprocess import make_windows

    raw = generate(n_steps=5, t0=400, anomaly_rate=0.0, seed=9).X
    res = m.scorer().score_many(m.scaler.transform(make_windows(raw, 4)))
    assert res.contributions.shape == (len(raw), 8)
    assert np.all(np.isfinite(res.score))


def test_robust_score_is_sum_of_log1p_scaled_contributions_and_survives_the_artifact() -> None:
    """The robust score is sum(log1p(contributions / scale)); with score_quantile 0.99 the scale is each
    feature's 99th percentile contribution on the held-out rows; score kind and scale travel with the weights."""
    from stream_vae.testing import loaded

    topo = synth_topology(epochs=2, model={"latent_dim": 3, "hidden": [16, 8], "epochs": 2, "score": "robust",
                                           "score_quantile": 0.99})
    m = quick_model(topo, steps=300)
    assert m.vae.score_kind == "robust"
    X = m.scaler.transform(generate(n_steps=20, t0=300, seed=3).X)
    res = m.scorer().score_many(X)
    scale = m.vae.get_buffer("score_scale").double().numpy()
    assert scale.shape == (len(topo.features),)
    # 1 % of the held-out windows (a block of each entity of quick_model's data) exceed their feature's scale
    from stream_vae.model.train import _windows_and_keys, holdout

    tr = generate(n_steps=300, anomaly_rate=0.0, seed=0)
    W, keys, _ = _windows_and_keys(m.scaler.transform(tr.X), tr.entities, topo.window)
    val = W[holdout(keys, topo.model.validation_fraction)[0]]
    exceed = (m.scorer().score_many(val).contributions > scale * (1 + 1e-6)).mean(0)
    assert np.all(exceed <= 0.01 + 1 / len(val)) and exceed.mean() > 0.005, exceed
    np.testing.assert_allclose(res.score, np.log1p(res.contributions / scale).sum(1), rtol=1e-5)
    lm = loaded(m)
    assert lm.scorer.vae.score_kind == "robust"
    np.testing.assert_allclose(lm.scorer.score_many(X).score, res.score, rtol=1e-6)
    unscaled = synth_topology(epochs=2, model={"latent_dim": 3, "hidden": [16, 8], "epochs": 2, "score": "robust"})
    assert np.all(  # the default: scale 1
        quick_model(unscaled, steps=300).vae.get_buffer("score_scale").numpy() == 1.0)


def test_gaussian_score_is_the_nll_and_old_weights_load_as_gaussian() -> None:
    """score='gaussian' keeps the summed NLL; weights saved without the score flag load as gaussian."""
    vae = VAE(4, hidden=(8,), latent_dim=2, score="gaussian")
    x = torch.randn(5, 4)
    res = VAEScorer(vae, n_features=4, model_version="x").score_many(x.double().numpy())
    with torch.inference_mode():
        mu, _ = vae.encode(x)
        nll = vae.nll_per_feature(x, vae.decode(mu)).sum(1).double().numpy()
    np.testing.assert_allclose(res.score, nll, rtol=1e-5)
    robust = VAE(4, hidden=(8,), latent_dim=2, score="robust")
    old = {k: v for k, v in robust.state_dict().items() if k not in ("robust_score", "score_scale")}
    fresh = VAE(4, hidden=(8,), latent_dim=2, score="robust")
    fresh.get_buffer("score_scale").fill_(3.0)
    fresh.load_state_dict(old)
    assert fresh.score_kind == "gaussian"
    assert torch.all(fresh.get_buffer("score_scale") == 1.0)  # weights from before the scale: unscaled


def test_smoothed_calibration_matches_smoothed_scores() -> None:
    """With smoothing n the calibrator learns n and is calibrated on smoothed held-out scores."""
    topo = synth_topology(epochs=2, calibration={"fpr": 0.01, "smoothing": 5})
    m = quick_model(topo, steps=400)
    assert m.calibrator.smoothing == 5
    raw = quick_model(synth_topology(epochs=2, calibration={"fpr": 0.01}), steps=400).calibrator
    # smoothing narrows the reference distribution, so its upper quantile comes down
    assert m.calibrator.threshold < raw.threshold


def _ensemble_topology(n: int) -> Topology:
    return synth_topology(model={"latent_dim": 3, "hidden": [16, 8], "epochs": 3, "kl_warmup_epochs": 1,
                                 "ensemble": n})


def test_ensemble_scores_the_mean_of_its_members_and_member_0_is_the_single_model() -> None:
    """ensemble=3 trains seeds seed..seed+2; the score and contributions are the members' means, the
    latent posterior is the first member's, and member 0 is exactly the model ensemble=1 trains."""
    from stream_vae.model.vae import VAEEnsemble

    ens = quick_model(_ensemble_topology(3), steps=300)
    single = quick_model(_ensemble_topology(1), steps=300)
    assert isinstance(ens.vae, VAEEnsemble) and len(ens.vae.vaes()) == 3
    assert {h["member"] for h in ens.history} == {0, 1, 2}
    for a, b in zip(ens.vae.vaes()[0].state_dict().values(), single.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    X = ens.scaler.transform(generate(n_steps=20, t0=300, seed=3).X)
    res = ens.scorer().score_many(X)
    parts = [VAEScorer(v, n_features=X.shape[1], model_version="m").score_many(X) for v in ens.vae.vaes()]
    np.testing.assert_allclose(res.score, np.mean([p.score for p in parts], axis=0), rtol=1e-5)
    np.testing.assert_allclose(res.contributions, np.mean([p.contributions for p in parts], axis=0), rtol=1e-5)
    np.testing.assert_allclose(res.attributions, np.mean([p.attributions for p in parts], axis=0), rtol=1e-5)
    np.testing.assert_array_equal(res.latent_mu, parts[0].latent_mu)
    assert not np.allclose(parts[0].score, parts[1].score)  # the members differ (seeds)


def test_ensemble_survives_the_artifact_and_old_manifests_load_one_member() -> None:
    """The manifest says how many members; a loaded ensemble scores as trained; a manifest from before
    ensembles (no 'members') loads a single VAE."""
    from stream_vae.model.registry import Artifact, load_artifact, to_artifact
    from stream_vae.model.vae import VAEEnsemble

    ens = quick_model(_ensemble_topology(2), steps=300)
    art = to_artifact(ens, "v-ens")
    assert art.manifest["architecture"]["members"] == 2
    lm = load_artifact(art, topology=ens.topology)
    assert isinstance(lm.scorer.vae, VAEEnsemble)
    X = ens.scaler.transform(generate(n_steps=20, t0=300, seed=3).X)
    np.testing.assert_allclose(lm.scorer.score_many(X).score, ens.scorer().score_many(X).score, rtol=1e-6)
    single = quick_model(_ensemble_topology(1), steps=300)
    old = to_artifact(single, "v-old")
    manifest = {**old.manifest, "architecture": {k: v for k, v in old.manifest["architecture"].items()
                                                 if k not in ("members", "member_n_in")}}
    lm_old = load_artifact(Artifact(manifest, old.weights), topology=single.topology)
    assert isinstance(lm_old.scorer.vae, VAE)


def test_ensemble_stops_adding_members_when_out_of_time() -> None:
    """With max_seconds spent, the members trained so far are the model (always at least one)."""
    from stream_vae.model.train import train_model

    tr = generate(n_steps=300, anomaly_rate=0.0, seed=0)
    m = train_model(tr.X, _ensemble_topology(3), entities=tr.entities, max_seconds=0.0)
    assert isinstance(m.vae, VAE)
    assert {h["member"] for h in m.history} == {0}


def test_multiscale_members_read_the_last_records_of_the_longest_window() -> None:
    """member_windows (1, 4) with window 4: member 0 is a one-record VAE scoring the last record of each
    row, member 1 the whole row; the artifact keeps each member's size; the worker's check of a
    candidate (trainer.evaluate) handles members of different sizes."""
    from stream_vae.model.registry import load_artifact, to_artifact
    from stream_vae.model.vae import VAEEnsemble
    from stream_vae.preprocess import make_windows
    from stream_vae.reservoir import Recent
    from stream_vae.trainer import evaluate

    topo = synth_topology(window=4, model={"latent_dim": 3, "hidden": [16, 8], "epochs": 3, "kl_warmup_epochs": 1,
                                           "ensemble": 2, "member_windows": [1, 4]})
    assert topo.member_windows == (1, 4)
    m = quick_model(topo, steps=300)
    d = len(topo.features)
    assert isinstance(m.vae, VAEEnsemble) and [v.n_in for v in m.vae.vaes()] == [d, 4 * d]
    s = generate(n_steps=30, t0=300, seed=3)
    X = m.scaler.transform(make_windows(s.X, 4))
    res = m.scorer().score_many(X)
    short = VAEScorer(m.vae.vaes()[0], n_features=d, model_version="m").score_many(X[:, -d:])
    long = VAEScorer(m.vae.vaes()[1], n_features=d, model_version="m").score_many(X)
    np.testing.assert_allclose(res.score, (short.score + long.score) / 2, rtol=1e-5)
    np.testing.assert_allclose(res.contributions, (short.contributions + long.contributions) / 2, rtol=1e-5)
    art = to_artifact(m, "v-ms")
    assert art.manifest["architecture"]["member_n_in"] == [d, 4 * d]
    lm = load_artifact(art, topology=topo)
    np.testing.assert_allclose(lm.scorer.score_many(X).score, res.score, rtol=1e-6)
    v = evaluate(topo, lm, Recent(s.X, list(s.entities), np.zeros(len(s.X), np.int64), np.ones(len(s.X), bool)))
    assert np.isfinite(v.nll_raw) and 0.0 <= v.alert_rate <= 1.0


@pytest.mark.parametrize(("center", "period", "gaps"),
                         [(False, 0, False), (True, 0, False), (False, 50, False), (False, 50, True), (False, 0, True)])
def test_training_windows_are_the_pipelines_windows(center: bool, period: int, gaps: bool) -> None:
    """Train/serve consistency: streaming the training rows through the pipeline reproduces the
    held-out scores the threshold was calibrated on (with centred windows too, which training
    once skipped: it scaled single records, the pipeline scales windows; and with seasonal
    differences, which training leaves out for each entity's first period). With ``gaps`` one
    record in seven is not normal (the serving model flagged it, as the reservoir marks it): it is
    left out of training but still read by its neighbours' windows and differences, as the
    pipeline read it. (A retrain once dropped such records first, so windows and differences
    spanned the gap.)"""
    from stream_vae.model.train import train_model
    from stream_vae.trainer import replay

    topo = synth_topology(window=4, model={"latent_dim": 3, "hidden": [16, 8], "epochs": 3, "kl_warmup_epochs": 1,
                                           "center_windows": center, "seasonal_period": period})
    s = generate(n_entities=1, n_steps=600, anomaly_rate=0.0, seed=2)
    normal = np.arange(len(s.X)) % 7 != 3 if gaps else np.ones(len(s.X), dtype=bool)
    m = train_model(s.X, topo, entities=list(s.entities), normal=normal)
    assert m.seasonal_period == period
    n_val = max(20, int(normal[period:].sum() * topo.model.validation_fraction))
    out = replay(topo, loaded(m), s.X, list(s.entities))
    assert out.result is not None
    held_out = out.result.score[normal][-n_val:]
    np.testing.assert_allclose(np.sort(held_out), m.calibrator.reference, rtol=1e-4, atol=1e-4)


def test_several_entities_each_hold_out_a_block_of_their_history_at_a_different_point() -> None:
    """With several entities the held-out windows (early stopping, calibration) are a block of each
    entity's own history, each at a different point of it, so they span every entity and the whole
    time range, and every entity is trained on; the threshold's reference is exactly the pipeline's
    scores of those records. (Held out before: the newest tenth of every entity with window 1, one
    phase of a seasonal stream; the entities that came last, whole and untrained, with longer windows.)"""
    from stream_vae.model.train import _windows_and_keys, holdout, train_model
    from stream_vae.trainer import replay

    topo = synth_topology(window=4, model={"latent_dim": 3, "hidden": [16, 8], "epochs": 3, "kl_warmup_epochs": 1})
    s = generate(n_entities=3, n_steps=600, anomaly_rate=0.0, seed=2)
    keys = list(s.entities)
    m = train_model(s.X, topo, entities=keys)
    _, wkeys, ends = _windows_and_keys(s.X, keys, topo.window)
    val, fit = holdout(wkeys, topo.model.validation_fraction, topo.window)
    held = np.zeros(len(keys), dtype=bool)
    held[ends[val]] = True
    out = replay(topo, loaded(m), s.X, keys)
    assert out.result is not None
    np.testing.assert_allclose(np.sort(out.result.score[held]), m.calibrator.reference, rtol=1e-4, atol=1e-4)
    for i, host in enumerate(dict.fromkeys(keys)):  # in order of first appearance
        rows = np.flatnonzero(np.asarray(keys) == host)
        block = np.flatnonzero(held[rows])  # positions in the host's own history
        assert len(block) == 120 and block[-1] - block[0] == 119  # a fifth of 600 records, contiguous
        assert block[-1] + 1 == round((i + 1) / 3 * 600)  # ending at 1/3, 2/3 and the newest record
    # the three windows after a block read its records: neither trained on nor held out (not for the last)
    assert int((~val & ~fit).sum()) == 2 * (topo.window - 1)
    # ... unless that would leave out more than the blocks hold: 100 entities of 5 windows, window 10
    val, fit = holdout([f"e{i}" for i in range(100) for _ in range(5)], 0.2, window=10)
    assert val.sum() == 100 and np.array_equal(fit, ~val)


def test_seasonal_period_survives_the_artifact_and_needs_enough_rows() -> None:
    """The resolved period travels in the manifest (old manifests load without one); a period that
    leaves fewer than 100 training rows is refused with the reason."""
    from stream_vae.model.registry import load_artifact, to_artifact
    from stream_vae.model.train import train_model

    topo = synth_topology(window=2, model={"epochs": 2, "kl_warmup_epochs": 1, "hidden": [8, 4], "latent_dim": 2,
                                           "seasonal_period": 30})
    s = generate(n_entities=1, n_steps=400, anomaly_rate=0.0, seed=1)
    m = train_model(s.X, topo, entities=list(s.entities))
    art = to_artifact(m, "v1")
    assert art.manifest["seasonal_period"] == 30
    lm = load_artifact(art, topology=topo)
    assert lm.seasonal_period == 30 and lm.row_width == 2 * 2 * len(topo.features)
    del art.manifest["seasonal_period"]
    assert load_artifact(art).seasonal_period == 0
    long = topo.model_copy(update={"model": topo.model.model_copy(update={"seasonal_period": 100})})
    with pytest.raises(ConfigError, match="leaves 50 training rows"):
        train_model(s.X[:150], long)
    with pytest.raises(ConfigError, match="normal has 3 flags for 400 training rows"):
        train_model(s.X, topo, normal=[True, True, False])
    with pytest.raises(ConfigError, match="need at least 100 normal training rows, got 67"):
        train_model(s.X, topo, normal=np.arange(400) >= 333)


def test_training_windows_of_keys_that_differ_by_a_trailing_nul_stay_apart() -> None:
    """'a' and 'a\\0' compare equal in numpy (it drops trailing NULs): every row of both was windowed
    twice, in windows that crossed the two entities. Each window is its entity's own records."""
    from stream_vae.model.train import _windows_and_keys

    X = np.arange(8, dtype=np.float64).reshape(4, 2)
    W, wkeys, ends = _windows_and_keys(X, ["a", "a\0", "a", "a\0"], 2)
    assert len(W) == 4 and wkeys == ["a", "a", "a\0", "a\0"] and ends.tolist() == [0, 2, 1, 3]
    assert W[1].tolist() == [0.0, 1.0, 4.0, 5.0]  # 'a' rows 0 and 2, never an 'a\0' row


def test_a_feature_constant_in_training_is_named_in_a_warning() -> None:
    """A feature that never moved in training (retries always 0 in a quiet week) makes every later value
    score at the scaler's cap, a critical alert, and nothing said so at training."""
    from structlog.testing import capture_logs

    from stream_vae.model.train import train_model

    topo = synth_topology(model={"latent_dim": 2, "hidden": [8], "epochs": 1, "kl_warmup_epochs": 0})
    s = generate(n_steps=200, anomaly_rate=0.0, seed=1)
    X = s.X.copy()
    X[:, 6] = 0.0  # errors
    with capture_logs() as logs:
        train_model(X, topo, entities=list(s.entities))
    warned = [e for e in logs if e["event"] == "constant_features"]
    assert len(warned) == 1 and warned[0]["features"] == [topo.feature_names[6]] and warned[0]["values"] == [0.0]
    with capture_logs() as logs:
        train_model(s.X, topo, entities=list(s.entities))
    assert not [e for e in logs if e["event"] == "constant_features"]
