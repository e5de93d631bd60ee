"""Declarative topologies: one YAML file per monitored stream, validated strictly at start-up.

Unknown keys and bad values fail with the file and the field named (``TopologyError``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stream_vae.exceptions import TopologyError

FeatureType = Literal["float", "int", "bool"]
CalibrationMethod = Literal["quantile", "pot"]
ScoreKind = Literal["gaussian", "robust"]
ThresholdAdaptation = Literal["off", "track"]
Severity = Literal["low", "medium", "high", "critical"]

log = structlog.get_logger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Feature(_Strict):
    """One numeric input field of a record."""

    name: str = Field(min_length=1)
    type: FeatureType = "float"
    min: float | None = None
    max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _range(self) -> Feature:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class ModelSpec(_Strict):
    """VAE hyper-parameters."""

    latent_dim: int = Field(default=4, ge=1, le=256)
    hidden: tuple[Annotated[int, Field(ge=1, le=65_536)], ...] = Field(default=(64, 32), min_length=1)
    epochs: int = Field(default=40, ge=1, le=10_000)
    batch_size: int = Field(default=256, ge=8)
    learning_rate: float = Field(default=1e-3, gt=0, lt=1)
    beta: float = Field(default=1.0, ge=0, description="weight of the KL term at the end of annealing")
    kl_warmup_epochs: int = Field(default=10, ge=0)
    patience: int = Field(default=8, ge=1, description="early stopping on the validation ELBO")
    validation_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    seed: int = 0
    ensemble: int = Field(
        default=3, ge=1, le=16,
        description="VAEs trained with seeds seed, seed+1, ...; scored together (mean score and contributions): "
        "3 scored as well as the best of three single seeds on SMD/ASD, for ~6 % of a worker's throughput",
    )
    member_windows: tuple[int, ...] = Field(
        default=(),
        description="one window per ensemble member: member i sees the last member_windows[i] records of the "
        "entity's window (a multi-scale ensemble; the topology's window must hold the longest). Empty = every "
        "member sees the whole window",
    )
    center_windows: bool = Field(
        default=False, description="subtract each feature's mean over the window: model shape, not level"
    )
    score: ScoreKind = Field(
        default="robust",
        description="gaussian: summed Gaussian NLL; robust: sum of log(1 + contribution / scale) per feature "
        "(Student-t like)",
    )
    seasonal_period: Annotated[int, Field(ge=0, le=1_000_000)] | Literal["auto"] = Field(
        default=0,
        description="give the model each feature's change since this many records ago too (per entity), so a "
        "broken cycle the window is too short to see shows (a missing daily peak); 'auto': the strongest period "
        "longer than the window in the training data, if its lag correlation reaches seasonal_min_correlation "
        "(none found: off). 0 = off. Each entity's first period of records has no difference yet (0)",
    )
    seasonal_min_correlation: float = Field(
        default=0.75, gt=0, lt=1,
        description="seasonal_period=auto: the lag correlation a period needs (0.75: the seasonal difference has "
        "at most half the series' variance)",
    )
    score_quantile: float = Field(
        default=0.0, ge=0, lt=1,
        description="robust score: divide each feature's contribution by this quantile of its contributions on "
        "held-out training data (0 = off; 0.99 ranks better on SMD/ASD but thresholds worse, see benchmarks)",
    )

    @model_validator(mode="after")
    def _member_windows(self) -> ModelSpec:
        if self.member_windows and len(self.member_windows) != self.ensemble:
            raise ValueError(
                f"member_windows has {len(self.member_windows)} entries for an ensemble of {self.ensemble}: "
                "give one window per member (or set ensemble to match)"
            )
        if any(w < 1 for w in self.member_windows):
            raise ValueError(f"member_windows must all be >= 1, got {list(self.member_windows)}")
        return self


class CalibrationSpec(_Strict):
    """Label-free threshold for a false-positive budget."""

    method: CalibrationMethod = "quantile"
    fpr: float = Field(default=0.005, gt=0, lt=0.5, description="target false-positive rate per record")
    smoothing: int = Field(default=1, ge=1, le=1000, description="average the score over the last n records")
    adapt: ThresholdAdaptation = Field(
        default="track", description="track: the threshold follows slow shifts of each entity's scores; off: fixed"
    )
    half_life: int = Field(
        default=2000, ge=10, le=10_000_000, description="records of an entity after which its past weighs half"
    )
    rate_cap: float = Field(
        default=0.0, ge=0, description="adapt=track: never let the threshold drop below the entity's recent "
        "(1 - rate_cap x fpr) score quantile, i.e. flag at most ~rate_cap x the budget; for models calibrated "
        "on little data (hundreds of records). It also caps recall when anomalies exceed that rate. 0 = off",
    )
    range_tolerance: float = Field(
        default=0.0, ge=0, description="also flag a record when a feature leaves its entity's range so far "
        "(training data, then every record seen) by more than range_tolerance x that range, whatever the score "
        "(HTM's 'spatial anomaly' rule; 0.05 on NAB). 0 = off",
    )
    track_every: int = Field(
        default=500, ge=1, le=10_000_000, description="adapt=track: an entity's threshold moves once every "
        "track_every of its records, to its scores up to then; so the same records are flagged however they are "
        "batched (live polls or a replayed backlog), and an anomaly shorter than this cannot raise its own threshold",
    )

    @field_validator("adapt", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        return "off" if v is False else v  # YAML 1.1 reads an unquoted `off` as false


DriftTest = Literal["score", "latent", "multivariate"]
DuringDrift = Literal["mark", "suppress_medium", "suppress_all"]
AlertGrouping = Literal["record", "incident"]


class DriftSpec(_Strict):
    """Online drift tests on the latent posterior and the score stream, and what a drift triggers."""

    enabled: bool = True
    tests: tuple[DriftTest, ...] = Field(
        default=("score", "latent", "multivariate"), min_length=1,
        description="at least one; to monitor no drift, set enabled: false",
    )
    block_size: int = Field(default=200, ge=10, description="records summarised into one detector input")
    detector: Literal["page_hinkley", "adwin", "bocpd"] = "page_hinkley"
    threshold: float = Field(
        default=8.0, gt=0, description="Page-Hinkley threshold, in reference standard deviations x blocks"
    )
    delta: float = Field(default=0.002, gt=0, lt=1, description="ADWIN confidence (detector: adwin)")
    warmup_blocks: int = Field(default=0, ge=0, description="blocks seen before any drift can be declared")
    min_shift: float = Field(
        default=0.5, ge=0, description="ignore changes smaller than this many reference standard deviations"
    )
    cooldown_s: float = Field(default=300.0, ge=0, description="minimum time between recalibration events")
    episode_timeout_s: float = Field(default=900.0, gt=0, description="a drift episode closes after this long")
    retrain_on: tuple[DriftTest, ...] = Field(
        default=("latent", "multivariate"), description="tests whose drift asks for a full retrain"
    )


class RetrainSpec(_Strict):
    """Reservoir of recent records in Redis and the gates a candidate model must pass."""

    buffer_size: int = Field(default=20_000, ge=100, description="recent records kept in Redis for retraining")
    sample_every: int = Field(
        default=1, ge=1, description="keep 1 in n in the reservoir: records, or entities (by a hash of the key) when "
        "the model reads consecutive records (window > 1 or seasonal_period), so their windows stay unbroken"
    )
    min_records: int = Field(default=3000, ge=100, description="post-drift records needed before training")
    holdout_fraction: float = Field(default=0.25, gt=0, lt=0.9, description="newest share kept for validation")
    max_alert_rate_factor: float = Field(
        default=3.0, gt=1, description="candidate may flag at most factor x fpr of held-out recent records ..."
    )
    baseline_factor: float = Field(
        default=1.5, gt=1, description="... or factor x the rate the healthy model flagged before the drift"
    )
    max_train_seconds: float = Field(default=300.0, gt=0)
    wait_timeout_s: float = Field(default=1800.0, gt=0, description="give up waiting for post-drift records")

    def holdout_size(self, n: int) -> int:
        """Of ``n`` recent records, how many the trainer keeps (the newest) to validate a candidate on."""
        return max(50, int(n * self.holdout_fraction))

    @model_validator(mode="after")
    def _enough_to_train(self) -> RetrainSpec:
        # the trainer trains on what the hold-out leaves, and a model needs 100 rows
        fit = self.min_records - self.holdout_size(self.min_records)
        if fit < 100:
            raise ValueError(
                f"retrain.min_records {self.min_records} with holdout_fraction {self.holdout_fraction} leaves {fit} "
                "records to train on; a model needs at least 100: raise min_records or lower holdout_fraction"
            )
        if self.buffer_size < self.min_records:  # the reservoir could never hold what a retrain waits for
            raise ValueError(f"retrain.buffer_size {self.buffer_size} < min_records {self.min_records}: every "
                             "retrain would wait wait_timeout_s and be refused; raise buffer_size")
        return self

    @property
    def threshold_records(self) -> int:
        """Post-drift records a threshold recalibration (no retraining) waits for."""
        return max(500, self.min_records // 4)


class GuardSpec(_Strict):
    """After a swap: roll back automatically if the new version alerts far beyond its budget."""

    enabled: bool = True
    records: int = Field(default=3000, ge=100, description="records watched after a swap")
    max_alert_rate_factor: float = Field(default=5.0, gt=1, description="roll back above factor x fpr ...")
    baseline_factor: float = Field(default=2.0, gt=1, description="... and above factor x the pre-drift flag rate")
    min_alerts: int = Field(default=10, ge=1, description="never roll back on fewer alerts than this")


class ControlSpec(_Strict):
    """Control topics shared by workers and the trainer."""

    recalibrate_topic: str = "control.recalibrate"
    model_topic: str = "control.model"


class AlertSpec(_Strict):
    """Where alerts go and what they carry."""

    anomaly_topic: str = "alerts.anomaly"
    drift_topic: str = "alerts.drift"
    dlq_topic: str = "stream-vae.dlq"
    top_features: int = Field(default=3, ge=1, le=50)
    redact: tuple[str, ...] = ()
    # Severity from the p-value, relative to the FPR budget: p <= fpr*high -> high, p <= fpr*critical -> critical.
    severity_high: float = Field(default=0.1, gt=0, le=1)
    severity_critical: float = Field(default=0.01, gt=0, le=1)
    cooldown_s: float = Field(default=60.0, ge=0, description="at most one anomaly alert per key in this time")
    group: AlertGrouping = Field(
        default="record", description="record: every flagged record alerts; incident: a run of consecutive flagged "
        "records of a key alerts once when it opens and again when it escalates (a feature beyond the key's range "
        "so far, calibration.range_tolerance); every alert names its incident",
    )
    incident_idle_s: float = Field(
        default=3600.0, ge=0, description="with group: incident, an open incident whose key sends no record for "
        "this long is resolved (reason idle); set it above the key's slowest sending interval (0 = never)",
    )
    during_drift: DuringDrift = Field(
        default="suppress_medium", description="while a drift episode is open: mark alerts, or drop lower ones"
    )
    audit_topic: str | None = Field(
        default=None, description="if set, one message per batch: scored offset ranges and model version"
    )

    @model_validator(mode="after")
    def _severity_order(self) -> AlertSpec:
        if self.severity_critical >= self.severity_high:
            raise ValueError(f"severity_critical ({self.severity_critical}) must be below severity_high "
                             f"({self.severity_high}): a smaller p-value is the more severe")
        return self


class Topology(_Strict):
    """One monitored stream."""

    name: str
    description: str = ""
    input_topic: str
    key_field: str | None = None
    timestamp_field: str | None = None
    features: tuple[Feature, ...] = Field(min_length=1)
    window: int = Field(default=1, ge=1, le=256, description="records per entity fed to the model at once")
    model: ModelSpec = Field(default_factory=ModelSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    alerts: AlertSpec = Field(default_factory=AlertSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)
    guard: GuardSpec = Field(default_factory=GuardSpec)
    control: ControlSpec = Field(default_factory=ControlSpec)
    max_record_bytes: int = Field(default=65_536, ge=64)
    extra_fields: Literal["reject", "ignore"] = Field(
        default="reject",
        description="a field the topology does not name: reject (dead-letter the record as unknown_field, so a "
                    "renamed or misspelled feature is seen at once) or ignore (events that carry metadata)",
    )
    partitions: int = Field(default=4, ge=1, le=1024, description="partitions to create for the input topic")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be lower-case letters, digits, '_', '.', '-' (at most 63 characters)")
        return v

    @model_validator(mode="after")
    def _unique(self) -> Topology:
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate feature names: {sorted(dup)}")
        reserved = {self.key_field, self.timestamp_field} & set(names)
        if reserved:
            raise ValueError(f"key/timestamp field also listed as a feature: {sorted(x for x in reserved if x)}")
        return self

    @model_validator(mode="after")
    def _fields_and_topics(self) -> Topology:
        names = set(self.feature_names)
        unknown = [r for r in self.alerts.redact if r not in names and r != self.key_field]
        if unknown:  # a typo would leave the value it meant to hide in every alert
            raise ValueError(f"alerts.redact names no feature: {unknown} (features: {sorted(names)[:10]})")
        if self.key_field in self.alerts.redact:  # accepted before it was checked: warn, do not stop a deploy
            log.warning("redact_key_field_ignored", stream=self.name, key_field=self.key_field,
                        why="the key is the alert's identity (its Kafka key and 'key' field); only features are hidden")
        d, r = self.drift, self.retrain
        if d.enabled and set(d.tests) - set(d.retrain_on) and r.buffer_size < r.threshold_records:
            raise ValueError(f"retrain.buffer_size {r.buffer_size} < {r.threshold_records}, the records a threshold "
                             "recalibration waits for (drift in a test not in drift.retrain_on asks for one): every "
                             "one would be refused; raise buffer_size")
        if self.key_field is not None and self.key_field == self.timestamp_field:
            raise ValueError(f"key_field and timestamp_field are both '{self.key_field}'")
        a, c = self.alerts, self.control
        outputs = (("alerts.dlq_topic", a.dlq_topic), ("alerts.anomaly_topic", a.anomaly_topic),
                   ("alerts.drift_topic", a.drift_topic), ("alerts.audit_topic", a.audit_topic))
        topics = (("input_topic", self.input_topic), *outputs, ("control.recalibrate_topic", c.recalibrate_topic),
                  ("control.model_topic", c.model_topic))
        for name, topic in topics:  # Kafka refuses another name only when the worker first writes to it
            if topic is not None and not _TOPIC.match(topic):
                raise ValueError(f"{name} {topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-'; "
                                 "at most 249)")
        loops = [n for n, t in outputs if t == self.input_topic]
        if loops:  # the worker would read what it writes: dead letters rejected again, without end
            raise ValueError(f"{', '.join(loops)} is the input_topic '{self.input_topic}'")
        return self

    @model_validator(mode="after")
    def _longest_member_fits(self) -> Topology:
        longest = max(self.model.member_windows, default=0)
        if longest > self.window:
            raise ValueError(
                f"window is {self.window} but model.member_windows asks for {longest} records: set window to "
                f"at least {longest} (the windower keeps the longest member's window)"
            )
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def member_windows(self) -> tuple[int, ...]:
        """Records each ensemble member sees (the last ones of the entity's window)."""
        return self.model.member_windows or (self.window,) * self.model.ensemble

    @property
    def consecutive(self) -> bool:
        """Whether the model reads consecutive records of an entity (a window, or seasonal differences)."""
        return self.window > 1 or self.model.seasonal_period != 0

    @property
    def consumer_group(self) -> str:
        return f"stream-vae.{self.name}"


def parse_topology(data: object, *, source: str = "<dict>") -> Topology:
    """Validate an already-parsed YAML mapping; errors name ``source`` and the field path."""
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise TopologyError(f"{source}: field '{loc}': {first['msg']}{more}") from None


def load_topology(path: str | Path) -> Topology:
    """Load and validate one topology file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TopologyError(f"{p}: no such topology file") from None
    except UnicodeDecodeError as exc:
        raise TopologyError(f"{p}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{p}: not valid YAML: {exc}") from None
    return parse_topology(data, source=str(p))


def topology_files(directory: str | Path) -> list[Path]:
    """The ``*.yaml``/``*.yml`` files in ``directory``, sorted (none if it is not a directory)."""
    d = Path(directory)
    return sorted([*d.glob("*.yaml"), *d.glob("*.yml")]) if d.is_dir() else []


def load_all(directory: str | Path) -> dict[str, Topology]:
    """Load every ``*.yaml``/``*.yml`` in ``directory``; stream names must be unique."""
    d = Path(directory)
    if not d.is_dir():
        raise TopologyError(f"{d}: topology directory not found")
    out: dict[str, Topology] = {}
    files: dict[str, Path] = {}
    for p in topology_files(d):
        t = load_topology(p)
        if t.name in out:
            raise TopologyError(f"{p}: stream name '{t.name}' is already used by {files[t.name]}")
        out[t.name], files[t.name] = t, p
    return out
