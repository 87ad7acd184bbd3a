"""Backs docs/results.md, "Foreground rectification, diagnosed".

Whether and why foreground rectification (Eq. 8-9) helps, on a finished run's 1-shot models:
how often the retrieved train images hold the support's class, what the chosen regions are made
of, whether rectification moves the support prototype toward its class's mean val prototype,
an oracle bank of the ground-truth novel objects, and beta x N, all on the same episode lists,
each mIoU difference to no rectification with its paired 95% interval.

    python bench/rectification.py --results results/synthetic [--episodes 200]

Writes bench/results/rectification.json and .md.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from record import arguments, describe, save

from latentfss import store
from latentfss.datasets.evaluation import EvaluateConfig
from latentfss.datasets.index import read_index
from latentfss.datasets.synthetic import class_factors
from latentfss.encoder import Normalise
from latentfss.episodes import (
    IGNORE,
    EpisodeSampler,
    ProtocolConfig,
    binary_mask,
    novel_classes,
    sample_test_episodes,
)
from latentfss.intervals import paired_differences
from latentfss.model import load_model
from latentfss.prototypes import region_prototypes
from latentfss.region_bank import RegionBank, inner_product_index, load_bank
from latentfss.runtime import set_threads
from latentfss.stages.build_bank import TrainImages
from latentfss.stages.evaluate import encoded, evaluate_lists

REPO = Path(__file__).resolve().parents[1]
BETAS = (0.05, 0.1, 0.2, 0.4)
TOP_NS = (1, 4, 16)
KINDS = ("class", "shares a factor", "other object", "background")


def composition(pseudo: np.ndarray, label: np.ndarray, region: int, class_id: int) -> np.ndarray:
    """Shares of a pseudo-mask region's pixels (boundary pixels left out) that are the support's
    class, a class sharing its colour or pattern, another object, background."""
    truth = label[(pseudo == region) & (label != IGNORE)]
    if truth.size == 0:
        return np.full(len(KINDS), np.nan)
    colour, pattern = class_factors(class_id)
    shares = {c: set(class_factors(c)) & {colour, pattern} for c in np.unique(truth) if c}
    kind = np.select(
        [truth == class_id, np.isin(truth, [c for c, s in shares.items() if s]), truth > 0],
        [0, 1, 2],
        3,
    )
    return np.bincount(kind, minlength=len(KINDS)) / truth.size


class Fold:
    """One fold's 1-shot model, bank, episode lists and the images the diagnostics look at."""

    def __init__(self, results: Path, fold: int, cfg: EvaluateConfig, episodes: int, seeds):
        run, self.fold = results / f"fold{fold}/shot1", fold
        self.index = read_index(results / "dataset")
        self.model, checkpoint = load_model(run / "model.pt")
        self.model.eval()
        protocol = ProtocolConfig(**checkpoint["config"]["protocol"])
        self.novel = novel_classes(fold, self.index.num_classes, protocol.class_split)
        self.cfg, self.cpu = cfg, torch.device("cpu")
        self.bank = load_bank(run / "bank", cfg.top_n, cfg.beta, self.cpu)
        val = self.index.pixels[self.index.pixels["image_id"].isin(self.index.split("val").index)]
        sampler = EpisodeSampler.from_pixels(val, self.novel, protocol.min_support_pixels, 1)
        self.lists = {f"seed{s}": sample_test_episodes(sampler, episodes, s) for s in seeds}
        group = store.open_group(run / "bank/regions.zarr", "build-bank")
        self.bank_ids = group["image_id"][:]
        self.region_image, self.region_label = group["image"][:], group["label"][:]
        self.pseudo_masks = results / f"fold{fold}/pseudo_masks.zarr"

    @torch.inference_mode()
    def encode(self, image_ids) -> dict[int, tuple[torch.Tensor, np.ndarray]]:
        """image id -> (features, class-index mask at the network's input), as evaluation
        encodes them (`stages.evaluate.encoded`)."""
        items = encoded(self.model, image_ids, self.index, self.cfg, Normalise(self.cpu), "")
        return {item["image_id"]: (feats, item["mask"]) for item, feats in items}

    def train_images(self) -> tuple[dict, list[np.ndarray]]:
        """The bank's images: their features and GT masks, and their pseudo masks, as the bank
        saw them."""
        seen = self.encode(self.bank_ids.tolist())
        paths = self.index.images.loc[self.bank_ids, "image"].tolist()
        pseudo = [mask for _, mask in TrainImages(paths, self.pseudo_masks, self.cfg)]
        return seen, pseudo

    def oracle(self, train: dict, classes) -> RegionBank:
        """A bank of the images holding one of `classes` (by the bank's embeddings), each with
        one region per ground-truth object of those classes."""
        embeddings = self.bank.index.reconstruct_n(0, self.bank.index.ntotal)
        keep, regions = [], []
        for row, image_id in enumerate(self.bank_ids):
            feats, mask = train[image_id]
            labels = np.intersect1d(np.unique(mask), classes)
            if len(labels):
                keep.append(row)
                regions.append(region_prototypes(feats, mask, labels)[0])
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in regions])])
        return dataclasses.replace(
            self.bank,
            index=inner_product_index(embeddings[keep]),
            regions=torch.from_numpy(np.concatenate(regions).astype(np.float32)),
            offsets=torch.from_numpy(offsets),
        )


def support_diagnostics(fold: Fold, val: dict, train_masks: dict, pseudo: list) -> pd.DataFrame:
    """One row per episode's support: retrieval precision at each N, what each chosen region
    is, and the cosine to the class's mean val prototype (leave-one-out) before and after."""
    episodes = pd.concat(fold.lists.values(), ignore_index=True)
    shots = {}
    distinct = episodes[["supports", "class_id"]].astype(int).drop_duplicates()
    for image_id, class_id in distinct.itertuples(index=False):
        feats, mask = val[image_id]
        shots[image_id, class_id] = fold.model.shots(
            feats[None], torch.from_numpy(binary_mask(mask, class_id))[None]
        )
    # each class's val prototypes (Eq. 2 over every val image holding it)
    members = {c: [k for k in shots if k[1] == c] for c in fold.novel}
    sums = {c: sum(shots[k].fg[0] for k in ks) for c, ks in members.items() if ks}
    holds = fold.index.pixels.groupby("class_id")["image_id"].agg(set)
    chance = {c: np.isin(fold.bank_ids, list(holds.get(c, ()))).mean() for c in fold.novel}
    wide = dataclasses.replace(fold.bank, top_n=max(TOP_NS))
    rows = []
    for (image_id, class_id), shot in shots.items():
        retrieved = fold.bank_ids[wide.nearest_images(shot.embedding)[0].numpy()]
        held = np.isin(retrieved, list(holds[class_id]))
        images, picked, mu = fold.bank.relevant(shot.fg, shot.embedding)
        rectified = fold.bank.rectify(shot.fg, shot.embedding)[0]
        row = {"fold": fold.fold, "image_id": image_id, "class_id": class_id}
        row |= {f"precision@{n}": held[:n].mean() for n in TOP_NS}
        row["chance"] = chance[class_id]
        kinds = [
            composition(pseudo[i], train_masks[fold.bank_ids[i]], fold.region_label[r], class_id)
            for i, r in zip(images[0].tolist(), picked[0].tolist(), strict=True)
            if r >= 0
        ]
        row |= dict(zip(KINDS, np.nanmean(kinds, axis=0) if kinds else [np.nan] * 4, strict=True))
        row["negative_mu"] = bool((mu < 0).any())
        n = len(members[class_id])
        if n > 1:  # its class's mean without it, and the nearest other class's mean
            own = (sums[class_id] - shot.fg[0]) / (n - 1)
            others = torch.stack([v / len(members[c]) for c, v in sums.items() if c != class_id])
            for when, p in (("before", shot.fg[0]), ("after", rectified)):
                row[f"cos_{when}"] = float(F.cosine_similarity(p, own, dim=0))
                row[f"other_{when}"] = float(F.cosine_similarity(p[None], others).max())
        rows.append(row)
    return pd.DataFrame(rows)


def sweep(fold: Fold, train: dict) -> pd.DataFrame:
    """Each bank setting's episode scores on the fold's lists (`evaluate_lists`): the run's bank
    at each N and beta; the oracle of every novel object; and the oracle of the support's own
    class (the images holding it, its objects: what rectification can do at best)."""
    settings = {"no rectification": None}
    settings |= {
        f"N={n}, beta={b}": dataclasses.replace(fold.bank, top_n=n, beta=b)
        for n in TOP_NS
        for b in BETAS
    }
    oracle = fold.oracle(train, fold.novel)
    settings |= {
        f"novel-object oracle, N={n}, beta=0.2": dataclasses.replace(oracle, top_n=n)
        for n in (4, 16)
    }
    frames = []
    for name, bank in settings.items():
        _, scores, _ = evaluate_lists(
            fold.model, fold.lists, fold.index, fold.cfg, bank, fold.cpu, fold.novel
        )
        frames.append(scores.assign(run=name))
    for beta in (0.2, 0.4):  # one bank per class, for the episodes of that class
        name, parts = f"own-class oracle, N=4, beta={beta}", []
        for c in set(pd.concat(fold.lists.values())["class_id"]):
            bank = dataclasses.replace(fold.oracle(train, [c]), beta=beta)
            lists = {k: e[e["class_id"] == c] for k, e in fold.lists.items()}
            parts.append(
                evaluate_lists(fold.model, lists, fold.index, fold.cfg, bank, fold.cpu, fold.novel)[
                    1
                ]
            )
        frames.append(pd.concat(parts).assign(run=name))
    return pd.concat(frames)


def main() -> None:
    parser = arguments(__doc__, results=True, threads=True)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--episodes", type=int, default=200, help="per test seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    set_threads(args.threads, 0)
    metrics = json.loads((args.results / "fold0/shot1/eval/metrics.json").read_text())
    cfg = EvaluateConfig(**{**metrics["evaluate"], "workers": 0, "seeds": tuple(args.seeds)})
    supports, scores = [], []
    for f in args.folds:
        fold = Fold(args.results, f, cfg, args.episodes, args.seeds)
        print(f"fold {f}: encoding the val and the bank's images", flush=True)
        val = fold.encode(fold.index.split("val").index.tolist())
        train, pseudo = fold.train_images()
        supports.append(
            support_diagnostics(fold, val, {k: m for k, (_, m) in train.items()}, pseudo)
        )
        scores.append(sweep(fold, train).assign(fold=f, train_seed=0))
        del train, val
    supports, scores = pd.concat(supports), pd.concat(scores)
    table = 100 * paired_differences(scores, "no rectification")
    results = {
        "results": str(args.results),
        "episodes_per_seed": args.episodes,
        "seeds": args.seeds,
        "folds": args.folds,
        "evaluate": metrics["evaluate"],
        "supports": len(supports),
        "retrieval": supports[[f"precision@{n}" for n in TOP_NS] + ["chance"]].mean().to_dict(),
        "regions": supports[list(KINDS)].mean().to_dict(),
        "negative_mu_share": float(supports["negative_mu"].mean()),
        **{
            k: float(supports[k].mean())
            for k in ("cos_before", "cos_after", "other_before", "other_after")
        },
        "moved_toward": float((supports["cos_after"] > supports["cos_before"]).mean()),
        "margin_grew": float(
            (
                supports["cos_after"] - supports["other_after"]
                > supports["cos_before"] - supports["other_before"]
            ).mean()
        ),
        "sweep": table.reset_index().to_dict(orient="records"),
    }
    save(results, report, args.out, "rectification")


def report(r: dict) -> list[str]:
    retrieval = r["retrieval"]
    lines = [
        "## Foreground rectification, diagnosed (`bench/rectification.py`)",
        "",
        f"Machine: {describe(r['machine'])}. The run's 1-shot models (folds {r['folds']}), its "
        f"banks and evaluation settings; {r['episodes_per_seed']} episodes per test seed, seeds "
        f"{r['seeds']}: {r['supports']} distinct supports.",
        "",
        "| retrieved train images holding the support's class | N=1 | N=4 | N=16 | chance |",
        "|---|---:|---:|---:|---:|",
        "| share | "
        + " | ".join(
            f"{100 * retrieval[k]:.1f}%"
            for k in ("precision@1", "precision@4", "precision@16", "chance")
        )
        + " |",
        "",
        "| the chosen regions' pixels (N=4) | " + " | ".join(KINDS) + " |",
        "|---|" + "---:|" * len(KINDS),
        "| share | " + " | ".join(f"{100 * r['regions'][k]:.1f}%" for k in KINDS) + " |",
        "",
        f"Cosine of the support prototype to its class's mean val prototype (leave-one-out): "
        f"{r['cos_before']:.3f} before, {r['cos_after']:.3f} after rectification; moved toward it "
        f"for {100 * r['moved_toward']:.1f}% of the supports. To the nearest other novel "
        f"class's mean: {r['other_before']:.3f} before, {r['other_after']:.3f} after; the margin "
        f"(own minus nearest other) grew for {100 * r['margin_grew']:.1f}% of the supports. "
        f"A negative weight mu (Eq. 9 with a "
        f"negative cosine): {100 * r['negative_mu_share']:.1f}% of the supports.",
        "",
        "| bank, N, beta | mIoU | Δ to no rectification [95% CI] |",
        "|---|---:|---:|",
    ]
    for row in r["sweep"]:
        cell = f"{row['diff']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]"
        lines.append(f"| {row['run']} | {row['value']:.1f} | {cell} |")
    return lines


if __name__ == "__main__":
    main()
