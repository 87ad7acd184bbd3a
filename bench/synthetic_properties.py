"""Backs docs/data.md, "The synthetic benchmark": its properties, method off.

The synthetic benchmark's properties, measured with the method switched off: whether a class
shows in a small patch of its objects and in their Eq. 2 prototypes, how often a query holds a
distractor that shares a factor with its class, how many training images hold an unlabelled
novel object, the headroom between the plain matching and an oracle prototype, and the quality of
each encoder's pseudo masks.

    python bench/synthetic_properties.py [--encoders synthetic pretrain@300 none]

Each encoder (an `encoder.weights` value; pretrain@STEPS: the `pretrain` recipe with that many
steps, pretrain@300 the recipe before the shipped encoder) runs the annotation stages in a
scratch folder at config.yaml's settings, on one generated dataset. Writes
bench/results/synthetic_properties.json and .md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
import zarr
from record import arguments, describe, run_stage, save, scratch
from scipy import ndimage
from scipy.stats import entropy

from latentfss.datasets.images import read_image, read_mask
from latentfss.datasets.index import read_index
from latentfss.encoder import Normalise, encode_each, load_encoder
from latentfss.episodes import (
    EpisodeSampler,
    base_classes,
    binary_mask,
    fold_images,
    novel_classes,
    sample_test_episodes,
)
from latentfss.metrics import IoUMeter
from latentfss.model import cosine_logits, load_model, mask_weights, pool
from latentfss.prototypes import region_prototypes, upsample

REPO = Path(__file__).resolve().parents[1]
PATCH = 16  # side of the probe's crops, in image pixels
FOLDS = range(4)


def factors(index) -> list[tuple[str, str]]:
    """Per class id (1-based, index 0 unused): its two generating factors, from its name:
    "red-striped" -> (red, striped)."""
    return [("", "")] + [tuple(n.rsplit("-", 1)) for n in index.meta["class_names"]]


def annotate(config: dict, root: Path, weights: str, work: Path, threads: int) -> Path:
    """prepare -> [pretrain-encoder] -> extract-features -> pool-prototypes -> per fold cluster
    and write-pseudo-masks, at config.yaml's settings, into `work`."""
    work.mkdir(parents=True)
    index, features = work / "dataset", work / "features.zarr"
    dataset = json.dumps({"name": "synthetic", "root": str(root), "train_list": "voc"})
    run_stage("prepare", out=index, params=dataset, threads=threads)
    encoder = {**config["encoder"], "weights": weights}
    if weights == "pretrain" or weights.startswith("pretrain@"):  # @STEPS: with that many steps
        steps = weights.partition("@")[2]
        encoder["weights"] = str(work / "pretrained.pt")
        run_stage(
            "pretrain-encoder",
            out=encoder["weights"],
            encoder=json.dumps({"arch": config["encoder"]["arch"]}),
            params=json.dumps({**config["pretrain"], **({"steps": int(steps)} if steps else {})}),
            seed=config["seed"],
            synthetic=json.dumps(config["synthetic"]),
            threads=threads,
        )
    annotation = {k: v for k, v in config["annotation"].items() if k != "keep_features"}
    run_stage(
        "extract-features",
        index=index,
        out=features,
        encoder_out=work / "encoder_init.pt",
        encoder=json.dumps(encoder),
        params=json.dumps(annotation),
        seed=config["seed"],
        threads=threads,
    )
    run_stage("pool-prototypes", index=index, features=features, out=work / "prototypes.zarr")
    for fold in FOLDS:
        run_stage(
            "cluster",
            index=index,
            prototypes=work / "prototypes.zarr",
            fold=fold,
            out=work / f"fold{fold}/clusters.zarr",
            params=json.dumps(config["cluster"]),
            protocol=json.dumps(config["protocol"]),
            seed=config["seed"],
            threads=threads,
        )
        run_stage(
            "write-pseudo-masks",
            index=index,
            features=features,
            clusters=work / f"fold{fold}/clusters.zarr",
            out=work / f"fold{fold}/pseudo_masks.zarr",
            threads=threads,
        )
    return work


def object_crops(images: pd.DataFrame, num_classes: int, per_object: int, seed: int):
    """Up to `per_object` PATCH x PATCH crops lying wholly inside one object of each (image,
    class): (N, 3, PATCH, PATCH) uint8 and their classes (N,)."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for row in images.itertuples():
        image, mask = read_image(row.image), read_mask(row.mask, num_classes)
        for c in np.unique(mask):
            if not 1 <= c <= num_classes:
                continue
            inside = ndimage.uniform_filter((mask == c).astype(np.float32), PATCH, mode="constant")
            ys, xs = np.nonzero(inside > 1 - 1e-4)  # windows wholly of class c (centred)
            for i in rng.permutation(len(ys))[:per_object]:
                y, x = ys[i] - PATCH // 2, xs[i] - PATCH // 2
                crops.append(image[y : y + PATCH, x : x + PATCH].transpose(2, 0, 1))
                labels.append(c)
    return np.stack(crops), np.array(labels)


def colour_stats(pixels: np.ndarray) -> np.ndarray:
    """(N, 3, ...) uint8 -> (N, 6): RGB mean and standard deviation."""
    flat = pixels.reshape(len(pixels), 3, -1).astype(np.float32)
    return np.concatenate([flat.mean(2), flat.std(2)], 1)


def nearest_mean(train_x, train_y, test_x) -> np.ndarray:
    """Nearest class mean on standardised features."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    classes = np.unique(train_y)
    means = np.stack([((train_x[train_y == c] - mu) / sd).mean(0) for c in classes])
    z = (test_x - mu) / sd
    return classes[((z[:, None] - means[None]) ** 2).sum(2).argmin(1)]


def patch_probe(index, seed: int, epochs: int = 12) -> dict:
    """The oracle probe: a small CNN trained with all 20 class labels on crops of train objects,
    tested on crops of val objects; beside it nearest-mean on the crops' colour statistics."""
    n = index.num_classes
    train_x, train_y = object_crops(index.split("train"), n, 8, seed)
    test_x, test_y = object_crops(index.split("val"), n, 8, seed + 1)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
        torch.nn.BatchNorm2d(64),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.BatchNorm2d(64),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, n),
    )
    x = torch.from_numpy(train_x).float() / 255
    y = torch.from_numpy(train_y - 1).long()
    optimizer = torch.optim.Adam(net.parameters(), 2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(128):
            xb = x[batch]
            if torch.rand(1, generator=generator) < 0.5:  # the classes are mirror-symmetric
                xb = xb.flip(3)
            loss = torch.nn.functional.cross_entropy(net(xb), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        cnn = net(torch.from_numpy(test_x).float() / 255).argmax(1).numpy() + 1
    colour = nearest_mean(colour_stats(train_x), train_y, colour_stats(test_x))
    return {
        "train_crops": len(train_y),
        "test_crops": len(test_y),
        "cnn_accuracy": accuracy(cnn, test_y),
        "colour_stats_accuracy": accuracy(colour, test_y),
        **factor_agreement(cnn, test_y, factors(index), "cnn"),
    }


def accuracy(pred, truth) -> float:
    return round(float(np.mean(np.asarray(pred) == np.asarray(truth))), 4)


def factor_agreement(pred, truth, names, prefix: str) -> dict:
    """How often a prediction has the true class's first (second) factor."""
    return {
        f"{prefix}_same_factor{i}": accuracy(
            [names[p][i] for p in pred], [names[t][i] for t in truth]
        )
        for i in (0, 1)
    }


@torch.inference_mode()
def val_features(encoder, images: pd.DataFrame) -> dict[int, torch.Tensor]:
    """Each val image's layer3 features at its own resolution (evaluate.resize: none)."""
    normalise = Normalise(torch.device("cpu"))
    feats = {}
    for row in images.itertuples():
        image = torch.from_numpy(read_image(row.image).transpose(2, 0, 1).copy())
        feats[row.Index] = encode_each(encoder.eval(), [image], normalise)[0]
    return feats


def train_baselines(config: dict, work: Path, threads: int) -> dict[int, Path]:
    """Per fold, the plain baseline (no mining, no global background) trained 1-shot as the
    default run trains: the method switched off."""
    models = {}
    for fold in FOLDS:
        models[fold] = work / f"baseline/fold{fold}/model.pt"
        run_stage(
            "train",
            index=work / "dataset",
            encoder_init=work / "encoder_init.pt",
            pseudo_masks=work / f"fold{fold}/pseudo_masks.zarr",
            fold=fold,
            shot=1,
            out=models[fold],
            log_csv=models[fold].with_name("train.csv"),
            params=json.dumps(config["train"]),
            model_params=json.dumps({**config["model"], "mine": False, "bg_rectify": False}),
            protocol=json.dumps(config["protocol"]),
            seed=config["seed"],
            threads=threads,
        )
    return models


def object_prototypes(index, feats, min_pixels: int) -> pd.DataFrame:
    """Eq. 2 prototype and colour statistics of each val (image, class) covering at least
    `min_pixels` (those that may serve as supports)."""
    rows = []
    for image_id, f in feats.items():
        info = index.images.loc[image_id]
        mask = read_mask(info["mask"], index.num_classes)
        pixels = np.bincount(mask.ravel(), minlength=256)
        labels = np.array([c for c in range(1, index.num_classes + 1) if pixels[c] >= min_pixels])
        if not len(labels):
            continue
        protos, _, _ = region_prototypes(f, mask, labels)
        image = read_image(info["image"])
        for c, p in zip(labels, protos, strict=True):
            colour = colour_stats(image[mask == c].T[None])[0]
            rows.append({"image_id": image_id, "class_id": int(c), "proto": p, "colour": colour})
    return pd.DataFrame(rows)


def leave_one_out(x: np.ndarray, labels: np.ndarray, cosine: bool) -> np.ndarray:
    """Each row's nearest other row's label (cosine, or Euclidean on standardised features)."""
    if cosine:
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        distance = -unit @ unit.T
    else:
        z = (x - x.mean(0)) / (x.std(0) + 1e-6)
        distance = ((z[:, None] - z[None]) ** 2).sum(2)
    np.fill_diagonal(distance, np.inf)
    return labels[distance.argmin(1)]


def prototype_neighbours(objects: pd.DataFrame, names) -> dict:
    """20-class and 5-way novel (per fold, averaged) leave-one-out 1-NN accuracy of Eq. 2
    prototypes (cosine) and of the objects' colour statistics."""
    y = objects["class_id"].to_numpy()
    protos, colours = np.stack(objects["proto"]), np.stack(objects["colour"])
    out = {"objects": len(y)}
    for kind, x, cosine in (("prototype", protos, True), ("colour_stats", colours, False)):
        nearest = leave_one_out(x, y, cosine)
        out[f"{kind}_20way"] = accuracy(nearest, y)
        out.update(factor_agreement(nearest, y, names, kind))
        per_fold = []
        for fold in FOLDS:
            keep = np.isin(y, novel_classes(fold, len(names) - 1))
            per_fold.append(accuracy(leave_one_out(x[keep], y[keep], cosine), y[keep]))
        out[f"{kind}_5way_novel"] = round(float(np.mean(per_fold)), 4)
    return out


def fold_episodes(index, feats, fold: int, min_pixels: int, episodes: int) -> dict:
    """One seed's 1-shot test episodes of a fold (as evaluate draws them): the mIoU of the plain
    matching (the support's fg and bg prototypes), of the oracle the issue names (the class's
    mean prototype over all val objects as fg, the support's bg) and of the query's own
    prototypes (fg and bg from its own label: what no rectification of prototypes can beat),
    and how often the query holds a distractor sharing a factor with the class."""
    names = factors(index)
    val_pixels = index.pixels[index.pixels["image_id"].isin(index.split("val").index)]
    present = val_pixels[(val_pixels["class_id"] > 0) & (val_pixels["pixels"] > 0)]
    classes_in = present.groupby("image_id")["class_id"].apply(set).to_dict()
    objects = object_prototypes(index, feats, min_pixels)
    mean_proto = {
        c: torch.from_numpy(np.stack(g["proto"]).mean(0)) for c, g in objects.groupby("class_id")
    }
    masks = {i: read_mask(index.images.loc[i, "mask"], index.num_classes) for i in feats}
    novel = novel_classes(fold, index.num_classes)
    sampler = EpisodeSampler.from_pixels(val_pixels, novel, min_pixels, 1)
    meters = {name: IoUMeter(novel) for name in ("plain", "oracle", "self")}
    shares = []
    for e in sample_test_episodes(sampler, episodes, seed=0).itertuples():
        support, query = int(e.supports), feats[e.query][None]
        fg, bg = shot_prototypes(feats[support][None], binary_mask(masks[support], e.class_id))
        label = binary_mask(masks[e.query], e.class_id)
        own_fg, own_bg = shot_prototypes(query, label)
        pairs = {"plain": (bg, fg), "oracle": (bg, mean_proto[e.class_id][None])}
        for name, (b, f) in {**pairs, "self": (own_bg, own_fg)}.items():
            logits = cosine_logits(query, torch.stack([b, f], 1), 1.0)
            pred = upsample(logits, label.shape).argmax(1)[0].numpy()
            meters[name].update(pred, label, e.class_id)
        others = classes_in[e.query] - {e.class_id}
        shares.append([any(names[o][i] == names[e.class_id][i] for o in others) for i in (0, 1)])
    return {
        **{name: 100 * meter.miou() for name, meter in meters.items()},
        "distractor": np.mean(shares, axis=0).tolist(),
    }


def shot_prototypes(feats: torch.Tensor, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2 foreground and background prototypes (1, C) of one image's binary label."""
    fg_w, bg_w = mask_weights(torch.from_numpy(label)[None], tuple(feats.shape[-2:]))
    return pool(feats, fg_w), pool(feats, bg_w)


def headroom(index, feats_of, min_pixels: int, episodes: int) -> dict:
    """fold_episodes over the folds, `feats_of(fold)` the val features; means over the folds."""
    folds = [fold_episodes(index, feats_of(fold), fold, min_pixels, episodes) for fold in FOLDS]
    out = {key: [round(f[key], 1) for f in folds] for key in ("plain", "oracle", "self")}
    distractor = np.mean([f["distractor"] for f in folds], axis=0)
    return {
        **out,
        "plain_mean": round(float(np.mean(out["plain"])), 1),
        "oracle_mean": round(float(np.mean(out["oracle"])), 1),
        "self_mean": round(float(np.mean(out["self"])), 1),
        "distractor_same_factor0": round(float(distractor[0]), 3),
        "distractor_same_factor1": round(float(distractor[1]), 3),
    }


def latent_share(index, min_pixels: int) -> dict:
    """Share of each fold's train set holding an unlabelled novel object (any size, and with at
    least min_pixels), averaged over the folds."""
    train = index.pixels[index.pixels["image_id"].isin(index.split("train").index)]
    any_size, large = [], []
    for fold in FOLDS:
        train_set = fold_images(train, base_classes(fold, index.num_classes), min_pixels)
        rows = train[train["image_id"].isin(train_set)]
        novel = rows[rows["class_id"].isin(novel_classes(fold, index.num_classes))]
        any_size.append(novel.loc[novel["pixels"] > 0, "image_id"].nunique() / len(train_set))
        large.append(
            novel.loc[novel["pixels"] >= min_pixels, "image_id"].nunique() / len(train_set)
        )
    return {
        "train_images_with_novel_object": round(float(np.mean(any_size)), 3),
        "with_novel_object_of_min_pixels": round(float(np.mean(large)), 3),
    }


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information, arithmetic normalisation: I(a; b) / mean(H(a), H(b))."""
    joint = np.bincount(a * (b.max() + 1) + b).astype(np.float64)
    h_a, h_b = entropy(np.bincount(a)), entropy(np.bincount(b))
    mutual = h_a + h_b - entropy(joint)
    return mutual / max((h_a + h_b) / 2, 1e-12)


def pseudo_mask_quality(index, work: Path) -> dict:
    """Per fold, over the object pixels of its train set: the NMI between pseudo labels (0..K)
    and true classes, and the share of novel-object (base-object) pixels not called background;
    and the share of background pixels called background. Means over the folds."""
    out = {"nmi": [], "novel_not_background": [], "base_not_background": [], "background": []}
    for fold in FOLDS:
        group = zarr.open_group(str(work / f"fold{fold}/pseudo_masks.zarr"), mode="r")
        novel = np.array(novel_classes(fold, index.num_classes))
        truth, pseudo = [], []
        for i, image_id in enumerate(group["image_id"][:]):
            h, w = int(group["height"][i]), int(group["width"][i])
            truth.append(read_mask(index.images.loc[image_id, "mask"], index.num_classes).ravel())
            pseudo.append(group["masks"][i, :h, :w].ravel())
        truth, pseudo = np.concatenate(truth), np.concatenate(pseudo).astype(np.int64)
        objects = (truth > 0) & (truth <= index.num_classes)
        out["nmi"].append(nmi(pseudo[objects], truth[objects].astype(np.int64)))
        is_novel = np.isin(truth, novel)
        out["novel_not_background"].append(float((pseudo[is_novel] > 0).mean()))
        out["base_not_background"].append(float((pseudo[objects & ~is_novel] > 0).mean()))
        out["background"].append(float((pseudo[truth == 0] == 0).mean()))
    return {k: round(float(np.mean(v)), 3) for k, v in out.items()}


def measure(config: dict, work: Path, patch: dict, episodes: int, threads: int) -> dict:
    index = read_index(work / "dataset")
    min_pixels = config["protocol"]["min_support_pixels"]
    val = index.split("val")
    frozen = val_features(load_encoder(work / "encoder_init.pt"), val)
    models = train_baselines(config, work, threads)
    return {
        "patch_probe": patch,
        "neighbours": prototype_neighbours(
            object_prototypes(index, frozen, min_pixels), factors(index)
        ),
        "frozen": headroom(index, lambda fold: frozen, min_pixels, episodes),
        "baseline": headroom(
            index,
            lambda fold: val_features(load_model(models[fold])[0].encoder, val),
            min_pixels,
            episodes,
        ),
        "latent": latent_share(index, min_pixels),
        "pseudo_masks": pseudo_mask_quality(index, work),
    }


def main() -> None:
    parser = arguments(__doc__, threads=True)
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=["synthetic", "pretrain@300", "none"],
        help="encoder.weights values; pretrain@STEPS: the pretrain recipe with STEPS steps",
    )
    parser.add_argument("--episodes", type=int, default=1000, help="1-shot episodes per fold")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    variants = {}
    with scratch() as tmp:
        root = Path(tmp) / "voc"
        run_stage("make-synthetic", out=root, params=json.dumps(config["synthetic"]))
        patch = None  # of the data, whatever the encoder: measured once
        for weights in args.encoders:
            work = annotate(config, root, weights, Path(tmp) / weights, args.threads)
            patch = patch or patch_probe(read_index(work / "dataset"), config["seed"])
            variants[weights] = measure(config, work, patch, args.episodes, args.threads)
            print(weights, json.dumps(variants[weights]))
    results = {"config": config, "variants": variants}
    save(results, markdown, args.out, "synthetic_properties")


def markdown(r: dict) -> list[str]:
    variants = r["variants"]
    lines = [
        "## The synthetic benchmark's properties (`bench/synthetic_properties.py`)",
        "",
        f"Machine: {describe(r['machine'])}. Measured with the method switched off. Factors: "
        "colour and pattern. Patch probe: a small "
        "CNN trained with all 20 labels on 16x16 crops lying wholly inside train objects, "
        "tested on crops of val objects; beside it nearest class mean on the crops' RGB mean "
        "and std. Distractor: a test query (1-shot, one seed's episodes per fold, as evaluate "
        "draws them) holds another object sharing the class's first / second factor. Latent: "
        "share of a fold's train set holding a novel-class object.",
        "",
        "| patch CNN | patch colour stats | distractor (factor 1 / 2) | latent |",
        "|---:|---:|---|---:|",
    ]
    v = next(iter(variants.values()))  # the data's properties: the same for every encoder
    p, h = v["patch_probe"], v["frozen"]
    lines.append(
        f"| {p['cnn_accuracy']:.1%} | {p['colour_stats_accuracy']:.1%} "
        f"| {h['distractor_same_factor0']:.0%} / {h['distractor_same_factor1']:.0%} "
        f"| {v['latent']['train_images_with_novel_object']:.0%} |"
    )
    lines += [
        "",
        "Per encoder. Prototypes: Eq. 2 on each val (image, class) covering "
        "`min_support_pixels`, the encoder's layer3 features at the image's own size, "
        "leave-one-out 1-NN by cosine, 20-way and 5-way among a fold's novel classes (mean over "
        "folds); colour: the same on the objects' RGB mean/std. Plain / oracle / self: 1-shot mIoU "
        "(mean of 4 folds) of the query matched against the support's background prototype and "
        "its foreground prototype (plain) or the class's mean prototype over all val objects "
        "(oracle), or against its own fg and bg prototypes (self: the best any prototype "
        "rectification could reach), with the frozen encoder and with the baseline trained as "
        "the default run trains (no mining, no global background). Pseudo masks: over the "
        "object pixels of each fold's train set, NMI(pseudo label, class) and the share of "
        "novel-object pixels not labelled background.",
        "",
        "| encoder | proto 20-way | colour 20-way | proto 5-way novel | colour 5-way novel "
        "| frozen plain / oracle / self | baseline plain / oracle / self | pseudo NMI "
        "| novel px not bg |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for name, v in variants.items():
        n, f, b, m = v["neighbours"], v["frozen"], v["baseline"], v["pseudo_masks"]
        lines.append(
            f"| {name} | {n['prototype_20way']:.1%} | {n['colour_stats_20way']:.1%} "
            f"| {n['prototype_5way_novel']:.1%} | {n['colour_stats_5way_novel']:.1%} "
            f"| {f['plain_mean']} / {f['oracle_mean']} / {f['self_mean']} "
            f"| {b['plain_mean']} / {b['oracle_mean']} / {b['self_mean']} "
            f"| {m['nmi']:.2f} | {m['novel_not_background']:.0%} |"
        )
    return lines


if __name__ == "__main__":
    main()
