"""The references' data protocol on a hand-built dataset: each fold's train set (and Remain),
test-time input modes, and batched evaluation equal to one episode at a time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from conftest import PROTOCOL, artifact, cli, params, pooling_steps
from latentfss import layout
from latentfss.config import RESIZE_MODES, EvaluateConfig
from latentfss.datasets.evaluation import at_label, network_input, pfenet_size
from latentfss.datasets.images import write_mask
from latentfss.datasets.index import read_index
from latentfss.datasets.training import EpisodeSamples, PseudoSamples
from latentfss.episodes import IGNORE, EpisodeSampler, base_classes, novel_classes
from latentfss.episodes import sample_test_episodes as sample
from latentfss.metrics import IoUMeter
from latentfss.model import load_model
from latentfss.region_bank import load_bank
from latentfss.scoring import episode_by_episode, evaluate_lists

# Fold 0 (novel 1-5, base 6-20) with min_support_pixels 30 (PROTOCOL): each train image's
# objects as (class, side of its square). Two are Remain: one holds novel classes only, the
# other a base class below 30 pixels (5 x 5) beside a large novel one.
TRAIN = {
    "base_a": [(6, 20), (1, 12)],
    "base_b": [(6, 16), (7, 14)],
    "base_c": [(7, 18), (8, 12)],
    "base_d": [(8, 16), (6, 10)],
    "base_e": [(9, 20), (2, 10)],
    "base_f": [(9, 14), (7, 16)],
    "only_novel": [(1, 20), (2, 16)],
    "small_base": [(6, 5), (3, 20)],
}
REMAIN = {"only_novel", "small_base"}
VAL = {f"val_{i}": [(1 + i % 2, 18), (2 - i % 2, 12)] for i in range(6)}


def write_image(
    root, name: str, objects: list[tuple[int, int]], size: tuple[int, int], rng: np.random.Generator
) -> None:
    """Grey noise with one square per object (a colour of its class), side by side."""
    image = rng.integers(80, 120, (*size, 3)).astype(np.uint8)
    mask = np.zeros(size, np.uint8)
    for i, (class_id, side) in enumerate(objects):
        top, left = 4 + 26 * (i // 2), 4 + 26 * (i % 2)
        colour = np.array([37 * class_id % 256, 91 * class_id % 256, 53 * class_id % 256])
        image[top : top + side, left : left + side] = colour + rng.integers(0, 20, (side, side, 1))
        mask[top : top + side, left : left + side] = class_id
    Image.fromarray(image).save(root / f"JPEGImages/{name}.jpg", quality=95)
    write_mask(root / f"SegmentationClassAug/{name}.png", mask)


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory):
    """A VOC root written by hand, annotated for fold 0, a model trained 2 steps mining
    Remain too, and its region bank."""
    root, out = tmp_path_factory.mktemp("hand") / "voc", tmp_path_factory.mktemp("hand_out")
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, images in (("train", TRAIN), ("val", VAL)):
        for i, (name, objects) in enumerate(images.items()):
            write_image(root, name, objects, (56 + 8 * (i % 2), 64), rng)
        (root / f"ImageSets/Segmentation/{split}.txt").write_text("\n".join(images) + "\n")
    pseudo, remain = out / "pseudo_masks.zarr", out / "remain/pseudo_masks.zarr"
    steps = [
        *pooling_steps(out, params(name="pascal", root=str(root), train_list="voc")),
        (
            "cluster",
            "--index",
            out / "dataset",
            "--prototypes",
            artifact(out, layout.PROTOTYPES),
            "--fold",
            "0",
            "--out",
            out / "clusters.zarr",
            "--params",
            params(k=2, nredo=1),
            "--protocol",
            PROTOCOL,
        ),
        *[
            (
                "write-pseudo-masks",
                "--index",
                out / "dataset",
                "--features",
                artifact(out, layout.FEATURES),
                "--clusters",
                out / "clusters.zarr",
                "--out",
                path,
                "--images",
                images,
            )
            for path, images in ((pseudo, "train_set"), (remain, "remain"))
        ],
        (
            "train",
            "--index",
            out / "dataset",
            "--encoder-init",
            artifact(out, layout.ENCODER_INIT),
            "--pseudo-masks",
            pseudo,
            "--remain",
            remain,
            "--fold",
            "0",
            "--shot",
            "1",
            "--out",
            out / "model.pt",
            "--log-csv",
            out / "train.csv",
            "--protocol",
            PROTOCOL,
            "--params",
            params(iterations=2, batch_episodes=2, batch_pseudo=2, crop=48, workers=0),
        ),
        (
            "build-bank",
            "--index",
            out / "dataset",
            "--model",
            out / "model.pt",
            "--pseudo-masks",
            pseudo,
            "--out",
            out / "bank",
            "--params",
            params(workers=0),
        ),
    ]
    for step in steps:
        assert cli(*step)[0] == 0, step
    return out


def names(out, image_ids) -> set[str]:
    return set(read_index(out / "dataset").images.loc[list(image_ids), "name"])


def test_remain_is_in_no_episode_mining_stream_or_bank(hand_built):
    index = read_index(hand_built / "dataset")
    train_set = zarr.open_group(str(hand_built / "clusters.zarr"), mode="r")["train_set"][:]
    assert names(hand_built, train_set) == set(TRAIN) - REMAIN
    protos = zarr.open_group(str(artifact(hand_built, layout.PROTOTYPES)), mode="r")
    member = zarr.open_group(str(hand_built / "clusters.zarr"), mode="r")["member"][:]
    clustered = protos["image_id"][:][protos["fg_image"][:][member]]
    assert names(hand_built, clustered) <= set(TRAIN) - REMAIN  # Remain's labels unused

    pseudo = zarr.open_group(str(hand_built / "pseudo_masks.zarr"), mode="r")
    assert names(hand_built, pseudo["image_id"][:]) == set(TRAIN) - REMAIN
    bank = zarr.open_group(str(hand_built / "bank/regions.zarr"), mode="r")
    assert names(hand_built, bank["image_id"][:]) == set(TRAIN) - REMAIN

    train = index.pixels[index.pixels["image_id"].isin(index.split("train").index)]
    sampler = EpisodeSampler.from_pixels(train, base_classes(0, 20), 30, shots=1)
    episodes = EpisodeSamples(index.images, sampler, 20, 48, (1.0, 1.0), seed=0)
    assert names(hand_built, sampler.queries) == set(TRAIN) - REMAIN
    drawn = set()
    for k in range(100):
        query, class_id, supports = sampler.draw(np.random.default_rng([0, 0, k]))
        drawn |= {query, *supports}
    assert names(hand_built, drawn) == set(TRAIN) - REMAIN
    assert episodes[0]["query"].shape == (3, 48, 48)

    # mining.remain: Remain joins the mining stream, unlabelled, and nothing else
    remain = zarr.open_group(str(hand_built / "remain/pseudo_masks.zarr"), mode="r")
    assert names(hand_built, remain["image_id"][:]) == REMAIN
    assert remain.attrs["images"] == "remain" and pseudo.attrs["images"] == "train_set"
    stores = [hand_built / "pseudo_masks.zarr", hand_built / "remain/pseudo_masks.zarr"]
    stream = PseudoSamples(stores, index.images, 48, (1.0, 1.0), seed=0)
    assert {p.split("/")[-1][:-4] for p in stream.paths} == set(TRAIN)
    assert torch.load(hand_built / "model.pt")["config"]["mining"] == {"remain": True}


def test_the_network_sees_what_each_resize_mode_says():
    assert pfenet_size(375, 500, 473) == (352, 472)  # PFENet: 473 x 375/500 = 354 -> 352
    assert pfenet_size(500, 333, 473) == (472, 312)
    assert pfenet_size(300, 200, 473) == (300, 200)  # smaller images keep their size
    image = np.full((375, 500, 3), 200, np.uint8)
    mask = np.ones((375, 500), np.uint8)
    shapes = {mode: network_input(image, mask, mode, 473) for mode in RESIZE_MODES}
    assert shapes["none"][0].shape == (3, 375, 500) and shapes["none"][2] == (375, 500)
    assert shapes["square"][0].shape == (3, 473, 473) and shapes["square"][2] == (473, 473)
    padded_image, padded_mask, covered = shapes["pfenet"]
    assert padded_image.shape == (3, 473, 473) and covered == (352, 472)
    assert (padded_mask[:352, :472] == 1).all() and (padded_mask[352:] == IGNORE).all()
    assert (padded_mask[:, 472:] == IGNORE).all() and (padded_image[:, 352:] == 0).all()


@pytest.mark.parametrize(
    "mode,label_size", [("none", (129, 97)), ("square", (200, 100)), ("pfenet", (200, 100))]
)
def test_predictions_land_on_the_label_pixels_they_come_from(mode, label_size):
    """A grid map holding each cell's input row (cell i sits at pixel 8i), brought to the label:
    each label pixel gets the input row it was resized to (to a pixel)."""
    image, mask = np.zeros((*label_size, 3), np.uint8), np.zeros(label_size, np.uint8)
    query, _, covered = network_input(image, mask, mode, 129)  # 129 = 8 x 16 + 1
    grid = -(-query.shape[1] // 8)
    rows = (8.0 * torch.arange(grid))[:, None].expand(grid, -(-query.shape[2] // 8))
    out = at_label(rows[None, None], tuple(query.shape[1:]), covered, label_size)[0, 0]
    assert out.shape == label_size
    expected = torch.arange(label_size[0]) * covered[0] / label_size[0]
    if mode == "none":  # 129 rows: 8(h - 1) + 1, so align_corners=True is exact
        torch.testing.assert_close(out[:, 0], expected.float())
    assert (out[:, 0] - expected).abs().max() < 1.0


def counts(meter: IoUMeter) -> tuple:
    """The pixel counts a meter has summed: per class, and background and foreground."""
    return meter.inter, meter.union, meter.fb_inter.tolist(), meter.fb_union.tolist()


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_encoding_each_image_once_scores_what_encoding_every_episode_does(hand_built, resize):
    index = read_index(hand_built / "dataset")
    model, _ = load_model(hand_built / "model.pt")
    cpu, novel = torch.device("cpu"), novel_classes(0, 20)
    everything = index.pixels  # any images will do: train and val, of sizes 56x64 and 64x64
    for shots in (1, 5):
        sampler = EpisodeSampler.from_pixels(everything, novel, 30, shots)
        lists = {f"seed{seed}": sample(sampler, 8, seed=seed) for seed in (0, 1)}
        assert index.images.loc[lists["seed0"]["query"], "height"].nunique() == 2  # mixed sizes
        for bank in (None, load_bank(hand_built / "bank", 4, 0.2, cpu)):
            cfg = EvaluateConfig(resize=resize, input_size=60, batch_size=3, workers=0)
            once, scores, work = evaluate_lists(model, lists, index, cfg, bank, cpu, novel)
            for name, episodes in lists.items():
                # each episode's scores, in the list's order, add up to what the meter summed
                ours = scores[scores["list"] == name]
                assert ours["episode"].tolist() == episodes["episode"].tolist()
                summed = ours.groupby("class_id")[["inter", "union"]].sum()
                for c, row in summed.iterrows():
                    assert (row.inter, row.union) == (once[name].inter[c], once[name].union[c])
                meter = IoUMeter(novel)
                for pred, label, class_id in episode_by_episode(
                    model, episodes, index, cfg, bank, cpu
                ):
                    assert pred.shape == label.shape  # scored at the label's own size
                    meter.update(pred, label, class_id)
                assert counts(once[name]) == counts(meter)  # so the same per-class IoU
            assert work["encoded_images"] == work["distinct_images"]
            assert work["distinct_images"] < work["episodes"] * (shots + 1)
            # with no room to keep features, queries are encoded again: the same scores
            small = dataclasses.replace(cfg, cache_mb=0)
            again, _, work = evaluate_lists(model, lists, index, small, bank, cpu, novel)
            assert [counts(m) for m in again.values()] == [counts(m) for m in once.values()]
            assert work["encoded_images"] > work["distinct_images"]
