"""The walk-forward configuration of the ML assets, from the settings (see README for the variables)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, EnvVar

from kairos_dagster.ml.walk_forward import WalkForwardConfig, default_anchor
from kairos_dagster.settings import Settings


class MLResource(ConfigurableResource):
    """Walk-forward configuration of the ML assets (from settings; see README for the variables)."""

    models_dir: str
    anchor: str  # ISO Monday of the walk-forward grid (KAIROS_ML_ANCHOR or KAIROS_START_DATE)
    retrain_weeks: int = 13
    retune_weeks: int = 52
    embargo_weeks: int = 1
    max_train_weeks: int = 0  # 0: expanding window since the anchor
    n_trials: int = 6
    n_folds: int = 3
    optuna_dir: str = ""  # "": <models_dir>/<model_name>/optuna
    optuna_url: str = ""  # a database URL: all studies in one database (parallel workers)
    device: str = "cpu"
    seed: int = 42
    n_threads: int = 2
    params_json: str = ""  # overrides of ml.train.DEFAULT_PARAMS (JSON object), e.g. for tests

    @property
    def anchor_date(self) -> dt.date:
        return dt.date.fromisoformat(self.anchor)

    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json) if self.params_json else {}

    def schedule_kwargs(self) -> dict[str, Any]:
        return {"anchor": self.anchor_date, "retrain_weeks": self.retrain_weeks,
                "retune_weeks": self.retune_weeks, "embargo_weeks": self.embargo_weeks,
                "max_train_weeks": self.max_train_weeks or None}

    def walk_forward_config(self) -> WalkForwardConfig:
        """The resource as the core's configuration (the Optuna URL resolved from its EnvVar at run time)."""
        return WalkForwardConfig(
            models_dir=self.models_dir, anchor=self.anchor_date, retrain_weeks=self.retrain_weeks,
            retune_weeks=self.retune_weeks, embargo_weeks=self.embargo_weeks, max_train_weeks=self.max_train_weeks,
            n_trials=self.n_trials, n_folds=self.n_folds, optuna_dir=self.optuna_dir, optuna_url=self.optuna_url,
            device=self.device, seed=self.seed, n_threads=self.n_threads, params=self.params())

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> MLResource:
        kw: dict[str, Any] = dict(
            models_dir=str(settings.models_dir), anchor=default_anchor(settings).isoformat(),
            retrain_weeks=settings.ml_retrain_weeks, retune_weeks=settings.ml_retune_weeks,
            n_trials=settings.ml_trials, device=settings.xgb_device,
            optuna_dir=str(settings.optuna_storage) if isinstance(settings.optuna_storage, Path) else "",
            # a database URL may carry a password: resolve it from the environment at run time (EnvVar),
            # so the UI and the run config show the variable's name, never its value
            optuna_url=EnvVar("KAIROS_OPTUNA_STORAGE") if isinstance(settings.optuna_storage, str) else "",
        )
        return cls(**{**kw, **overrides})
