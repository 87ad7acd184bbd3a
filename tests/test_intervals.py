"""The paired bootstrap intervals of summarize, on constructed scores with known answers."""

import numpy as np
import pandas as pd
import pytest

from latentfss.intervals import COLUMNS, paired_differences
from latentfss.metrics import IoUMeter

RNG = np.random.default_rng(0)
FOLDS, LISTS, EPISODES = (0, 1), ("seed0", "seed1"), 30
CLASSES = {fold: RNG.integers(1, 6, size=(len(LISTS), EPISODES)) + 5 * fold for fold in FOLDS}
UNION = {fold: 10 * RNG.integers(1, 50, size=(len(LISTS), EPISODES)) for fold in FOLDS}


def scores(iou_of: dict, seeds=(0,)) -> pd.DataFrame:
    """Each run's episodes: the same classes and unions for all, intersection = union times
    iou_of[run](fold, seed, rng) (an array over (lists, episodes))."""
    rows = []
    for run, iou in iou_of.items():
        for fold in FOLDS:
            for seed in seeds:
                inter = np.rint(UNION[fold] * iou(fold, seed)).astype(int)
                for i, name in enumerate(LISTS):
                    for e in range(EPISODES):
                        c, u = CLASSES[fold][i, e], UNION[fold][i, e]
                        rows.append((run, fold, seed, name, e, c, inter[i, e], u))
    return pd.DataFrame(rows, columns=COLUMNS)


def noisy(fold, seed):
    return np.random.default_rng([fold, seed]).uniform(0.2, 0.8, size=(len(LISTS), EPISODES))


def test_two_identical_rows_differ_by_zero_with_an_interval_of_zero():
    table = paired_differences(scores({"base": noisy, "same": noisy}), "base")
    assert table.loc["same", ["diff", "low", "high"]].tolist() == [0, 0, 0]
    assert table.loc["base", ["diff", "low", "high"]].tolist() == [0, 0, 0]


def test_a_constant_shift_gives_that_shift_and_nothing_else():
    table = paired_differences(
        scores({"base": lambda f, s: np.full((2, EPISODES), 0.4), "up": lambda f, s: 0.5}),
        "base",
    )
    assert table.loc["up", ["diff", "low", "high"]].tolist() == pytest.approx([0.1] * 3)
    assert table.loc["up", "value"] == pytest.approx(0.5)


def test_the_value_is_the_mean_over_folds_and_lists_of_the_class_wise_miou():
    data = scores({"base": noisy})
    mious = []
    for (fold, _), group in data.groupby(["fold", "list"]):
        meter = IoUMeter(range(1 + 5 * fold, 6 + 5 * fold))
        for c, i, u in group[["class_id", "inter", "union"]].itertuples(index=False):
            meter.inter[c] += i
            meter.union[c] += u
        mious.append(meter.miou())
    assert paired_differences(data, "base").loc["base", "value"] == pytest.approx(np.mean(mious))


def test_noise_gives_an_interval_around_the_difference():
    def shifted(fold, seed):
        return noisy(fold, seed) + 0.05 + 0.1 * (noisy(fold + 7, seed) - 0.5)

    table = paired_differences(scores({"base": noisy, "up": shifted}), "base")
    low, diff, high = table.loc["up", ["low", "diff", "high"]]
    assert 0 < low < diff < high and high - low < 0.05
    assert diff == pytest.approx(0.05, abs=0.01)


def test_training_seeds_widen_the_interval_by_their_spread():
    def by_seed(fold, seed):
        return noisy(fold, 0) + 0.1 * seed  # each seed's model is 0, 0.1 or 0.2 better

    def base(fold, seed):
        return noisy(fold, 0)

    table = paired_differences(scores({"base": base, "up": by_seed}, seeds=(0, 1, 2)), "base")
    low, diff, high = table.loc["up", ["low", "diff", "high"]]
    assert diff == pytest.approx(0.1, abs=0.002)
    assert -0.002 < low < 0.07 and 0.13 < high < 0.202  # within the seeds' own range


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d.drop(index=5), "not every run and training seed scored every episode"),
        (lambda d: d.assign(class_id=d["class_id"].where(d.index != 70, 99)), "other episodes"),
    ],
)
def test_runs_not_scored_on_the_same_episodes_are_refused(damage, message):
    data = scores({"base": noisy, "other": noisy})
    with pytest.raises(ValueError, match=message):
        paired_differences(damage(data), "base")
