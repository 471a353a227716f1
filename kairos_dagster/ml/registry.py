"""File-system model registry: ``<models_dir>/<model_name>/<version>/{model.ubj, card.json}``.

The model is stored in XGBoost's own UBJSON format (``Booster.save_model``), never pickled; the card
holds everything needed to reload and audit it. Writes are atomic: the version is assembled in a
temporary sibling directory and renamed into place, so a reader never sees half a model and a crash
leaves only a ``.tmp-*`` directory. An existing version is reused, never overwritten (idempotent
backfills); two writers racing on one version both end up with the first one's files.
Tuned parameters live beside the models as ``<model_name>/tuning/<tune_version>.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import xgboost as xgb

from kairos_dagster.ml.train import TrainedModel

MODEL_FILE = "model.ubj"
CARD_FILE = "card.json"
REGISTRY_SCHEMA = {
    "model_name": pl.String,
    "model_version": pl.String,
    "train_start": pl.Date,
    "train_end": pl.Date,
    "label_end": pl.Date,
    "created_at": pl.Datetime("us", "UTC"),
    "params_json": pl.String,
    "metrics_json": pl.String,
    "artifact_path": pl.String,
}


class RegistryError(ValueError):
    """A missing or inconsistent registry entry."""


def _safe(part: str, what: str) -> str:
    if not part or part.startswith(".") or any(ch in part for ch in "/\\\0"):
        raise RegistryError(f"{what} {part!r} is not a valid directory name")
    return part


def version_dir(models_dir: Path | str, model_name: str, version: str) -> Path:
    return Path(models_dir) / _safe(model_name, "model_name") / _safe(version, "model version")


def has_model(models_dir: Path | str, model_name: str, version: str) -> bool:
    d = version_dir(models_dir, model_name, version)
    return (d / CARD_FILE).is_file() and (d / MODEL_FILE).is_file()


def _json_default(x: Any) -> Any:
    if isinstance(x, dt.date | dt.datetime):
        return x.isoformat()
    raise TypeError(f"not JSON serialisable: {x!r}")


def _atomic_dir(final: Path, write: Any) -> Path:
    """Run ``write(tmp_dir)`` then rename tmp_dir to ``final``; reuse ``final`` if it appeared first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write(tmp)
        try:
            os.rename(tmp, final)  # atomic on one file system; fails if final exists and is non-empty
        except OSError:
            if not final.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def save_model(model: TrainedModel, models_dir: Path | str, model_name: str, version: str, *,
               train_start: dt.date, train_end: dt.date, label_end: dt.date,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write the model and its card (atomic; an existing version is kept as is). Returns its dir."""
    final = version_dir(models_dir, model_name, version)
    if has_model(models_dir, model_name, version):
        return final
    card = {
        "model_name": model_name, "model_version": version,
        "train_start": train_start, "train_end": train_end, "label_end": label_end,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "features": list(model.features), "categories": model.categories, "label": model.label,
        "params": model.params, "seed": model.seed, "best_iteration": model.best_iteration,
        "xgboost_version": xgb.__version__,
        "rows": model.n_rows, "fit_rows": model.n_fit_rows, "valid_rows": model.n_valid_rows,
        "train_seconds": round(model.train_seconds, 3),
        "cv_metrics": model.valid_metrics, "feature_gain": model.feature_gain,
        **dict(extra or {}),
    }

    def write(tmp: Path) -> None:
        model.booster.save_model(str(tmp / MODEL_FILE))
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True, default=_json_default))

    return _atomic_dir(final, write)


def load_card(models_dir: Path | str, model_name: str, version: str) -> dict[str, Any]:
    d = version_dir(models_dir, model_name, version)
    if not (d / CARD_FILE).is_file():
        raise RegistryError(f"no model {model_name} version {version} under {models_dir}")
    return json.loads((d / CARD_FILE).read_text())


def load_model(models_dir: Path | str, model_name: str, version: str) -> TrainedModel:
    """Reload a saved model; predictions equal those of the model that was saved."""
    card = load_card(models_dir, model_name, version)
    booster = xgb.Booster()
    booster.load_model(str(version_dir(models_dir, model_name, version) / MODEL_FILE))
    return TrainedModel(
        booster=booster, features=tuple(card["features"]), categories=card["categories"],
        label=card["label"], params=card["params"], seed=card["seed"], best_iteration=card["best_iteration"],
        n_rows=card["rows"], n_fit_rows=card["fit_rows"], n_valid_rows=card["valid_rows"],
        train_seconds=card["train_seconds"], valid_metrics=card["cv_metrics"],
        feature_gain=[(f, g) for f, g in card["feature_gain"]],
    )


def registry_row(models_dir: Path | str, model_name: str, version: str) -> dict[str, Any]:
    """One row of DuckDB table ``ml_model_registry``, read back from the card."""
    card = load_card(models_dir, model_name, version)
    metrics = {"cv": card["cv_metrics"], "rows": card["rows"], "train_seconds": card["train_seconds"],
               "best_iteration": card["best_iteration"]}
    if "tune" in card:
        metrics["tune"] = card["tune"]
    return {
        "model_name": model_name, "model_version": version,
        "train_start": dt.date.fromisoformat(card["train_start"]),
        "train_end": dt.date.fromisoformat(card["train_end"]),
        "label_end": dt.date.fromisoformat(card["label_end"]),
        "created_at": dt.datetime.fromisoformat(card["created_at"]),
        "params_json": json.dumps(card["params"], sort_keys=True),
        "metrics_json": json.dumps(metrics, sort_keys=True),
        "artifact_path": str(version_dir(models_dir, model_name, version)),
    }


def registry_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=REGISTRY_SCHEMA)


def tuning_path(models_dir: Path | str, model_name: str, tune_version: str) -> Path:
    return Path(models_dir) / _safe(model_name, "model_name") / "tuning" / f"{_safe(tune_version, 'tune version')}.json"


def save_tuning(models_dir: Path | str, model_name: str, tune_version: str, record: Mapping[str, Any]) -> Path:
    """Store a tune result (best params + study summary) atomically; keep an existing one."""
    path = tuning_path(models_dir, model_name, tune_version)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(dict(record), indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, path)
    return path


def load_tuning(models_dir: Path | str, model_name: str, tune_version: str) -> dict[str, Any] | None:
    path = tuning_path(models_dir, model_name, tune_version)
    return json.loads(path.read_text()) if path.is_file() else None
