"""Reading training/replay files (CSV with a header, or .npy) into rows for a topology."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stream_vae.exceptions import ConfigError
from stream_vae.records import FloatArray
from stream_vae.topology import Feature, Topology


def read_rows(
    path: str | Path, topology: Topology, *, note: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Rows as dicts with the topology's field names. CSV needs a header naming every feature;
    ``.npy`` is a float array ``[N, D]`` in feature order. Without a key column every row belongs to
    entity ``"0"`` (a worker sends a record without its key field to the dead-letter topic)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: input file not found")
    if not p.is_file():
        raise ConfigError(f"{p}: not a file")
    try:
        rows = _read(p, topology)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason}): save the file as UTF-8") from None
    except ValueError as e:  # numpy: an object array, a truncated or foreign .npy file
        raise ConfigError(f"{p}: {e}") from None
    if not rows:
        raise ConfigError(f"{p}: no data rows")
    if note and topology.key_field and rows[0].get(topology.key_field) == "0" and all(
            r.get(topology.key_field) == "0" for r in rows):
        note(f"{p} has no '{topology.key_field}' column (or it is \"0\" throughout): all {len(rows)} rows are "
             f"one entity, \"0\"")
    return rows


def _read(p: Path, topology: Topology) -> list[dict[str, Any]]:
    names = topology.feature_names
    if p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise ConfigError(f"{p}: array shape {arr.shape}, topology '{topology.name}' needs [N, {len(names)}]")
        rows: list[dict[str, Any]] = []
        for i, x in enumerate(arr.tolist()):
            r: dict[str, Any] = {f.name: _typed(f, v, where=f"{p}: row {i}")
                                 for f, v in zip(topology.features, x, strict=True)}
            if topology.key_field:
                r[topology.key_field] = "0"
            if topology.timestamp_field:
                r[topology.timestamp_field] = i
            rows.append(r)
        return rows
    with p.open(newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's byte-order mark is not a name
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [n for n in names if n not in header]
        if missing:
            raise ConfigError(f"{p}: CSV header lacks feature columns {missing} (has {header[:12]})")
        keep = [f for f in (topology.key_field, topology.timestamp_field) if f and f in header]
        out = []
        for line, r in enumerate(reader, start=2):
            row: dict[str, Any] = {}
            for feat in topology.features:
                row[feat.name] = _typed(feat, r[feat.name], where=f"{p}:{line}")
            for f in keep:
                v: Any = r[f]
                if f == topology.timestamp_field and isinstance(v, str) and v.lstrip("-").isdigit():
                    v = int(v)
                row[f] = v
            if topology.key_field and topology.key_field not in keep:
                row[topology.key_field] = "0"
            out.append(row)
        return out


_BOOLS = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}


def _typed(feature: Feature, value: Any, *, where: str) -> float | int | bool:
    """A cell as the JSON value a record of this feature carries: a worker dead-letters a bool feature
    sent as 0.0, so a training file replayed with ``produce`` must send true/false (and ints as ints)."""
    n = feature.name
    if feature.type == "bool":
        b = _BOOLS.get(str(value).strip().lower()) if not isinstance(value, bool) else value
        if b is None:
            raise ConfigError(f"{where}: column '{n}' is a bool feature: expected true/false or 1/0, got {value!r}")
        return b
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: column '{n}' is not a number: {value!r}") from None
    if feature.type == "int" and math.isfinite(x):
        if not x.is_integer():
            raise ConfigError(f"{where}: column '{n}' is an int feature, got {value!r}")
        return int(x)
    return x


def rows_to_matrix(
    rows: list[dict[str, Any]], topology: Topology, *, note: Callable[[str], None] | None = None
) -> tuple[FloatArray, list[str] | None]:
    X = np.asarray([[r[n] for n in topology.feature_names] for r in rows], dtype=np.float64)
    finite = np.asarray(np.isfinite(X).all(axis=1), dtype=bool)
    if not finite.all():
        bad = int((~finite).sum())
        if bad > len(X) * 0.05:
            raise ConfigError(f"{bad} of {len(X)} training rows have non-finite values; clean the file first")
        if note:
            note(f"{bad} of {len(X)} rows have NaN or infinite values and are left out")
        X = X[finite]
        rows = [r for r, ok in zip(rows, finite, strict=True) if ok]
    ents = [str(r.get(topology.key_field, "")) for r in rows] if topology.key_field else None
    return X, ents


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        raise ConfigError(f"{path}: no rows to write")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
