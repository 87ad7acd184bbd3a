"""Offline annotation: Eq. 2 prototypes, K-Means representatives, Eq. 3 pseudo masks, and the
four stages on a tiny synthetic dataset (names, shapes, dtypes, attrs, determinism)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from PIL import Image

from conftest import ANNOTATION, ENCODER, PROTOCOL, artifact, cli, params
from latentfss import layout, store
from latentfss.clustering import fold_background, spherical_kmeans
from latentfss.config import ClusterConfig
from latentfss.datasets.images import read_mask
from latentfss.datasets.index import read_index
from latentfss.episodes import IGNORE, base_classes, novel_classes
from latentfss.prototypes import area_weights, masked_average, nearest_representative

# --- pure functions, answers known in advance ---


def test_map_equals_a_masked_mean_by_hand():
    feats = torch.randn(5, 4, 6)  # (C, h, w)
    mask = np.zeros((4, 6), dtype=np.uint8)  # already at the feature grid's size
    mask[1:3, 2:5] = 7
    mask[0, 0] = IGNORE
    weights = area_weights(torch.from_numpy(mask), torch.tensor([0, 7]), (4, 6))
    protos = masked_average(feats[None], weights[None])[0]
    for row, label in enumerate((0, 7)):
        picked = feats[:, torch.from_numpy(mask == label)]  # (C, n)
        torch.testing.assert_close(protos[row], picked.mean(dim=1))


def test_map_weighs_cells_by_the_area_a_label_covers():
    feats = torch.randn(3, 2, 2)
    mask = np.zeros((4, 4), dtype=np.uint8)  # each cell = a 2x2 block of pixels
    mask[0, 0] = 1  # 1/4 of cell (0, 0)
    mask[2:4, 2:4] = 1  # all of cell (1, 1)
    mask[0, 1] = IGNORE  # ignored: in no label's mass
    weights = area_weights(torch.from_numpy(mask), torch.tensor([0, 1]), (2, 2))
    torch.testing.assert_close(weights[1], torch.tensor([[0.25, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(weights[0], torch.tensor([[0.5, 1.0], [1.0, 0.0]]))
    expected = (0.25 * feats[:, 0, 0] + feats[:, 1, 1]) / 1.25
    torch.testing.assert_close(masked_average(feats[None], weights[None])[0, 1], expected)


def test_nearest_representative_is_argmax_cosine():
    feats, reps = torch.randn(2, 8, 5, 7), torch.randn(4, 8)
    f, r = feats.numpy(), reps.numpy()
    cos = np.einsum(
        "bchw,kc->bkhw",
        f / np.linalg.norm(f, axis=1, keepdims=True),
        r / np.linalg.norm(r, axis=1, keepdims=True),
    )
    assert np.array_equal(nearest_representative(feats, reps).numpy(), cos.argmax(axis=1))
    # scaling a representative or a feature does not change a cosine label
    assert torch.equal(
        nearest_representative(3 * feats, reps * (torch.rand(4, 1) + 0.1)),
        nearest_representative(feats, reps),
    )


def planted(seed=0, per=40, dims=16):
    rng = np.random.default_rng(seed)
    centres = np.eye(dims)[:3] * 5
    x = np.concatenate([c + rng.normal(0, 0.5, (per, dims)) for c in centres]) * rng.uniform(
        0.5, 3, (3 * per, 1)
    )  # cluster by direction, whatever the length
    return x.astype(np.float32), np.repeat(np.arange(3), per)


def test_kmeans_recovers_planted_clusters_and_repeats_exactly():
    x, truth = planted()
    centroids, assign, inertia = spherical_kmeans(x, ClusterConfig(k=3, nredo=3), seed=0)
    assert sorted(len(set(assign[truth == t])) for t in range(3)) == [1, 1, 1]
    assert len(set(assign)) == 3
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, rtol=1e-5)
    again = spherical_kmeans(x, ClusterConfig(k=3, nredo=3), seed=0)
    assert np.array_equal(again[0], centroids) and np.array_equal(again[1], assign)
    assert again[2] == inertia


def test_too_few_prototypes_for_k_is_an_error():
    with pytest.raises(ValueError, match="2 prototypes cannot make 3 clusters"):
        spherical_kmeans(np.ones((2, 4), np.float32), ClusterConfig(k=3), seed=0)


def test_fold_background_takes_in_hidden_classes_by_mass():
    bg, bg_weight = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([3.0, 0.0])
    fg = np.array([[0.0, 4.0], [8.0, 8.0], [2.0, 2.0]])
    fg_weight, fg_image = np.array([1.0, 2.0, 5.0]), np.array([0, 1, 1])
    hidden = np.array([True, True, False])
    out = fold_background(bg, bg_weight, fg, fg_weight, fg_image, hidden)
    np.testing.assert_allclose(out[0], [(3 * 1 + 0) / 4, (0 + 4) / 4])  # bg 3 parts, novel 1
    np.testing.assert_allclose(out[1], [8.0, 8.0])  # no background of its own: the novel class


# --- the stages on a tiny synthetic dataset ---


def test_features_store(annotated, tiny_root):
    group = zarr.open_group(str(artifact(annotated, layout.FEATURES)), mode="r")
    index = read_index(annotated / "dataset")
    assert group["feats"].shape == (24, 256, 8, 8) and group["feats"].dtype == np.float16
    assert group["feats"].chunks == (1, 256, 8, 8)
    assert group["image_id"][:].tolist() == index.split("train").index.tolist()
    attrs = group.attrs.asdict()
    assert attrs["layer"] == "layer3" and attrs["stride"] == 8 and attrs["input_size"] == 64
    assert attrs["encoder"]["arch"] == "resnet18" and attrs["code_version"]
    assert np.isfinite(group["feats"][:].astype(np.float32)).all()


def test_prototypes_store_is_eq2_of_the_features(annotated):
    features = zarr.open_group(str(artifact(annotated, layout.FEATURES)), mode="r")
    group = zarr.open_group(str(artifact(annotated, layout.PROTOTYPES)), mode="r")
    index = read_index(annotated / "dataset")
    fg, fg_image, fg_class = group["fg"][:], group["fg_image"][:], group["fg_class"][:]
    image_ids = group["image_id"][:]
    train_pixels = index.pixels[index.pixels["image_id"].isin(image_ids)]
    assert len(fg) == (train_pixels["class_id"] > 0).sum()
    assert group["bg"].shape == (24, 256) and fg.dtype == np.float32
    # every image's prototypes by hand: an area-weighted masked mean on the 8x8 grid, in
    # float64; the stage's float32 on its device differs by summation order only
    for row, image_id in enumerate(image_ids):
        mask = read_mask(index.images.loc[image_id, "mask"], 20)
        feats = features["feats"][row].astype(np.float64)  # (C, 8, 8)
        for label in np.unique(mask[mask != IGNORE]):
            indicator = torch.from_numpy(mask == label)[None, None].double()
            weight = F.adaptive_avg_pool2d(indicator, (8, 8))[0, 0].numpy()
            expected = (feats * weight).sum(axis=(1, 2)) / weight.sum()
            got = group["bg"][row] if label == 0 else fg[(fg_image == row) & (fg_class == label)][0]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        if not (mask == 0).any():  # no background pixels: a zero prototype of no mass
            assert not group["bg"][row].any() and group["bg_weight"][row] == 0
    pixels = train_pixels[train_pixels["class_id"] > 0].sort_values(["image_id", "class_id"])
    assert group["fg_pixels"][:].tolist() == pixels["pixels"].tolist()


@pytest.mark.parametrize("fold", [0, 1])
def test_clusters_use_base_classes_only(annotated, fold):
    group = zarr.open_group(str(artifact(annotated, layout.CLUSTERS, fold=fold)), mode="r")
    protos = zarr.open_group(str(artifact(annotated, layout.PROTOTYPES)), mode="r")
    member = group["member"][:]
    clustered = set(protos["fg_class"][:][member].tolist())
    assert clustered <= set(base_classes(fold, 20))
    assert not clustered & set(novel_classes(fold, 20))  # no novel prototype is ever clustered
    train_set = group["train_set"][:]  # the images holding a base class with >= 30 pixels
    index = read_index(annotated / "dataset")
    pixels = index.pixels[index.pixels["image_id"].isin(index.split("train").index)]
    large = pixels[pixels["class_id"].isin(base_classes(fold, 20)) & (pixels["pixels"] >= 30)]
    assert train_set.tolist() == sorted(set(large["image_id"]))
    in_set = np.isin(protos["image_id"][:][protos["fg_image"][:]], train_set)
    expected_members = (np.isin(protos["fg_class"][:], base_classes(fold, 20)) & in_set).sum()
    assert len(member) == expected_members == group["assign"].shape[0]
    assert group["centroids"].shape == (4, 256) and group["centroids"].dtype == np.float32
    assert set(group["assign"][:].tolist()) <= {0, 1, 2}
    assert group.attrs["K"] == 3 and group.attrs["fold"] == fold and group.attrs["inertia"] > 0


def test_pseudo_masks_are_eq3_recomputed_independently(annotated):
    group = zarr.open_group(str(artifact(annotated, layout.PSEUDO_MASKS, fold=0)), mode="r")
    features = zarr.open_group(str(artifact(annotated, layout.FEATURES)), mode="r")
    reps = zarr.open_group(str(artifact(annotated, layout.CLUSTERS, fold=0)), mode="r")[
        "centroids"
    ][:]
    index = read_index(annotated / "dataset")
    masks, heights, widths = group["masks"], group["height"][:], group["width"][:]
    assert masks.dtype == np.uint8 and masks.chunks == (1, *masks.shape[1:])
    train_set = zarr.open_group(str(artifact(annotated, layout.CLUSTERS, fold=0)), mode="r")[
        "train_set"
    ][:]
    assert group["image_id"][:].tolist() == train_set.tolist()  # the fold's train set only
    r = reps / np.linalg.norm(reps, axis=1, keepdims=True)
    assert len(set(zip(heights, widths, strict=True))) > 1  # blocks of several image sizes
    disagree = 0
    for row in range(len(train_set)):  # every image, in float64
        record = index.images.loc[group["image_id"][row]]
        assert (heights[row], widths[row]) == (record["height"], record["width"])
        feature_row = features["image_id"][:].tolist().index(group["image_id"][row])
        f = features["feats"][feature_row].astype(np.float64)
        f /= np.linalg.norm(f, axis=0, keepdims=True)
        cos = torch.from_numpy(np.einsum("chw,kc->khw", f, r))[None]
        up = F.interpolate(
            cos, size=(heights[row], widths[row]), mode="bilinear", align_corners=True
        )[0]
        labels = masks[row]
        top2 = up.topk(2, dim=0).values
        close = (top2[0] - top2[1] < 1e-5).numpy()  # a tie within float32's rounding
        got = labels[: heights[row], : widths[row]]
        assert np.array_equal(got[~close], up.argmax(0).numpy()[~close])
        disagree += (got[close] != up.argmax(0).numpy()[close]).sum()
        assert (labels[heights[row] :] == IGNORE).all() and (
            labels[:, widths[row] :] == IGNORE
        ).all()
        assert labels[: heights[row], : widths[row]].max() <= 3
    assert disagree <= 0.001 * (heights * widths).sum()


def test_rerunning_a_stage_gives_identical_arrays(annotated, tmp_path, on_cpu):
    steps = {
        layout.FEATURES: (
            "extract-features",
            "--index",
            annotated / "dataset",
            "--out",
            artifact(tmp_path, layout.FEATURES),
            "--encoder-out",
            tmp_path / "e.pt",
            "--encoder",
            ENCODER,
            "--params",
            ANNOTATION,
        ),
        layout.CLUSTERS: (
            "cluster",
            "--index",
            annotated / "dataset",
            "--prototypes",
            artifact(annotated, layout.PROTOTYPES),
            "--fold",
            "0",
            "--out",
            artifact(tmp_path, layout.CLUSTERS, fold=0),
            "--params",
            params(k=3, nredo=2),
            "--protocol",
            PROTOCOL,
            "--seed",
            "0",
        ),
    }
    for pattern, step in steps.items():
        assert cli(*step)[0] == 0
        first = zarr.open_group(str(artifact(annotated, pattern, fold=0)), mode="r")
        again = zarr.open_group(str(artifact(tmp_path, pattern, fold=0)), mode="r")
        for key, array in first.arrays():
            assert np.array_equal(array[:], again[key][:]), (pattern, key)


def test_unlabelled_images_join_the_pseudo_mask_store(annotated, tmp_path, tiny_root):
    extra = tmp_path / "unlabelled"
    extra.mkdir()
    for i, size in enumerate([(50, 40), (33, 61)]):
        Image.fromarray(np.full((*size, 3), 60 * i, np.uint8)).save(extra / f"x{i}.jpg")
    code, _ = cli(
        "write-pseudo-masks",
        "--index",
        annotated / "dataset",
        "--features",
        artifact(annotated, layout.FEATURES),
        "--clusters",
        artifact(annotated, layout.CLUSTERS, fold=0),
        "--out",
        tmp_path / "pm.zarr",
        "--unlabeled",
        extra,
        "--encoder-init",
        artifact(annotated, layout.ENCODER_INIT),
    )
    assert code == 0
    group = zarr.open_group(str(tmp_path / "pm.zarr"), mode="r")
    assert group["image_id"][-2:].tolist() == [-1, -1]
    assert group["height"][-2:].tolist() == [50, 33] and group["width"][-2:].tolist() == [40, 61]
    assert group.attrs["unlabeled"] == [str(extra / "x0.jpg"), str(extra / "x1.jpg")]
    assert (group["masks"][-1][:33, :61] <= 3).all()
    labelled = zarr.open_group(str(artifact(annotated, layout.PSEUDO_MASKS, fold=0)), mode="r")
    rows = labelled["image_id"].shape[0]  # the fold's train set, then the unlabelled images
    assert np.array_equal(group["masks"][:rows], labelled["masks"][:])


def test_zarr_round_trip_with_chunk_aligned_row_writes(tmp_path):
    group = store.create_group(tmp_path / "t.zarr", note="test")
    array = store.create_array(group, "rows", (10, 3), "float32", chunks=(4, 3))
    writer = store.RowWriter(array)
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    for part in (data[:3], data[3:4], data[4:9], data[9:]):
        writer.append(part)
    writer.close()
    back = store.open_group(tmp_path / "t.zarr", "test")
    assert np.array_equal(back["rows"][:], data) and back.attrs["note"] == "test"


def test_inspect_renders_figures_and_summary(annotated, tmp_path, capsys):
    for view in ("pseudo-masks", "prototypes"):
        out = tmp_path / f"{view}.png"
        code, err = cli(
            "inspect", view, "--results", annotated, "--fold", "0", "--out", out, capsys=capsys
        )
        assert code == 0, err
        assert Image.open(out).size[0] > 100
    explicit = (
        "--index",
        annotated / "dataset",
        "--pseudo-masks",
        artifact(annotated, layout.PSEUDO_MASKS, fold=1),
    )  # as the workflow's rule passes them
    code, err = cli(
        "inspect", "pseudo-masks", *explicit, "--out", tmp_path / "explicit.png", capsys=capsys
    )
    assert code == 0 and Image.open(tmp_path / "explicit.png").size[0] > 100, err
    code, err = cli(
        "inspect", "prototypes", "--results", annotated, "--out", tmp_path / "p.png", capsys=capsys
    )
    assert code == 2 and err.strip() == "ERROR: inspect prototypes: give --clusters, or --fold"
    assert cli("inspect", "summary", "--results", annotated)[0] == 0
    text = capsys.readouterr().out
    for name in ("features.zarr", "feats", "prototypes.zarr", "fg_class", "centroids", "masks"):
        assert name in text


def test_unlabelled_images_need_the_initial_encoder(annotated, tmp_path, capsys):
    (tmp_path / "extra").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "extra/a.png")
    code, err = cli(
        "write-pseudo-masks",
        "--index",
        annotated / "dataset",
        "--features",
        artifact(annotated, layout.FEATURES),
        "--clusters",
        artifact(annotated, layout.CLUSTERS, fold=0),
        "--out",
        tmp_path / "pm.zarr",
        "--unlabeled",
        tmp_path / "extra",
        capsys=capsys,
    )
    assert code == 2 and err.strip() == (
        "ERROR: --unlabeled images need --encoder-init (encoder_init.pt) to embed them"
    )
    assert not (tmp_path / "pm.zarr").exists()


def test_without_features_zarr_the_features_are_computed_again_to_the_same_bits(
    annotated, tmp_path, on_cpu
):
    """annotation.keep_features: false. extract-features writes only encoder_init.pt (CPU
    tensors); pool-prototypes and write-pseudo-masks compute the features again from it, in
    extract-features' batches (5 here, the last one partial), and write the same arrays."""
    index, clusters = annotated / "dataset", artifact(annotated, layout.CLUSTERS, fold=0)
    code, _ = cli(
        "extract-features",
        "--index",
        index,
        "--encoder-out",
        tmp_path / "e.pt",
        "--encoder",
        ENCODER,
        "--params",
        ANNOTATION,
    )
    assert code == 0 and not list(tmp_path.glob("*.zarr"))
    saved, first = (
        torch.load(p, weights_only=True)["state_dict"]
        for p in (tmp_path / "e.pt", artifact(annotated, layout.ENCODER_INIT))
    )
    assert all(v.device.type == "cpu" and torch.equal(v, first[k]) for k, v in saved.items())
    computed = ("--encoder-init", tmp_path / "e.pt", "--annotation", ANNOTATION)
    stored = ("--features", artifact(annotated, layout.FEATURES))
    steps = {"prototypes.zarr": ("pool-prototypes",)}
    for images in ("train_set", "remain"):
        steps[f"{images}.zarr"] = ("write-pseudo-masks", "--clusters", clusters, "--images", images)
    for name, step in steps.items():
        for source, out in ((stored, tmp_path / "stored" / name), (computed, tmp_path / name)):
            assert cli(*step, "--index", index, *source, "--out", out)[0] == 0, step
        a, b = (zarr.open_group(str(p / name), mode="r") for p in (tmp_path / "stored", tmp_path))
        assert sorted(a.array_keys()) == sorted(b.array_keys())
        for key in a.array_keys():
            assert np.array_equal(a[key][:], b[key][:]), (name, key)
    remain = zarr.open_group(str(tmp_path / "remain.zarr"), mode="r")["image_id"].shape[0]
    assert 0 < remain < 24  # a subset: only the batches that hold its images are computed
    masks = zarr.open_group(str(artifact(annotated, layout.PSEUDO_MASKS, fold=0)), mode="r")[
        "masks"
    ][:]
    assert np.array_equal(zarr.open_group(str(tmp_path / "train_set.zarr"))["masks"][:], masks)


def test_features_come_from_a_store_or_an_encoder(annotated, tmp_path, capsys):
    code, err = cli(
        "pool-prototypes",
        "--index",
        annotated / "dataset",
        "--out",
        tmp_path / "p.zarr",
        capsys=capsys,
    )
    assert code == 2 and err.strip() == (
        "ERROR: give --features (features.zarr) or --encoder-init (encoder_init.pt)"
    )
