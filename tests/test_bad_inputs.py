"""Bad input: one line `ERROR: ...` naming the file or key, exit code 2, no traceback, and
nothing already written is lost or left half-written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import cli, params, run_latentfss


@pytest.fixture
def root(tiny_root, tmp_path):
    """A private copy of the tiny dataset that a test may damage."""
    return shutil.copytree(tiny_root, tmp_path / "voc")


def prepare(capsys, out, **section):
    return cli("prepare", "--out", out, "--params", params(**section), capsys=capsys)


def assert_one_error_line(err: str, *needles: str) -> None:
    """The error is one line, the last one; only progress bars may come before it."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("ERROR: "), err
    assert not any("ERROR" in line or "Traceback" in line for line in lines[:-1]), err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def damage_corrupt(root):
    path = root / "JPEGImages/train_00003.jpg"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path, "not a readable image"


def damage_truncated(root):
    path = root / "JPEGImages/val_00001.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, "image file is truncated"


def damage_mask_size(root):
    path = root / "SegmentationClassAug/train_00005.png"
    mask = Image.open(path)
    mask.resize((mask.width + 7, mask.height)).save(path)
    return path, f"mask is {mask.width + 7}x{mask.height} but its image train_00005.jpg is"


def damage_label_range(root):
    path = root / "SegmentationClassAug/train_00002.png"
    labels = np.array(Image.open(path))
    labels[0, 0] = 42
    Image.fromarray(labels, mode="L").save(path)
    return path, "label 42 is out of range (expected 0..20 or 255)"


def damage_rgb_mask(root):
    path = root / "SegmentationClassAug/val_00000.png"
    Image.open(path).convert("RGB").save(path)
    return path, "mask has mode RGB"


def damage_list_entry(root):
    with open(root / "ImageSets/Segmentation/train.txt", "a") as f:
        f.write("2008_999999\n")
    return root / "JPEGImages/2008_999999.jpg", "no such file"


def damage_missing_list(root):
    (root / "ImageSets/Segmentation/val.txt").unlink()
    return root / "ImageSets/Segmentation/val.txt", "list file not found"


DAMAGES = [
    damage_corrupt,
    damage_truncated,
    damage_mask_size,
    damage_label_range,
    damage_rgb_mask,
    damage_list_entry,
    damage_missing_list,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.__name__.removeprefix("damage_"))
@pytest.mark.parametrize("threads", [1, 2])
def test_bad_dataset_file_is_named_and_the_old_index_survives(
    root, tmp_path, capsys, damage, threads
):
    out = tmp_path / "dataset"
    assert prepare(capsys, out, root=str(root))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    path, reason = damage(root)
    code, err = cli(
        "prepare",
        "--out",
        out,
        "--params",
        params(root=str(root)),
        "--threads",
        str(threads),
        capsys=capsys,
    )
    assert code == 2
    assert_one_error_line(err, str(path), reason)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "voc"]  # no temp left


@pytest.mark.parametrize(
    "section,needle",
    [
        (
            {"name": "pascal", "root": "/no/such/VOC2012"},
            "/no/such/VOC2012: dataset root not found",
        ),
        ({"name": "coco", "root": "/no/such/coco"}, "/no/such/coco: dataset root not found"),
        ({"nmae": "pascal"}, "unknown key 'dataset.nmae' (known here: name, root, train_list)"),
        ({"root": 3}, "dataset.root: 3 is not of type str"),
        ({"name": "kitti"}, "dataset: name must be one of synthetic, pascal, coco"),
    ],
)
def test_bad_dataset_config_is_named(tmp_path, capsys, section, needle):
    code, err = prepare(capsys, tmp_path / "dataset", **section)
    assert code == 2
    assert_one_error_line(err, needle)
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_coco_json_is_named(tmp_path, capsys):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/instances_train2014.json").write_text('{"images": [')
    code, err = prepare(capsys, tmp_path / "out", name="coco", root=str(tmp_path))
    assert code == 2
    assert_one_error_line(err, "instances_train2014.json: not valid JSON")


def test_bad_synthetic_params_are_named(tmp_path, capsys):
    code, err = cli(
        "make-synthetic", "--out", tmp_path / "s", "--params", params(num_train=0), capsys=capsys
    )
    assert code == 2
    assert_one_error_line(err, "synthetic: num_train and num_val must be positive")
    code, err = cli(
        "make-synthetic",
        "--out",
        tmp_path / "s",
        "--params",
        params(max_objects="4"),
        capsys=capsys,
    )
    assert_one_error_line(err, "synthetic.max_objects: '4' is not of type int")


def test_make_synthetic_never_overwrites_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.tex").write_text("precious")
    code, err = cli("make-synthetic", "--out", tmp_path / "mine", capsys=capsys)
    assert code == 2
    assert_one_error_line(err, "is not a synthetic dataset; refusing to overwrite it")
    assert (tmp_path / "mine/thesis.tex").read_text() == "precious"


def test_the_console_script_prints_one_line_and_exits_2(root):
    """The same through a real process: what a user or a Snakemake log sees."""
    path, reason = damage_truncated(root)
    done = run_latentfss(
        "prepare", "--out", root.parent / "dataset", "--params", params(root=str(root))
    )
    assert done.returncode == 2
    assert_one_error_line(done.stderr, str(path), reason)


def test_an_altered_shipped_encoder_is_one_line_and_nothing_is_written(
    root, tmp_path, capsys, monkeypatch
):
    from latentfss import encoder

    assert prepare(capsys, tmp_path / "dataset", root=str(root))[0] == 0
    altered = tmp_path / "synthetic-resnet18.pt"
    altered.write_bytes(encoder.SYNTHETIC.read_bytes()[:-1000])  # a truncated copy
    monkeypatch.setattr(encoder, "SYNTHETIC", altered)
    out = tmp_path / "encoder_init.pt"
    code, err = cli(
        "extract-features",
        *("--index", tmp_path / "dataset", "--encoder-out", out),
        *("--encoder", params(weights="synthetic"), "--params", params(input_size=64)),
        capsys=capsys,
    )
    assert code == 2 and not out.exists()
    assert_one_error_line(err, str(altered), "sha256", "altered or damaged")
