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

from conftest import cli, params, summarize, summarize_runs, write_metrics
from latentfss import machine as machine_module
from latentfss.episodes import IGNORE
from latentfss.machine import describe_machine, machine
from latentfss.metrics import IoUMeter
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

    train_set = zarr.open_group(str(annotated / "fold0/clusters.zarr"), mode="r")["train_set"][:]
    assert 0 < len(train_set) <= 24
    index = faiss.read_index(str(evaluated / "bank/images.faiss"))
    assert index.ntotal == len(train_set)
    regions = zarr.open_group(str(evaluated / "bank/regions.zarr"), mode="r")
    assert np.array_equal(regions["image_id"][:], train_set)
    labels, images = regions["label"][:], regions["image"][:]
    assert regions["prototypes"].shape == (len(labels), 256)
    assert set(labels.tolist()) <= {1, 2, 3} and (np.diff(images) >= 0).all()
    masks = zarr.open_group(str(annotated / "fold0/pseudo_masks.zarr"), mode="r")
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

    from latentfss.stages import build_bank

    made, alive = [], []

    def tracked(function):
        def call(*args):
            alive.append(sum(ref() is not None for ref in made))
            out = function(*args)
            made.extend(weakref.ref(a) for a in (out if isinstance(out, tuple) else (out,)))
            return out

        return call

    monkeypatch.setattr(build_bank, "region_prototypes", tracked(build_bank.region_prototypes))
    monkeypatch.setattr(build_bank, "image_embedding", tracked(build_bank.image_embedding))
    args = ("--index", annotated / "dataset", "--model", evaluated / "model.pt")
    args += ("--pseudo-masks", annotated / "fold0/pseudo_masks.zarr", "--out", tmp_path / "bank")
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
    assert "1-shot fold0" in text and "1-shot mean" in text and "episodes/s" in text
    table = pd.read_csv(evaluated / "summary.csv")
    assert table[["shot", "fold"]].values.tolist() == [[1, 0]]


def test_the_summary_says_where_models_were_trained_and_evaluated(tmp_path, capsys):
    here = machine()
    metrics = [
        write_metrics(tmp_path / "a/metrics.json", 0, 0.5, True, True, True, machine=here),
        write_metrics(tmp_path / "b/metrics.json", 1, 0.5, True, True, True),  # from before
    ]
    text = summarize(tmp_path, metrics, capsys).split("## Machine")[1]
    assert f"- training: {describe_machine(here)} (1 model)" in text
    assert "- training: not recorded (1 model)" in text
    assert f"- evaluation: {describe_machine(here)} (1 evaluation)" in text
    assert here["cpu"] and here["torch"] == torch.__version__
    assert here["torch_threads"] == torch.get_num_threads()


def test_the_machine_record_without_cpuinfo_says_its_extensions_are_unknown(monkeypatch):
    monkeypatch.setattr(machine_module, "CPUINFO", Path("/nonexistent/cpuinfo"))
    record = machine()
    assert record["vector_extensions"] is None and record["cpu"]
    assert "(vector extensions unknown)" in describe_machine(record)


def test_ablation_table_has_a_row_per_set_of_switches_in_the_papers_order(tmp_path, capsys):
    runs = {
        (1, 1, 1): (0.60, 0.70),
        (0, 0, 0): (0.40, 0.50),
        (0, 1, 0): (0.45, 0.55),
        (1, 0, 0): (0.42, 0.52),
    }
    text = summarize_runs(tmp_path, runs, main=(1, 1, 1), capsys=capsys)
    table = text[text.index("| FG | BG | Mine") :].split("\n\n")[0].splitlines()[2:]
    assert table == [  # every episode of a row at the same IoU: intervals of one point
        "|  |  |  | 1 | 40.0 | 50.0 | **45.0** | – | 1.4 | baseline |",
        "| ✓ |  |  | 1 | 42.0 | 52.0 | **47.0** | – | 1.4 | **+2.0 [+2.0, +2.0]** |",
        "|  | ✓ |  | 1 | 45.0 | 55.0 | **50.0** | – | 1.4 | **+5.0 [+5.0, +5.0]** |",
        "| ✓ | ✓ | ✓ | 1 | 60.0 | 70.0 | **65.0** | – | 1.4 | **+20.0 [+20.0, +20.0]** |",
    ]
    assert "| 1-shot fold0 | 1-shot fold1 | 1-shot mean |" in text  # Table 1: the main run only
    assert "**65.0**" in text.split("## Ablations")[0]
    assert len(pd.read_csv(tmp_path / "s.csv")) == 8


def test_training_seeds_are_averaged_with_their_spread_and_widen_the_interval(tmp_path, capsys):
    paths = []
    for seed in (0, 1, 2):
        for fold in (0, 1):
            for switches, miou in (((1, 1, 1), 0.60 + 0.01 * seed), ((0, 0, 0), 0.40)):
                name = f"{''.join(map(str, switches))}_{seed}/{fold}/metrics.json"
                paths.append(
                    write_metrics(
                        tmp_path / name, fold, miou, *map(bool, switches), train_seed=seed
                    )
                )
    text = summarize(tmp_path, paths, capsys)
    table = pd.read_csv(tmp_path / "s.csv").set_index(["mine", "fold"])
    assert table.loc[
        (True, 0), ["miou", "miou_train_std", "train_seeds"]
    ].tolist() == pytest.approx([61.0, 1.0, 3])
    assert table.loc[(False, 0), "miou_train_std"] == 0
    row = next(line for line in text.splitlines() if line.startswith("| ✓ | ✓ | ✓ |"))
    cells = row.strip("| ").split(" | ")
    assert cells[4:9] == ["61.0", "61.0", "**61.0**", "1.0", "1.4"]  # folds, mean, sd train, test
    low, high = map(float, cells[9].strip("*").split("[")[1].rstrip("]").split(", "))
    assert 20.0 <= low < 21.0 < high <= 22.0  # within the seeds' own range, +20 to +22
    assert "standard deviation 1.4 over the test seeds, 1.0 over the training seeds (3)" in text


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda scores: scores.unlink(), "a run has no scores.csv (evaluated before it)"),
        (
            lambda scores: pd.read_csv(scores).assign(class_id=3).to_csv(scores, index=False),
            "fold 0, seed0: runs that scored other episodes (not paired)",
        ),
    ],
)
def test_rows_not_scored_on_the_same_episodes_get_no_interval(
    tmp_path, capsys, caplog, damage, why
):
    runs = {(1, 1, 1): (0.60, 0.70), (0, 0, 0): (0.40, 0.50)}
    summarize_runs(tmp_path, runs, main=(1, 1, 1), capsys=capsys)
    damage(tmp_path / "000_0/0/scores.csv")
    main = tmp_path / "111_0/0/metrics.json"
    variants = sorted(set(tmp_path.glob("*/[01]/metrics.json")) - {main})
    text = summarize(tmp_path, [main, *variants], capsys)
    assert f"no intervals: {why}" in caplog.text
    assert "| ✓ | ✓ | ✓ | 1 | 60.0 | 70.0 | **65.0** | – | 1.4 | – |" in text


def test_no_ablation_table_without_ablation_runs(evaluated):
    assert "Ablations" not in (evaluated / "summary.md").read_text()


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


def test_a_model_from_before_mining_remain_evaluates_and_summarizes(
    evaluated, annotated, tmp_path, capsys
):
    checkpoint = torch.load(evaluated / "model.pt")
    del checkpoint["config"]["mining"]  # as train wrote model.pt before mining.remain existed
    torch.save(checkpoint, tmp_path / "model.pt")
    code, err = cli(
        "evaluate",
        "--index",
        annotated / "dataset",
        "--model",
        tmp_path / "model.pt",
        "--fold",
        "0",
        "--shot",
        "1",
        "--out",
        tmp_path / "eval",
        "--episodes",
        evaluated / "eval/episodes_seed0.csv",
        "--params",
        params(fg_rectify=False, workers=0),
        capsys=capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert metrics["mining"] == {"remain": False}
    del metrics["mining"]  # and a metrics.json written before it
    (tmp_path / "eval/metrics.json").write_text(json.dumps(metrics))
    code, err = cli(
        "summarize",
        tmp_path / "eval/metrics.json",
        "--csv",
        tmp_path / "s.csv",
        "--md",
        tmp_path / "s.md",
        capsys=capsys,
    )
    assert code == 0, err
