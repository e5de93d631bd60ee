"""``stream-vae eval {smd,asd,nab}``: the detector on benchmark data, next to baselines, in one command.

Register with ``app.add_typer(eval_app, name="eval")``. Progress goes to stderr, a summary table
to stdout; with ``--json`` the last stdout line is one JSON object (see
:mod:`stream_vae.evaluation.runner` for what is measured and how). Errors are one line on stderr
(``error: ...``) and exit code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, get_args

import numpy as np
import typer

from stream_vae.clierrors import friendly
from stream_vae.evaluation.runner import METRIC_KEYS, NAB_PROFILE_KEYS, EvalSettings
from stream_vae.exceptions import ConfigError
from stream_vae.topology import AlertGrouping, CalibrationMethod, ScoreKind, ThresholdAdaptation

eval_app = typer.Typer(
    help="Benchmark detection quality on SMD, ASD or NAB through the workers' own pipeline, next to baselines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


SMD_DEFAULTS = EvalSettings()
"""SMD and ASD: windows of 5 records, robust score, fpr 0.005, tracked threshold (half-life 2000)."""
NAB_DEFAULTS = EvalSettings(window=64, score="gaussian", smoothing=10, rate_cap=5.0, range_tolerance=0.05,
                            seasonal_period="auto")
"""NAB: univariate, non-stationary series, calibrated on a few hundred records: long windows, the Gaussian
NLL score, smoothed scores, flag rate capped at 5x the budget, HTM's range rule (a value 5 % beyond
the range so far), and seasonal differences where the probationary period shows a strong period."""

DataDir = Annotated[
    Path, typer.Option("--data-dir", help="dataset folder with the layout of shared/data/<dataset>", show_default=False)
]
EntityOpt = Annotated[
    list[str] | None, typer.Option("--entity", "-e", help="entity (NAB: file or category) to run; repeatable")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object as the last stdout line")]
PlotsOpt = Annotated[Path | None, typer.Option("--plots", help="write PNG figures into this folder")]
WindowOpt = Annotated[int | None, typer.Option("--window", min=1, max=256, help="records per model input")]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", min=1, help="training epochs (early stopping may stop)")]
RowsOpt = Annotated[int | None, typer.Option("--max-train-rows", min=100, help="train on the most recent N rows")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="torch threads")]
BaselinesOpt = Annotated[
    str | None, typer.Option("--baselines", help="comma-separated: hst,pca,iforest,random ('' for none)")
]
FprOpt = Annotated[float | None, typer.Option("--fpr", min=1e-6, max=0.5, help="false-positive budget per record")]
SmoothOpt = Annotated[int | None, typer.Option("--smoothing", min=1, help="score smoothing (records)")]
HalfLifeOpt = Annotated[int | None, typer.Option("--half-life", min=10, help="threshold tracker half-life (records)")]
AdaptOpt = Annotated[str | None, typer.Option("--adapt", help="online threshold adaptation: track | off")]
ScoreOpt = Annotated[str | None, typer.Option("--score", help="robust | gaussian")]
ScoreQOpt = Annotated[
    float | None,
    typer.Option("--score-quantile", min=0.0, max=0.999, help="robust score: per-feature scale quantile (0 = off)"),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of the model and the baselines")]
RateCapOpt = Annotated[
    float | None, typer.Option("--rate-cap", min=0.0, help="threshold floor: recent (1 - cap x fpr) quantile (0 = off)")
]
EnsembleOpt = Annotated[int | None, typer.Option("--ensemble", min=1, max=16, help="VAEs scored together")]
RangeTolOpt = Annotated[
    float | None,
    typer.Option("--range-tolerance", min=0.0, help="also flag values beyond the range so far by this fraction of it "
                 "(0 = off)"),
]
BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="records per process_batch call (speed only: each record is judged by "
                 "the threshold its entity published last, see --track-every)"),
]
TrackEveryOpt = Annotated[
    int | None,
    typer.Option("--track-every", min=1, help="the tracked threshold moves once every N records of an entity"),
]
SeasonalOpt = Annotated[
    str | None,
    typer.Option("--seasonal-period", help="also model each value's change since N records ago; 'auto': the "
                 "strongest period longer than the window in the training rows, if any; 0 = off"),
]
AlertGroupOpt = Annotated[
    str | None,
    typer.Option("--alert-group", help="which flagged records alert (alerts.group): record | incident (one per run "
                 "of flags, plus escalations); NAB counts alerts as detections"),
]
CalibrationOpt = Annotated[
    str | None, typer.Option("--calibration", help="threshold from the held-out scores: quantile | pot (EVT tail fit)")
]
MemberWindowsOpt = Annotated[
    str | None,
    typer.Option("--member-windows", help="one window per ensemble member, comma-separated (e.g. 1,5,10): a "
                 "multi-scale ensemble; sets --ensemble to their count and, unless given, --window to the longest"),
]


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _settings(
    base: EvalSettings, *, window: int | None, epochs: int | None, max_train_rows: int | None, threads: int,
    baselines: str | None, fpr: float | None, smoothing: int | None, half_life: int | None, adapt: str | None,
    score: str | None, seed: int, score_quantile: float | None = None, ensemble: int | None = None,
    rate_cap: float | None = None, member_windows: str | None = None, range_tolerance: float | None = None,
    batch_size: int | None = None, track_every: int | None = None, seasonal_period: str | None = None,
    alert_group: str | None = None, calibration: str | None = None,
) -> EvalSettings:
    from stream_vae.evaluation.baselines import BASELINES

    changes: dict[str, Any] = {"threads": threads, "seed": seed}
    for key, value in (("window", window), ("epochs", epochs), ("max_train_rows", max_train_rows), ("fpr", fpr),
                       ("smoothing", smoothing), ("half_life", half_life), ("score_quantile", score_quantile),
                       ("ensemble", ensemble), ("rate_cap", rate_cap), ("range_tolerance", range_tolerance),
                       ("batch_size", batch_size), ("track_every", track_every)):
        if value is not None:
            changes[key] = value
    if member_windows is not None:
        try:
            ws = tuple(int(w) for w in member_windows.split(",") if w.strip())
        except ValueError:
            raise ConfigError(f"--member-windows takes comma-separated integers, got {member_windows!r}") from None
        if not ws or min(ws) < 1 or max(ws) > 256:
            raise ConfigError(f"--member-windows needs windows between 1 and 256, got {member_windows!r}")
        changes.update(member_windows=ws, ensemble=len(ws))
        changes.setdefault("window", max(ws))
    if seasonal_period is not None:
        if seasonal_period != "auto" and not (seasonal_period.isdigit() and int(seasonal_period) <= 1_000_000):
            raise ConfigError(f"--seasonal-period takes a record count (0 = off) or 'auto', got {seasonal_period!r}")
        changes["seasonal_period"] = seasonal_period if seasonal_period == "auto" else int(seasonal_period)
    # options with a fixed set of values: the topology's own Literal types
    for key, given, choices in (("calibration", calibration, CalibrationMethod), ("alert_group", alert_group,
                                AlertGrouping), ("adapt", adapt, ThresholdAdaptation), ("score", score, ScoreKind)):
        if given is not None:
            if given not in get_args(choices):
                raise ConfigError(f"--{key.replace('_', '-')} must be {' or '.join(map(repr, get_args(choices)))}, "
                                  f"got {given!r}")
            changes[key] = given
    if baselines is not None:
        names = tuple(b.strip() for b in baselines.split(",") if b.strip())
        unknown = sorted(set(names) - set(BASELINES))
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
        changes["baselines"] = names
    return replace(base, **changes)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _table_smd(doc: dict[str, Any]) -> str:
    cols = ("f1_best", "f1_pa_best", "auc_pr", "f1_online", "f1_pa_online", "hitrate_150")
    rows: list[tuple[str, ...]] = [("detector", *cols)]
    rows.append(("stream-vae", *(_fmt(doc["mean"][c]) for c in cols)))
    for b, m in doc["mean"]["baselines"].items():
        rows.append((b, *(_fmt(m[c]) for c in cols)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{doc['dataset']}: mean over {len(doc['entities'])} entities ({doc['seconds']}s)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _run_smd_like(
    dataset: str, data_dir: Path, *, entity: list[str] | None, as_json: bool, plots: Path | None,
    settings: EvalSettings,
) -> None:
    from stream_vae.evaluation.runner import evaluate_smd_like

    doc, reports, entities = evaluate_smd_like(
        data_dir, dataset=dataset, entities=entity or None, settings=settings, progress=_progress
    )
    if plots is not None:
        from stream_vae.evaluation.plots import plot_contributions, plot_score, safe_name

        for rep, ent in zip(reports, entities, strict=True):
            best = max(rep.baseline_traces, key=lambda b: rep.metrics["baselines"][b]["f1_best"] or 0.0,
                       default=None)
            plot_score(plots / f"{dataset}_{safe_name(rep.name)}_score.png", rep.trace, ent.label, title=rep.name,
                       baseline=(best, rep.baseline_traces[best]) if best else None)
            plot_contributions(plots / f"{dataset}_{safe_name(rep.name)}_contributions.png", rep.trace, ent.label,
                               title=rep.name, interpretation=ent.interpretation)
        _progress(f"figures written to {plots}")
    typer.echo(_table_smd(doc))
    if as_json:
        typer.echo(json.dumps(doc, separators=(",", ":")))


def _smd_like_command(dataset: str, doc: str) -> Callable[..., None]:
    """One command body for the SMD-layout datasets (smd, asd): same options, same defaults."""

    def command(
        data_dir: DataDir,
        *,
        entity: EntityOpt = None,
        as_json: JsonOpt = False,
        plots: PlotsOpt = None,
        window: WindowOpt = None,
        epochs: EpochsOpt = None,
        max_train_rows: RowsOpt = None,
        threads: ThreadsOpt = 1,
        baselines: BaselinesOpt = None,
        fpr: FprOpt = None,
        smoothing: SmoothOpt = None,
        half_life: HalfLifeOpt = None,
        adapt: AdaptOpt = None,
        score: ScoreOpt = None,
        score_quantile: ScoreQOpt = None,
        ensemble: EnsembleOpt = None,
        member_windows: MemberWindowsOpt = None,
        rate_cap: RateCapOpt = None,
        range_tolerance: RangeTolOpt = None,
        batch_size: BatchOpt = None,
        track_every: TrackEveryOpt = None,
        seasonal_period: SeasonalOpt = None,
        alert_group: AlertGroupOpt = None,
        calibration: CalibrationOpt = None,
        seed: SeedOpt = 0,
    ) -> None:
        s = _settings(SMD_DEFAULTS, window=window, epochs=epochs, max_train_rows=max_train_rows, threads=threads,
                      baselines=baselines, fpr=fpr, smoothing=smoothing, half_life=half_life, adapt=adapt,
                      score=score, seed=seed, score_quantile=score_quantile, ensemble=ensemble, rate_cap=rate_cap,
                      member_windows=member_windows, range_tolerance=range_tolerance, batch_size=batch_size,
                      track_every=track_every, seasonal_period=seasonal_period, alert_group=alert_group,
                      calibration=calibration)
        _run_smd_like(dataset, data_dir, entity=entity, as_json=as_json, plots=plots, settings=s)

    command.__name__ = dataset
    command.__doc__ = doc
    return command


smd = eval_app.command("smd")(friendly(_smd_like_command(
    "smd", "Server Machine Dataset: train per machine on its train split, stream its test split.")))
asd = eval_app.command("asd")(friendly(_smd_like_command(
    "asd", "Application Server Dataset: same protocol as smd; slices per anomaly type.")))


def _table_nab(doc: dict[str, Any]) -> str:
    cols = tuple(NAB_PROFILE_KEYS.values())
    rows: list[tuple[str, ...]] = [("detector", *cols, "label_free_standard")]
    rows.append(("stream-vae", *(_fmt(doc[c]) for c in cols), _fmt(doc["label_free"]["score_standard"])))
    for b, m in doc["baselines"].items():
        rows.append((b, *(_fmt(m[c]) for c in cols), _fmt(m["label_free"]["score_standard"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"nab: {doc['files']} files ({doc['seconds']}s); NAB protocol (one corpus threshold per profile)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


@eval_app.command("nab")
@friendly
def nab(
    data_dir: DataDir,
    *,
    entity: EntityOpt = None,
    as_json: JsonOpt = False,
    plots: PlotsOpt = None,
    window: WindowOpt = None,
    epochs: EpochsOpt = None,
    threads: ThreadsOpt = 1,
    baselines: BaselinesOpt = None,
    fpr: FprOpt = None,
    smoothing: SmoothOpt = None,
    half_life: HalfLifeOpt = None,
    adapt: AdaptOpt = None,
    score: ScoreOpt = None,
    score_quantile: ScoreQOpt = None,
    ensemble: EnsembleOpt = None,
    member_windows: MemberWindowsOpt = None,
    rate_cap: RateCapOpt = None,
    range_tolerance: RangeTolOpt = None,
    batch_size: BatchOpt = None,
    track_every: TrackEveryOpt = None,
    seasonal_period: SeasonalOpt = None,
    alert_group: AlertGroupOpt = None,
    calibration: CalibrationOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Numenta Anomaly Benchmark: train on each file's probationary period, stream the whole file."""
    from stream_vae.evaluation.runner import evaluate_nab

    s = _settings(NAB_DEFAULTS, window=window, epochs=epochs, max_train_rows=None, threads=threads,
                  baselines=baselines, fpr=fpr, smoothing=smoothing, half_life=half_life, adapt=adapt, score=score,
                  seed=seed, score_quantile=score_quantile, ensemble=ensemble,
                  rate_cap=rate_cap, member_windows=member_windows, range_tolerance=range_tolerance,
                  batch_size=batch_size, track_every=track_every, seasonal_period=seasonal_period,
                  alert_group=alert_group, calibration=calibration)
    doc, series, traces = evaluate_nab(data_dir, files=entity or None, settings=s, progress=_progress)
    if not series:
        raise ConfigError(f"no NAB file in {data_dir} matches --entity {entity}")
    if plots is not None:
        from stream_vae.evaluation.plots import plot_score, safe_name

        for ser, tr in zip(series, traces, strict=True):
            label = np.zeros(len(ser.values), dtype=bool)
            for a, b in ser.window_indices:
                label[a : b + 1] = True
            plot_score(plots / f"nab_{safe_name(ser.name)}_score.png", tr, label, title=ser.name)
        _progress(f"figures written to {plots}")
    typer.echo(_table_nab(doc))
    if as_json:
        typer.echo(json.dumps(doc, separators=(",", ":")))


__all__ = ["METRIC_KEYS", "eval_app"]


if __name__ == "__main__":  # python -m stream_vae.evaluation.cli smd --data-dir ...
    eval_app()
