"""The encoder's pre-training: factor labels only, its own image streams, determinism, and
weights that load as any other weight source."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from conftest import cli, params
from latentfss.config import EncoderConfig, PretrainConfig, SyntheticConfig
from latentfss.datasets import synthetic
from latentfss.encoder import Classifier, build_encoder
from latentfss.pretraining import (
    crops,
    factor_labels,
    layer3_agreement,
    learning_rate,
    render,
    storable,
)

TINY = params(images=6, heldout=4, steps=3, batch_size=4, crop=32, log_every=2)
WORLD = params(min_size=48, max_size=64)


def test_factor_table_marks_a_colour_and_a_pattern_per_class_and_none_for_background():
    table = synthetic.factor_table()
    assert table.shape == (21, 9) and not table[0].any()
    colours, patterns = table[1:, :4], table[1:, 4:]
    assert (colours.sum(1) == 1).all() and (patterns.sum(1) == 1).all()
    assert len({tuple(row) for row in table[1:]}) == 20  # the 20 classes, told apart by the pair
    names = synthetic.COLOURS + synthetic.PATTERNS
    assert [names[i] for i in np.flatnonzero(table[4])] == list(synthetic.class_factors(4))


def test_factor_labels_are_the_factors_of_the_classes_covering_enough_pixels():
    mask = np.zeros((8, 8), np.uint8)
    mask[:3, :4] = 1  # red-striped, 12 pixels
    mask[7, :3] = 8  # green-dotted, 3 pixels
    mask[6, :] = 255  # never a class
    labels = factor_labels([mask, mask], [5, 3])
    names = synthetic.COLOURS + synthetic.PATTERNS
    shown = [{names[i] for i in np.flatnonzero(row)} for row in labels.numpy()]
    assert shown == [{"red", "striped"}, {"red", "striped", "green", "dotted"}]


def test_crops_are_drawn_from_the_generator_and_label_what_they_show():
    image = np.full((40, 50, 3), 128, np.uint8)
    mask = np.full((40, 50), 7, np.uint8)  # class 7 everywhere: green-checkered
    cfg = PretrainConfig(batch_size=3, crop=32, scale=(1.0, 1.5))
    first = crops([(image, mask)], cfg, torch.Generator().manual_seed(0))
    again = crops([(image, mask)], cfg, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    images, labels = first
    assert images.shape == (3, 3, 32, 32) and torch.allclose(images, torch.tensor(128 / 255))
    assert torch.equal(labels, torch.from_numpy(synthetic.factor_table()[[7, 7, 7]]))


def test_learning_rate_warms_up_then_decays_to_zero():
    cfg = PretrainConfig(steps=100, lr=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(0.01)
    assert learning_rate(cfg, 9) == pytest.approx(0.1)
    assert learning_rate(cfg, 99) < 1e-3


def test_stored_weights_drop_the_classifier_and_halve_the_conv_kernels_only():
    exact = Classifier("resnet18", 9).state_dict()
    stored = storable(exact)
    assert stored.keys() == {k for k in exact if not k.startswith("fc.")}
    for key, value in stored.items():
        assert value.dtype == (torch.float16 if exact[key].dim() == 4 else exact[key].dtype), key
        assert torch.equal(value, exact[key].to(value.dtype)), key
    images = [np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)]
    same = layer3_agreement("resnet18", exact, exact, images)
    assert same == {"relative_error": 0.0, "min_cosine": pytest.approx(1.0, abs=1e-6)}
    rounded = layer3_agreement("resnet18", exact, stored, images)
    assert 0 < rounded["relative_error"] < 1e-2 and rounded["min_cosine"] > 0.999


def test_the_corpus_is_not_the_benchmark():
    world = SyntheticConfig(min_size=48, max_size=64)
    corpus = render(world, "pretrain", 3, workers=0)
    heldout = render(world, "pretrain-heldout", 3, workers=0)
    for i in range(3):
        for stream, images in (("train", corpus), ("val", corpus), ("train", heldout)):
            image, _ = synthetic.render_image(world, synthetic.image_rng(world.seed, stream, i))
            assert image.shape != images[i][0].shape or not np.array_equal(image, images[i][0])
    again = render(world, "pretrain", 3, workers=2)  # the same images for any number of workers
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(corpus, again, strict=True))


def test_rendered_images_hold_no_open_file():
    """Arrays from the workers' shared memory each keep a file descriptor open while they
    live: a corpus of thousands ran out of them."""
    world = SyntheticConfig(min_size=48, max_size=64)
    before = len(os.listdir("/proc/self/fd"))
    images = render(world, "pretrain", 40, workers=2)
    assert len(os.listdir("/proc/self/fd")) < before + 40 and len(images) == 40


def test_pretrain_encoder_is_deterministic_and_its_weights_load_as_any_weights(
    tmp_path, capsys, caplog, on_cpu
):
    outs = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for out in outs:
        argv = ("pretrain-encoder", "--out", out, "--params", TINY, "--synthetic", WORLD)
        assert cli(*argv, "--threads", "1", capsys=capsys)[0] == 0
    a, b = (torch.load(out, weights_only=True) for out in outs)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    state = a["state_dict"]
    assert "layer4.1.conv2.weight" in state and not any(k.startswith("fc.") for k in state)
    assert state["layer4.1.conv2.weight"].dtype == torch.float16  # conv kernels: fp16
    assert state["layer4.1.bn2.running_var"].dtype == torch.float32
    assert set(a["heldout_accuracy"]) == {"colour", "pattern"} and len(a["losses"]) == 2
    assert 0 < a["storage"]["relative_error"] < 1e-2 and a["storage"]["min_cosine"] > 0.99
    with caplog.at_level(logging.WARNING):
        encoder = build_encoder(EncoderConfig(weights=str(outs[0])))
    assert not caplog.records  # no missing or unexpected key: layer4 is dropped
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"].float())
