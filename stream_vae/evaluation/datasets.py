"""Loaders for the offline benchmark data: SMD / ASD entities, the NAB corpus and TCPD series.

Each loader takes the dataset's own folder (``shared/data/smd``, ``shared/data/asd``,
``shared/data/nab``, ``shared/data/drift/tcpd``) and returns small frozen dataclasses of numpy
arrays. Arrays are read with ``np.load(path, allow_pickle=False)``; nothing is downloaded or
written. A folder without the expected layout raises :class:`DatasetLayoutError` (a
``FileNotFoundError``) whose message spells the layout out.

Conventions
-----------
* SMD and ASD interpretation labels are converted to half-open 0-based row ranges
  ``[start, end)`` and 0-based dimension indices. The files differ: SMD writes ``end`` exclusive,
  ASD writes it inclusive (``760-765`` covers rows 760..765 in ``test_label/omi-1.txt``), and both
  write 1-based dimensions. The loader detects the end convention per file from the test labels
  (``interpretation_end="auto"``).
* NAB timestamps are ``datetime64[s]``; windows are inclusive ``(first, last)`` pairs of the same
  type, ready for :func:`stream_vae.evaluation.metrics.nab_raw_score`.
* TCPD values are float64 ``[n_obs, n_dim]`` with NaN where the JSON has ``null``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from stream_vae.evaluation.metrics import NabProfile, nab_window_indices
from stream_vae.exceptions import StreamVAEError

__all__ = [
    "DatasetLayoutError",
    "Entity",
    "NabSeries",
    "TcpdSeries",
    "list_entities",
    "load_nab",
    "load_nab_profiles",
    "load_smd_like",
    "load_tcpd",
    "parse_interpretation_label",
]

SMD_LAYOUT = (
    "<dir>/train/<entity>.npy and <dir>/test/<entity>.npy (float [T, D]), "
    "<dir>/test_label/<entity>.txt (one 0/1 per test row), optional "
    "<dir>/interpretation_label/<entity>.txt ('start-end:d1,d2,...', 1-based dims) and "
    "<dir>/anomaly_type.csv (dataset,anomaly_segment,anomaly_type)"
)
NAB_LAYOUT = (
    "<dir>/data/<category>/<file>.csv (timestamp,value) and <dir>/labels/combined_windows.json "
    "({'<category>/<file>.csv': [[first, last], ...]})"
)
TCPD_LAYOUT = "<dir>/annotations.json ({series: {annotator: [0-based indices]}}) and <dir>/datasets/<name>/<name>.json"

InterpretationEnd = Literal["auto", "exclusive", "inclusive"]


class DatasetLayoutError(StreamVAEError, FileNotFoundError):
    """A data folder or file is missing; the message names the expected layout."""


def _require(path: Path, layout: str) -> Path:
    if not path.exists():
        raise DatasetLayoutError(f"{path} not found; expected layout: {layout}")
    return path


def _natural_key(name: str) -> list[int | str]:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------------------------
# SMD / ASD
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    """One SMD machine or ASD service: train/test arrays, test labels, interpretation labels.

    Attributes
    ----------
    name : str
        Entity name, e.g. ``"machine-1-6"`` or ``"omi-1"``.
    train, test : numpy.ndarray of float32, shape (T, D)
        Training and test series (already min-max scaled by the dataset authors).
    label : numpy.ndarray of int64, shape (T_test,)
        0/1 per test row.
    interpretation : list of (start, end, dims)
        Half-open test-row ranges ``[start, end)`` with 0-based dimension indices.
    anomaly_types : list of (start, end, type) or None
        Per-segment anomaly type (ASD: ``metric``, ``temporal``, ``metric-temporal``), same row
        convention; None when the dataset has no ``anomaly_type.csv`` entry for the entity.
    """

    name: str
    train: NDArray[np.float32]
    test: NDArray[np.float32]
    label: NDArray[np.int64]
    interpretation: list[tuple[int, int, list[int]]] = field(default_factory=list)
    anomaly_types: list[tuple[int, int, str]] | None = None

    @property
    def n_dims(self) -> int:
        """Number of metrics D."""
        return int(self.train.shape[1])


def list_entities(data_dir: str | Path) -> list[str]:
    """Names of the entities of an SMD-like folder (files in ``test/``), in natural order.

    Natural order sorts the numbers in names numerically: ``omi-2`` comes before ``omi-10``.

    Raises
    ------
    DatasetLayoutError
        ``test/`` is missing or holds no ``.npy`` file.
    """
    test_dir = _require(Path(data_dir) / "test", SMD_LAYOUT)
    names = [p.stem for p in test_dir.glob("*.npy")]
    if not names:
        raise DatasetLayoutError(f"no .npy file in {test_dir}; expected layout: {SMD_LAYOUT}")
    return sorted(names, key=_natural_key)


def parse_interpretation_label(text: str) -> list[tuple[int, int, list[int]]]:
    """Parse ``start-end:d1,d2,...`` lines as written, turning the 1-based dims 0-based.

    ``start`` and ``end`` are returned exactly as in the file (their convention differs between
    SMD and ASD; :func:`load_smd_like` resolves it). Blank lines are skipped.

    Examples
    --------
    >>> parse_interpretation_label("15-20:1,3\\n40-41:2\\n")
    [(15, 20, [0, 2]), (40, 41, [1])]
    """
    out: list[tuple[int, int, list[int]]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)\s*:\s*(\d+(?:\s*,\s*\d+)*)", line)
        if match is None:
            raise ValueError(f"line {lineno}: {line!r} is not 'start-end:d1,d2,...'")
        dims = [int(d) - 1 for d in match.group(3).split(",")]
        if min(dims) < 0:
            raise ValueError(f"line {lineno}: dimensions are 1-based, got 0")
        out.append((int(match.group(1)), int(match.group(2)), dims))
    return out


def _parse_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not 'start-end'")
    return int(match.group(1)), int(match.group(2))


def _matches(label: NDArray[np.int64], start: int, stop: int) -> bool:
    """True if ``[start, stop)`` is exactly one maximal run of 1s in ``label``."""
    n = label.shape[0]
    if not 0 <= start < stop <= n:
        return False
    inside = bool(label[start:stop].all())
    left_ok = start == 0 or label[start - 1] == 0
    right_ok = stop == n or label[stop] == 0
    return inside and left_ok and right_ok


def _resolve_end(
    ranges: Sequence[tuple[int, int]], label: NDArray[np.int64], mode: InterpretationEnd, where: str
) -> int:
    """Return 0 (end exclusive) or 1 (end inclusive) for the ranges of one file."""
    if mode == "exclusive":
        return 0
    if mode == "inclusive":
        return 1
    if mode != "auto":
        raise ValueError(f"interpretation_end must be 'auto', 'exclusive' or 'inclusive', got {mode!r}")
    if not ranges:
        return 0
    excl = sum(_matches(label, s, e) for s, e in ranges)
    incl = sum(_matches(label, s, e + 1) for s, e in ranges)
    offset = 1 if incl > excl else 0
    best = max(excl, incl)
    if best < len(ranges):
        warnings.warn(
            f"{where}: {len(ranges) - best} of {len(ranges)} labelled ranges do not match a "
            f"segment of test_label under either end convention; using end "
            f"{'inclusive' if offset else 'exclusive'}",
            stacklevel=3,
        )
    return offset


def _load_array(path: Path) -> NDArray[np.float32]:
    arr = np.load(_require(path, SMD_LAYOUT), allow_pickle=False)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D [T, D] array, got shape {arr.shape}")
    return np.asarray(arr, dtype=np.float32)


def _load_label(path: Path) -> NDArray[np.int64]:
    values = np.loadtxt(_require(path, SMD_LAYOUT), dtype=np.float64, ndmin=1)
    if values.ndim != 1 or not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(f"{path}: expected one 0/1 value per line")
    return values.astype(np.int64)


def _anomaly_types(path: Path, entity: str) -> list[tuple[int, int, str]] | None:
    if not path.exists():
        return None
    rows: list[tuple[int, int, str]] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"dataset", "anomaly_segment", "anomaly_type"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            if row["dataset"].strip() == entity:
                start, end = _parse_range(row["anomaly_segment"])
                rows.append((start, end, row["anomaly_type"].strip()))
    return rows or None


def load_smd_like(
    data_dir: str | Path,
    entity: str,
    *,
    interpretation_end: InterpretationEnd = "auto",
) -> Entity:
    """Load one entity of an SMD-layout folder (SMD machines, ASD services).

    Parameters
    ----------
    data_dir : str or Path
        The dataset folder, e.g. ``shared/data/smd`` or ``shared/data/asd``.
    entity : str
        Entity name, e.g. ``"machine-1-6"`` (see :func:`list_entities`).
    interpretation_end : {"auto", "exclusive", "inclusive"}
        How to read ``end`` in ``start-end`` ranges. ``"auto"`` picks, per file, the convention
        under which more ranges are exactly a run of 1s in ``test_label`` (SMD: exclusive, ASD:
        inclusive) and warns if some ranges fit neither.

    Returns
    -------
    Entity
        Arrays and labels; interpretation and anomaly-type ranges as half-open ``[start, end)``.

    Raises
    ------
    DatasetLayoutError
        A required file is missing.
    ValueError
        Shapes or label values are inconsistent.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a directory; expected layout: {SMD_LAYOUT}")
    train = _load_array(root / "train" / f"{entity}.npy")
    test = _load_array(root / "test" / f"{entity}.npy")
    label = _load_label(root / "test_label" / f"{entity}.txt")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"{entity}: train has {train.shape[1]} columns, test has {test.shape[1]}")
    if label.shape[0] != test.shape[0]:
        raise ValueError(f"{entity}: test_label has {label.shape[0]} rows, test has {test.shape[0]}")

    interp_path = root / "interpretation_label" / f"{entity}.txt"
    raw_interp = parse_interpretation_label(interp_path.read_text()) if interp_path.exists() else []
    if not interp_path.exists() and interp_path.parent.is_dir():  # the other entities have one: say so
        warnings.warn(f"{interp_path} is missing: {entity} has no HitRate (left out of its mean)", stacklevel=2)
    raw_types = _anomaly_types(root / "anomaly_type.csv", entity)
    ranges = [(s, e) for s, e, _ in raw_interp] or [(s, e) for s, e, _ in raw_types or []]
    offset = _resolve_end(ranges, label, interpretation_end, f"{root.name}/{entity}")

    n_dims = train.shape[1]
    interpretation: list[tuple[int, int, list[int]]] = []
    for start, end, dims in raw_interp:
        if max(dims) >= n_dims:
            raise ValueError(f"{interp_path}: dimension {max(dims) + 1} > D={n_dims}")
        interpretation.append((start, end + offset, dims))
    types = None if raw_types is None else [(s, e + offset, t) for s, e, t in raw_types]
    return Entity(entity, train, test, label, interpretation, types)


# --------------------------------------------------------------------------------------------
# NAB
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NabSeries:
    """One NAB data file.

    Attributes
    ----------
    name : str
        ``"<category>/<file>.csv"``, the key used by NAB's label and result files.
    timestamps : numpy.ndarray of datetime64[s], shape (T,)
        Row times, non-decreasing (six NAB files repeat a timestamp, e.g. at a DST change).
    values : numpy.ndarray of float64, shape (T,)
        The metric.
    windows : list of (datetime64, datetime64)
        Inclusive anomaly windows ``(first, last)``.
    """

    name: str
    timestamps: NDArray[np.datetime64]
    values: NDArray[np.float64]
    windows: list[tuple[np.datetime64, np.datetime64]]

    @property
    def category(self) -> str:
        """The corpus category, e.g. ``"realTweets"``."""
        return self.name.split("/", 1)[0]

    @property
    def window_indices(self) -> list[tuple[int, int]]:
        """The windows as inclusive row ranges ``(first_row, last_row)``."""
        return nab_window_indices(self.timestamps, self.windows)


def _to_datetime(text: str) -> np.datetime64:
    return np.datetime64(text.strip().replace(" ", "T"), "s")


def _read_nab_csv(path: Path) -> tuple[NDArray[np.datetime64], NDArray[np.float64]]:
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
            raise ValueError(f"{path}: expected a 'timestamp,value' header, got {header!r}")
        stamps: list[str] = []
        values: list[float] = []
        for line, row in enumerate(reader, start=2):
            if row:
                if len(row) < 2:
                    raise ValueError(f"{path}:{line}: expected 'timestamp,value', got {row!r:.60}")
                stamps.append(row[0].strip().replace(" ", "T"))
                try:
                    values.append(float(row[1]))
                except ValueError:
                    raise ValueError(f"{path}:{line}: value {row[1]!r:.40} is not a number") from None
    ts = np.array(stamps, dtype="datetime64[s]")
    if ts.size > 1 and not (ts[1:] >= ts[:-1]).all():
        raise ValueError(f"{path}: timestamps are not sorted")
    return ts, np.asarray(values, dtype=np.float64)


def load_nab(data_dir: str | Path) -> list[NabSeries]:
    """Load every series of an NAB folder with its anomaly windows, sorted by name.

    Label entries without a data file (e.g. a held-out category) are ignored; a data file
    without a label entry is an error.

    Parameters
    ----------
    data_dir : str or Path
        The NAB folder (``shared/data/nab``).

    Returns
    -------
    list of NabSeries
    """
    root = Path(data_dir)
    data = _require(root / "data", NAB_LAYOUT)
    labels_path = _require(root / "labels" / "combined_windows.json", NAB_LAYOUT)
    windows: dict[str, list[list[str]]] = json.loads(labels_path.read_text())
    files = sorted(data.glob("*/*.csv"))
    if not files:
        raise DatasetLayoutError(f"no CSV under {data}; expected layout: {NAB_LAYOUT}")
    out: list[NabSeries] = []
    for path in files:
        name = f"{path.parent.name}/{path.name}"
        if name not in windows:
            raise ValueError(f"{labels_path} has no entry for {name}")
        ts, values = _read_nab_csv(path)
        wins = [(_to_datetime(a), _to_datetime(b)) for a, b in windows[name]]
        series = NabSeries(name, ts, values, wins)
        series.window_indices  # noqa: B018 - validates that every window holds rows and is ordered
        out.append(series)
    return out


def load_nab_profiles(data_dir: str | Path) -> dict[str, NabProfile]:
    """Read ``config/profiles.json`` of an NAB folder into :class:`NabProfile` objects."""
    path = _require(Path(data_dir) / "config" / "profiles.json", "<dir>/config/profiles.json")
    raw: dict[str, dict[str, dict[str, float]]] = json.loads(path.read_text())
    return {
        name: NabProfile(
            tp_weight=float(spec["CostMatrix"]["tpWeight"]),
            fp_weight=float(spec["CostMatrix"]["fpWeight"]),
            fn_weight=float(spec["CostMatrix"]["fnWeight"]),
            tn_weight=float(spec["CostMatrix"].get("tnWeight", 1.0)),
        )
        for name, spec in raw.items()
    }


# --------------------------------------------------------------------------------------------
# TCPD
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpdSeries:
    """One Turing Change Point Dataset series with its human annotations.

    Attributes
    ----------
    name : str
        Series name (``datasets/<name>/<name>.json``).
    values : numpy.ndarray of float64, shape (n_obs, n_dim)
        The series; NaN where the JSON holds ``null`` (missing observation).
    annotations : dict of str -> list of int
        Annotator id -> 0-based change-point indices (an empty list means "no change").
    n_obs : int
        Number of observations.
    labels : list of str
        Variable names, one per column.
    """

    name: str
    values: NDArray[np.float64]
    annotations: dict[str, list[int]]
    n_obs: int
    labels: list[str] = field(default_factory=list)

    @property
    def n_dim(self) -> int:
        """Number of variables."""
        return int(self.values.shape[1])


def _tcpd_root(data_dir: Path) -> Path:
    for candidate in (data_dir, data_dir / "tcpd"):
        if (candidate / "annotations.json").exists() and (candidate / "datasets").is_dir():
            return candidate
    raise DatasetLayoutError(f"{data_dir} is not a TCPD folder; expected layout: {TCPD_LAYOUT}")


def _to_float(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: value {value!r} is not a number or null")
    return float(value)


def _parse_tcpd(doc: dict[str, Any], where: str) -> tuple[str, int, NDArray[np.float64], list[str]]:
    missing = {"name", "n_obs", "n_dim", "time", "series"} - set(doc)
    if missing:
        raise ValueError(f"{where}: missing keys {sorted(missing)} (see schema.json)")
    n_obs, n_dim = int(doc["n_obs"]), int(doc["n_dim"])
    series = doc["series"]
    if len(series) != n_dim:
        raise ValueError(f"{where}: n_dim={n_dim} but {len(series)} series")
    index = doc["time"].get("index")
    if index is not None and len(index) != n_obs:
        raise ValueError(f"{where}: n_obs={n_obs} but time.index has {len(index)} entries")
    values = np.empty((n_obs, n_dim), dtype=np.float64)
    labels: list[str] = []
    for j, var in enumerate(series):
        if not isinstance(var, dict) or not isinstance(var.get("raw"), list):
            raise ValueError(f"{where}: series {j} has no 'raw' list of values (see schema.json)")
        raw = var["raw"]
        if len(raw) != n_obs:
            raise ValueError(f"{where}: series {j} has {len(raw)} values, n_obs={n_obs}")
        values[:, j] = [_to_float(v, f"{where} series {j}") for v in raw]
        labels.append(str(var.get("label", f"V{j + 1}")))
    return str(doc["name"]), n_obs, values, labels


def load_tcpd(data_dir: str | Path, names: Iterable[str] | None = None) -> list[TcpdSeries]:
    """Load TCPD series (all, or ``names``) with their annotations, sorted by name.

    Parameters
    ----------
    data_dir : str or Path
        The TCPD folder (``shared/data/drift/tcpd``; its parent ``drift/`` is accepted too).
    names : iterable of str, optional
        Only these series.

    Returns
    -------
    list of TcpdSeries
        Multivariate series have ``n_dim > 1``; missing observations are NaN.
    """
    root = _tcpd_root(Path(data_dir))
    annotations: dict[str, dict[str, list[int]]] = json.loads((root / "annotations.json").read_text())
    wanted = None if names is None else set(names)
    paths = sorted((root / "datasets").glob("*/*.json"))
    lacking = sorted(d.name for d in (root / "datasets").iterdir()
                     if d.is_dir() and not (d / f"{d.name}.json").exists() and (wanted is None or d.name in wanted))
    if lacking:  # a series left out without a word would change the means
        raise DatasetLayoutError(f"series folders without their <name>.json under {root / 'datasets'}: {lacking[:10]}")
    out: list[TcpdSeries] = []
    for path in paths:
        if path.stem != path.parent.name or (wanted is not None and path.stem not in wanted):
            continue
        name, n_obs, values, labels = _parse_tcpd(json.loads(path.read_text()), str(path))
        if name not in annotations:
            raise ValueError(f"{root / 'annotations.json'} has no entry for series {name!r}")
        ann = {str(user): [int(cp) for cp in cps] for user, cps in annotations[name].items()}
        for user, cps in ann.items():
            bad = [cp for cp in cps if not 0 <= cp < n_obs]
            if bad:
                raise ValueError(f"{name}: annotator {user} has change points {bad} outside [0, {n_obs})")
        out.append(TcpdSeries(name, values, ann, n_obs, labels))
    if wanted is not None and (absent := wanted - {s.name for s in out}):
        raise DatasetLayoutError(f"series {sorted(absent)} not found under {root / 'datasets'}")
    if not out:
        raise DatasetLayoutError(f"no series under {root / 'datasets'}; expected layout: {TCPD_LAYOUT}")
    return out
