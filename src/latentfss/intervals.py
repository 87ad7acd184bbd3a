"""Paired differences between results-table rows with bootstrap confidence intervals.

Every row of a table is evaluated on the same episode lists, so two rows differ on the same
episodes: their difference is paired. A row's value is the mean over folds of the mean over
training seeds and test seeds (lists) of the class-wise mIoU of a list, which sums each class's
intersection and union over the list's episodes (`metrics.IoUMeter`). The interval resamples
the episodes within each fold and list, and, where a fold has several training seeds, its
training seeds, all independently (`scipy.stats.bootstrap`, one sample per stratum); a resample
draws the same episodes and seeds for every row, and the statistic is each row's value minus
the baseline row's.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = ["run", "fold", "train_seed", "list", "episode", "class_id", "inter", "union"]


class _Stratum:
    """One fold's list: each episode's class one-hot times its intersection and its union, for
    every (run, training seed), as (episodes, runs * seeds * classes) matrices."""

    def __init__(self, name: str, group: pd.DataFrame, runs: list, seeds: list) -> None:
        columns = pd.MultiIndex.from_product([runs, seeds], names=["run", "train_seed"])
        wide = group.pivot(
            index="episode", columns=["run", "train_seed"], values=["class_id", "inter", "union"]
        )
        classes, inter, union = (
            wide[value].reindex(columns=columns) for value in ("class_id", "inter", "union")
        )
        if inter.isna().any().any():
            raise ValueError(f"{name}: not every run and training seed scored every episode")
        if (classes.nunique(axis=1) > 1).any():
            raise ValueError(f"{name}: runs that scored other episodes (not paired)")
        onehot = pd.get_dummies(classes.iloc[:, 0]).to_numpy(float)  # (E, C)
        self.shape = (len(runs), len(seeds), onehot.shape[1])
        self.episodes = len(onehot)
        self.inter, self.union = (
            (m.to_numpy(float)[:, :, None] * onehot[:, None]).reshape(self.episodes, -1)
            for m in (inter, union)
        )

    def miou(self, draws: np.ndarray) -> np.ndarray:
        """draws (B, n) episode indices -> (B, runs, seeds) mIoU of those episodes."""
        batch = len(draws)
        offsets = draws + self.episodes * np.arange(batch)[:, None]
        counts = np.bincount(offsets.ravel(), minlength=batch * self.episodes)
        counts = counts.reshape(batch, self.episodes).astype(float)
        inter, union = (counts @ m for m in (self.inter, self.union))
        with np.errstate(invalid="ignore"):  # a class no drawn episode holds: nan, left out
            iou = (inter / union).reshape(batch, *self.shape)
        return np.nanmean(iou, axis=-1)


def paired_differences(
    scores: pd.DataFrame,
    baseline: Hashable,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """scores: one row per (run, fold, training seed, list, episode) with COLUMNS -> one row
    per run (index): `value` (its mIoU, mean over folds, training seeds and lists) and `diff`,
    `low`, `high`, the difference to `baseline`'s value and its interval, in IoU units.

    ValueError when the runs were not scored on the same episodes (nothing to pair), or a run
    lacks a fold or training seed another run has."""
    runs = list(dict.fromkeys(scores["run"]))
    seeds = sorted(scores["train_seed"].unique())
    strata = [
        (fold, _Stratum(f"fold {fold}, {name}", group, runs, seeds))
        for (fold, name), group in scores.groupby(["fold", "list"])
    ]
    if min(s.episodes for _, s in strata) < 2:
        raise ValueError("a list of fewer than 2 episodes: nothing to resample")
    folds = sorted({fold for fold, _ in strata})
    weights = [1 / (len(folds) * sum(f == fold for f, _ in strata)) for fold, _ in strata]
    base = runs.index(baseline)
    resample_seeds = len(seeds) > 1

    def values(*draws, axis=-1):
        """(runs, ...) each run's value minus the baseline's, for draws (..., n): one per
        stratum, then (with several training seeds) one per fold."""
        lead = draws[0].shape[:-1]
        flat = [d.reshape(-1, d.shape[-1]) for d in draws]
        total = 0.0
        for (fold, stratum), weight, episodes in zip(
            strata, weights, flat[: len(strata)], strict=True
        ):
            miou = stratum.miou(episodes)  # (B, runs, seeds)
            if resample_seeds:
                picked = flat[len(strata) + folds.index(fold)][:, None, :]
                miou = np.take_along_axis(miou, np.broadcast_to(picked, miou.shape), axis=2)
            total = total + weight * miou.mean(axis=2)
        return np.moveaxis(total - total[:, [base]], -1, 0).reshape(len(runs), *lead)

    samples = [np.arange(s.episodes) for _, s in strata]
    samples += [np.arange(len(seeds))] * len(folds) if resample_seeds else []
    observed = values(*samples)
    result = stats.bootstrap(
        samples,
        values,
        paired=False,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        batch=200,
        random_state=np.random.default_rng(seed),
    )
    table = pd.DataFrame(
        {
            "diff": observed,
            "low": result.confidence_interval.low,
            "high": result.confidence_interval.high,
        },
        index=pd.Index(runs, name="run"),
    )
    plain = [s.miou(np.arange(s.episodes)[None])[0].mean(axis=1) for _, s in strata]
    table.insert(0, "value", sum(w * v for w, v in zip(weights, plain, strict=True)))
    return table
