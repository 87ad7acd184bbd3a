"""Evaluation: metrics by hand, the episode protocol, Eq. 8-9 by hand, faiss, the stages."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from conftest import artifact, cli, params, summarize, summarize_runs, write_metrics
from latentfss import layout, runs
from latentfss import machine as machine_module
from latentfss.datasets.evaluation import pack, unpack
from latentfss.episodes import IGNORE
from latentfss.machine import describe_machine, machine
from latentfss.metrics import IoUMeter, iou_counts
from latentfss.region_bank import RegionBank, inner_product_index


def test_a_perfect_prediction_scores_one_and_background_zero():
    label = np.array([[0, 1, 1], [0, 1, IGNORE]])
    meter = IoUMeter([3])
    meter.update(np.where(label == IGNORE, 0, label), label, 3)
    assert meter.miou() == 1.0 and meter.fbiou() == 1.0
    empty = IoUMeter([3])
    empty.update(np.zeros_like(label), label, 3)
    assert empty.miou() == 0.0 and empty.per_class()[3] == 0.0


def test_ignored_pixels_count_for_nothing():
    label = np.array([[1, IGNORE], [0, 0]])
    meter = IoUMeter([1])
    meter.update(np.array([[1, 1], [0, 0]]), label, 1)  # wrong only where ignored
    assert meter.miou() == 1.0 and meter.fbiou() == 1.0


def test_counts_of_a_class_map_against_each_episodes_class_by_hand():
    label = torch.tensor([[[3, 3, 5, 0, IGNORE]]])  # one query's classes, two episodes on it
    preds = torch.tensor([[[1, 0, 1, 0, 1]], [[0, 0, 1, 1, 1]]], dtype=torch.bool)
    counts = iou_counts(preds, label, torch.tensor([3, 5])[:, None, None])
    # class 3: fg inter 1, union 3; bg inter 1 (the 0), union 3; the IGNORE pixel in neither
    # class 5: fg inter 1, union 2; bg inter 2, union 3
    assert counts.tolist() == [[[1, 3], [1, 3]], [[2, 3], [1, 2]]]


def test_many_episodes_added_at_once_sum_as_one_by_one_by_hand():
    # (episode, bg/fg, inter/union): classes 1, 2, 1
    counts = np.array([[[1, 3], [2, 4]], [[1, 3], [0, 2]], [[2, 2], [1, 1]]])
    meter = IoUMeter([1, 2])
    meter.add(counts, np.array([1, 2, 1]))
    assert (meter.inter, meter.union) == ({1: 3, 2: 0}, {1: 5, 2: 2})
    assert meter.fb_inter.tolist() == [4, 3] and meter.fb_union.tolist() == [8, 7]


def test_accumulation_over_episodes_and_classes_by_hand():
    meter = IoUMeter([1, 2])
    # class 1, episode a: fg inter 2, union 4; bg inter 1, union 3
    meter.update(np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0]), 1)
    # class 1, episode b: fg inter 1, union 1; bg inter 2, union 2
    meter.update(np.array([1, 0, 0]), np.array([1, 0, 0]), 1)
    # class 2: fg inter 0, union 2; bg inter 1, union 3
    meter.update(np.array([1, 0, 0]), np.array([0, 1, 0]), 2)
    assert meter.per_class() == {1: 3 / 5, 2: 0.0}  # summed before dividing, per class
    assert meter.miou() == pytest.approx(0.3)
    assert meter.fbiou() == pytest.approx((4 / 8 + 3 / 7) / 2)  # bg: 4/8, fg: 3/7


def test_a_packed_batch_crosses_from_a_worker_as_its_items_were():
    """Images of different sizes and their masks, one mask held twice (a query's label is its
    mask under resize none), through a loader worker and back: equal items, each tensor packed
    once."""
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(5, 7), (4, 9)]]
    masks = [torch.randint(0, 3, image.shape[1:], dtype=torch.uint8) for image in images]
    items = [
        {"image": images[0], "mask": masks[0], "label": masks[0], "covered": (5, 7)},
        (images[1], masks[1]),
    ]
    loader = DataLoader(items, batch_size=2, num_workers=1, collate_fn=pack)
    (batch,) = list(loader)
    assert batch.data.numel() == sum(t.numel() for t in [*images, *masks])
    first, second = unpack(batch)
    assert first.keys() == items[0].keys() and first["covered"] == (5, 7)
    for key in ("image", "mask", "label"):
        assert torch.equal(first[key], items[0][key])
    assert all(torch.equal(a, b) for a, b in zip(second, items[1], strict=True))


def test_faiss_returns_a_vector_as_its_own_nearest_neighbour():
    vectors = F.normalize(torch.randn(50, 16), dim=1).numpy()
    _, nearest = inner_product_index(vectors).search(vectors, 1)
    assert nearest[:, 0].tolist() == list(range(50))


def test_rectification_is_eq8_and_eq9_by_hand():
    torch.manual_seed(0)
    embeddings = F.normalize(torch.randn(3, 8), dim=1)
    regions = torch.randn(5, 8)  # image 0: rows 0-1, image 1: rows 2-4, image 2: none
    offsets = torch.tensor([0, 2, 5, 5])
    bank = RegionBank(inner_product_index(embeddings.numpy()), regions, offsets, top_n=2, beta=0.2)
    p_s = torch.randn(1, 8)
    out = bank.rectify(p_s, embeddings[1:2])
    nearest = bank.nearest_images(embeddings[1:2])[0]
    assert nearest[0] == 1  # the support's embedding finds its own image first
    picked = []
    for image in nearest:
        rows = regions[bank.offsets[image] : bank.offsets[image + 1]]
        if len(rows):  # an image without sub-cluster regions offers none
            cos = F.cosine_similarity(rows, p_s, dim=1)
            picked.append((rows[cos.argmax()], cos.max()))
    mu = torch.stack([c for _, c in picked]) / sum(c for _, c in picked)  # Eq. 9
    expected = 0.8 * p_s[0] + 0.2 * sum(m * r for m, (r, _) in zip(mu, picked, strict=True))
    torch.testing.assert_close(out[0], expected)
    images, rows, weights = bank.relevant(p_s, embeddings[1:2])  # what Eq. 8 mixes
    assert images[0].tolist() == nearest.tolist()
    kept = rows[0] >= 0
    torch.testing.assert_close(regions[rows[0][kept]], torch.stack([r for r, _ in picked]))
    torch.testing.assert_close(weights[0][kept], mu)


def test_bank_holds_every_train_image_and_its_regions(evaluated, annotated):
    import zarr

    train_set = zarr.open_group(str(artifact(annotated, layout.CLUSTERS, fold=0)), mode="r")[
        "train_set"
    ][:]
    assert 0 < len(train_set) <= 24
    index = faiss.read_index(str(evaluated / "bank/images.faiss"))
    assert index.ntotal == len(train_set)
    regions = zarr.open_group(str(evaluated / "bank/regions.zarr"), mode="r")
    assert np.array_equal(regions["image_id"][:], train_set)
    labels, images = regions["label"][:], regions["image"][:]
    assert regions["prototypes"].shape == (len(labels), 256)
    assert set(labels.tolist()) <= {1, 2, 3} and (np.diff(images) >= 0).all()
    masks = zarr.open_group(str(artifact(annotated, layout.PSEUDO_MASKS, fold=0)), mode="r")
    first = masks["masks"][0, : masks["height"][0], : masks["width"][0]]
    assert sorted(labels[images == 0].tolist()) == sorted(set(first[first > 0].tolist()))


def test_build_bank_keeps_no_array_of_an_image_it_has_banked(
    evaluated, annotated, tmp_path, monkeypatch
):
    """Per-image arrays held until the end fragment the heap between the feature maps: at
    PASCAL's 5,265 images build-bank's peak RSS was 7.8 GB with them, 1.4 GB without
    (bench/rehearsal.py). Each image's rows are written in place, so at most the current
    image's arrays are alive."""
    import weakref

    from latentfss import region_bank

    made, alive = [], []

    def tracked(function):
        def call(*args):
            alive.append(sum(ref() is not None for ref in made))
            out = function(*args)
            made.extend(weakref.ref(a) for a in (out if isinstance(out, tuple) else (out,)))
            return out

        return call

    for name in ("region_prototypes", "image_embedding"):
        monkeypatch.setattr(region_bank, name, tracked(getattr(region_bank, name)))
    args = ("--index", annotated / "dataset", "--model", evaluated / "model.pt")
    args += (
        "--pseudo-masks",
        artifact(annotated, layout.PSEUDO_MASKS, fold=0),
        "--out",
        tmp_path / "bank",
    )
    assert cli("build-bank", *args, "--params", params(input_size=64))[0] == 0
    assert len(alive) == 2 * 23 and max(alive) <= 4  # at most one image's arrays


def test_evaluation_outputs_and_replay(evaluated, annotated, capsys, on_cpu):
    metrics = json.loads((evaluated / "eval/metrics.json").read_text())
    assert set(metrics["runs"]) == {"seed0", "seed1"}
    assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["fbiou"] <= 1
    assert metrics["miou"] == pytest.approx(np.mean([r["miou"] for r in metrics["runs"].values()]))
    assert set(metrics["per_class"]) <= {"1", "2", "3", "4", "5"} and metrics["parameters"] > 0
    episodes = pd.read_csv(evaluated / "eval/episodes_seed1.csv")
    assert episodes.columns.tolist() == ["episode", "query", "class_id", "supports"]
    assert len(episodes) == 12 and episodes["class_id"].between(1, 5).all()
    replay = evaluated / "replay"
    faiss.omp_set_num_threads(2)
    code, err = cli(
        "evaluate",
        "--index",
        annotated / "dataset",
        "--model",
        evaluated / "model.pt",
        "--bank",
        evaluated / "bank",
        "--fold",
        "0",
        "--shot",
        "1",
        "--out",
        replay,
        "--episodes",
        evaluated / "eval/episodes_seed1.csv",
        "--params",
        params(input_size=64, batch_size=3, workers=0),
        capsys=capsys,
    )
    assert code == 0, err
    assert faiss.omp_get_max_threads() == 1  # the bank's searches keep to --threads (default 1)
    again = json.loads((replay / "metrics.json").read_text())["runs"]["episodes_seed1"]
    assert again["miou"] == pytest.approx(metrics["runs"]["seed1"]["miou"])
    assert again["fbiou"] == pytest.approx(metrics["runs"]["seed1"]["fbiou"])
    per_class = pd.read_csv(evaluated / "eval/per_class.csv")
    assert per_class.columns.tolist() == ["class_id", "class_name", "iou"]


def test_summary_tables(evaluated):
    text = (evaluated / "summary.md").read_text()
    assert "| Row | shot | fold0 | Mean | sd train | sd test | Δ |" in text
    assert "| main | 1 |" in text and "episodes/s" in text
    table = pd.read_csv(evaluated / "summary.csv")
    assert table[["row", "shot", "fold"]].values.tolist() == [["main", 1, 0]]


def test_the_summary_says_where_models_were_trained_and_evaluated(tmp_path, capsys):
    here, there = machine(), {**machine(), "cpu": "Another CPU"}
    evaluations = [
        f"main={write_metrics(tmp_path / 'a/metrics.json', 0, 0.5, machine=here)}",
        f"main={write_metrics(tmp_path / 'b/metrics.json', 1, 0.5, machine=there)}",
    ]
    text = summarize(tmp_path, evaluations, capsys).split("## Machine")[1]
    assert f"- training: {describe_machine(here)} (1 model)" in text
    assert f"- training: {describe_machine(there)} (1 model)" in text
    assert f"- evaluation: {describe_machine(here)} (1 evaluation)" in text
    assert here["cpu"] and here["torch"] == torch.__version__
    assert here["torch_threads"] == torch.get_num_threads()


def test_the_machine_record_without_cpuinfo_says_its_extensions_are_unknown(monkeypatch):
    monkeypatch.setattr(machine_module, "CPUINFO", Path("/nonexistent/cpuinfo"))
    record = machine()
    assert record["vector_extensions"] is None and record["cpu"]
    assert "(vector extensions unknown)" in describe_machine(record)


def evaluations_of(tmp_path: Path, *rows: str) -> list[str]:
    """The `ROW=METRICS` evaluations summarize_runs wrote for `rows`."""
    return [f"{row}={p}" for row in rows for p in sorted(tmp_path.glob(f"{row}_*/*/metrics.json"))]


def test_one_table_of_every_row_with_its_paired_difference_to_the_reference(tmp_path, capsys):
    runs = {"main": (0.60, 0.70), "none": (0.40, 0.50), "bg": (0.45, 0.55)}
    text = summarize_runs(tmp_path, runs, capsys, "--reference", "none")
    table = text.split("\n\n")[2].splitlines()
    assert table == [  # every episode of a row at the same IoU: intervals of one point
        "| Row | shot | fold0 | fold1 | Mean | sd train | sd test | Δ |",
        "|:--|---:|---:|---:|---:|---:|---:|---:|",
        "| main | 1 | 60.0 | 70.0 | **65.0** | – | 1.4 | **+20.0 [+20.0, +20.0]** |",
        "| none | 1 | 40.0 | 50.0 | **45.0** | – | 1.4 | reference |",
        "| bg | 1 | 45.0 | 55.0 | **50.0** | – | 1.4 | **+5.0 [+5.0, +5.0]** |",
    ]
    assert "reference row: none" in text
    assert len(pd.read_csv(tmp_path / "s.csv")) == 6
    text = summarize(tmp_path, evaluations_of(tmp_path, *runs), capsys)  # reference: the first
    assert "| main | 1 | 60.0 | 70.0 | **65.0** | – | 1.4 | reference |" in text


def test_the_rows_section_says_what_each_row_overrides_and_whose_work_it_uses(tmp_path, capsys):
    rows = {"main": {}, "beta": {"evaluate": {"beta": 0.5}}, "k": {"cluster": {"k": 3}}}
    config = {"runs": rows, **{name: {} for name in runs.SECTIONS}}
    shared = {
        "pretrain": {},
        "features": {"main": "main", "beta": "main", "k": "main"},
        "annotation": {"main": "main", "beta": "main", "k": "k"},
        "model": {"main": "main", "beta": "main", "k": "k"},
        "bank": {"main": "main", "beta": "main", "k": "k"},
        "evaluate": {"main": "main", "beta": "beta", "k": "k"},
    }
    metrics = write_metrics(tmp_path / "m/metrics.json", 0, 0.5)
    described = json.dumps(runs.describe(config, shared))
    text = summarize(tmp_path, [f"{row}={metrics}" for row in rows], capsys, "--rows", described)
    text = text.split("## Rows\n\n")[1].split("\n\n")[0]
    assert text.splitlines()[2:] == [
        "| main | – | – |",
        "| beta | evaluate.beta: 0.5 | features: main, annotation: main, model: main, bank: main |",
        "| k | cluster.k: 3 | features: main |",
    ]


def test_training_seeds_are_averaged_with_their_spread_and_widen_the_interval(tmp_path, capsys):
    evaluations = []
    for seed in (0, 1, 2):
        for fold in (0, 1):
            for row, miou in (("main", 0.60 + 0.01 * seed), ("none", 0.40)):
                path = tmp_path / f"{row}_{seed}/{fold}/metrics.json"
                evaluations.append(f"{row}={write_metrics(path, fold, miou, train_seed=seed)}")
    text = summarize(tmp_path, evaluations, capsys, "--reference", "none")
    table = pd.read_csv(tmp_path / "s.csv").set_index(["row", "fold"])
    assert table.loc[
        ("main", 0), ["miou", "miou_train_std", "train_seeds"]
    ].tolist() == pytest.approx([61.0, 1.0, 3])
    assert table.loc[("none", 0), "miou_train_std"] == 0
    row = next(line for line in text.splitlines() if line.startswith("| main |"))
    cells = row.strip("| ").split(" | ")
    assert cells[2:7] == ["61.0", "61.0", "**61.0**", "1.0", "1.4"]  # folds, mean, sd train, test
    low, high = map(float, cells[7].strip("*").split("[")[1].rstrip("]").split(", "))
    assert 20.0 <= low < 21.0 < high <= 22.0  # within the seeds' own range, +20 to +22


def test_an_evaluation_without_its_scores_is_one_line(tmp_path, capsys):
    summarize_runs(tmp_path, {"main": (0.60,)}, capsys)
    (tmp_path / "main_0/0/scores.csv").unlink()
    code, err = cli(
        "summarize",
        f"main={tmp_path / 'main_0/0/metrics.json'}",
        "--csv",
        tmp_path / "a.csv",
        "--md",
        tmp_path / "a.md",
        capsys=capsys,
    )
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"ERROR: {tmp_path / 'main_0/0/scores.csv'}: missing; run `latentfss evaluate` again"
    )


def test_rows_not_scored_on_the_same_episodes_get_no_interval(tmp_path, capsys, caplog):
    summarize_runs(tmp_path, {"main": (0.60, 0.70), "none": (0.40, 0.50)}, capsys)
    scores = tmp_path / "none_0/0/scores.csv"
    pd.read_csv(scores).assign(class_id=3).to_csv(scores, index=False)
    text = summarize(tmp_path, evaluations_of(tmp_path, "main", "none"), capsys)
    why = "fold 0, seed0: runs that scored other episodes (not paired)"
    assert f"no intervals: {why}" in caplog.text
    assert "| none | 1 | 40.0 | 50.0 | **45.0** | – | 1.4 | – |" in text


def support_files(tiny_root, tmp_path, name="val_00001"):
    """A val image and a 0/255 mask of one of its classes, as a user would bring them."""
    from PIL import Image

    labels = np.array(Image.open(tiny_root / f"SegmentationClassAug/{name}.png"))
    class_id = next(c for c in np.unique(labels) if 0 < c < IGNORE)
    Image.fromarray(((labels == class_id) * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    return tiny_root / f"JPEGImages/{name}.jpg", tmp_path / "mask.png"


def test_segment_writes_a_mask_and_an_overlay_per_query(evaluated, tiny_root, tmp_path, capsys):
    from PIL import Image

    image, mask = support_files(tiny_root, tmp_path)
    queries = tmp_path / "queries"
    queries.mkdir()
    for name in ("val_00001", "val_00004"):
        (queries / f"{name}.jpg").write_bytes((tiny_root / f"JPEGImages/{name}.jpg").read_bytes())
    code, err = cli(
        "segment",
        "--model",
        evaluated / "model.pt",
        "--support",
        image,
        mask,
        "--support",
        image,
        mask,
        "--query",
        queries,
        "--out",
        tmp_path / "out",
        "--bank",
        evaluated / "bank",
        "--input-size",
        "64",
        capsys=capsys,
    )
    assert code == 0, err
    for name in ("val_00001", "val_00004"):
        source = Image.open(queries / f"{name}.jpg")
        predicted = Image.open(tmp_path / f"out/{name}_mask.png")
        assert (
            predicted.size == source.size
            and Image.open(tmp_path / f"out/{name}_overlay.png").size == source.size
        )
        assert set(np.unique(np.array(predicted))) <= {0, 255}


def test_segment_reads_phone_photos_as_displayed(evaluated, tiny_root, tmp_path, capsys):
    from PIL import Image, ImageOps

    image, mask = support_files(tiny_root, tmp_path)  # the mask is drawn on the image as shown
    shown = Image.open(image)
    assert shown.width != shown.height
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate the stored pixels 90 degrees clockwise to display
    shown.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "phone.jpg"))
    assert upright.size == shown.size and Image.open(tmp_path / "phone.jpg").size != shown.size
    upright.save(tmp_path / "upright.png")  # the same pixels as displayed, untagged
    for query, out in (("phone.jpg", "tagged"), ("upright.png", "plain")):
        code, err = cli(
            "segment",
            "--model",
            evaluated / "model.pt",
            "--support",
            tmp_path / "phone.jpg",
            mask,
            "--query",
            tmp_path / query,
            "--out",
            tmp_path / out,
            "--input-size",
            "64",
            capsys=capsys,
        )
        assert code == 0, err
    tagged = np.array(Image.open(tmp_path / "tagged/phone_mask.png"))
    assert tagged.shape == (shown.height, shown.width)
    assert np.array_equal(tagged, np.array(Image.open(tmp_path / "plain/upright_mask.png")))
    assert Image.open(tmp_path / "tagged/phone_overlay.png").size == shown.size


def test_segment_refuses_bad_supports_in_one_line(evaluated, tiny_root, tmp_path, capsys):
    from PIL import Image

    image, mask = support_files(tiny_root, tmp_path)
    other = tiny_root / "JPEGImages/val_00002.jpg"
    Image.new("L", Image.open(image).size).save(tmp_path / "empty.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    cases = [
        ((other, mask), "mask.png: mask is"),
        ((image, tmp_path / "empty.png"), "the support mask is empty"),
        ((tmp_path / "broken.jpg", mask), "broken.jpg: not a readable image"),
    ]
    for (support_image, support_mask), needle in cases:
        code, err = cli(
            "segment",
            "--model",
            evaluated / "model.pt",
            "--support",
            support_image,
            support_mask,
            "--query",
            image,
            "--out",
            tmp_path / "out",
            capsys=capsys,
        )
        assert code == 2 and err.startswith("ERROR: ") and needle in err and err.count("\n") == 1


def test_a_bank_built_for_another_model_or_input_is_refused(evaluated, annotated, tmp_path, capsys):
    other = tmp_path / "model.pt"  # the same bytes, made again: another model.pt
    other.write_bytes((evaluated / "model.pt").read_bytes())
    for model, resize, needle in (
        (other, "none", "another model_identity"),
        (evaluated / "model.pt", "square", "another resize"),
    ):
        code, err = cli(
            "evaluate",
            "--index",
            annotated / "dataset",
            "--model",
            model,
            "--bank",
            evaluated / "bank",
            "--fold",
            "0",
            "--shot",
            "1",
            "--out",
            tmp_path / "eval",
            "--params",
            params(resize=resize, workers=0),
            capsys=capsys,
        )
        assert code == 2 and needle in err and "build-bank" in err and err.count("\n") == 1
        assert not (tmp_path / "eval").exists()


def test_a_replayed_list_of_another_fold_or_shot_is_refused(evaluated, annotated, tmp_path, capsys):
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    listed, junk = evaluated / "eval/episodes_seed0.csv", tmp_path / "junk.csv"
    for episodes, fold, shot, needle in (
        (listed, "1", "1", "does not have"),
        (listed, "0", "5", "not 5-shot"),
        (junk, "0", "1", "not an episode list"),
    ):
        code, err = cli(
            "evaluate",
            "--index",
            annotated / "dataset",
            "--model",
            evaluated / "model.pt",
            "--fold",
            fold,
            "--shot",
            shot,
            "--out",
            tmp_path / "eval",
            "--episodes",
            episodes,
            "--params",
            params(fg_rectify=False, workers=0),
            capsys=capsys,
        )
        assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "eval").exists()


def test_rectification_without_a_bank_is_one_line(evaluated, annotated, tmp_path, capsys):
    code, err = cli(
        "evaluate",
        "--index",
        annotated / "dataset",
        "--model",
        evaluated / "model.pt",
        "--fold",
        "0",
        "--shot",
        "1",
        "--out",
        tmp_path / "eval",
        capsys=capsys,
    )
    assert code == 2
    assert err.strip() == "ERROR: evaluate.fg_rectify needs --bank (run `latentfss build-bank`)"
    assert not (tmp_path / "eval").exists()
