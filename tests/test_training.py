"""Training: Eq. 4-7 in the model, the EMA, augmentation, sampling, the loop and its resume."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import artifact, cli, params, train_argv
from latentfss import layout
from latentfss.augment import scale_crop_flip, strong_photometric
from latentfss.config import ModelConfig, ProtocolConfig, TrainConfig
from latentfss.datasets.index import read_index
from latentfss.datasets.training import EpisodeSamples, PseudoSamples
from latentfss.ema import ModelEMA, warmed_up
from latentfss.encoder import Encoder
from latentfss.episodes import IGNORE, EpisodeSampler, base_classes
from latentfss.model import MatchingNet, Shots, cosine_logits, segmentation_loss
from latentfss.trainer import TrainJob, learning_rate, train


def small_model(**overrides) -> MatchingNet:
    torch.manual_seed(0)
    return MatchingNet(Encoder("resnet18"), ModelConfig(**overrides), pseudo_classes=4)


def test_global_background_moves_by_eq6_and_fuses_by_eq7():
    model = small_model(bg_momentum=0.9, bg_fusion=0.75)
    first, second = torch.randn(3, 256), torch.randn(2, 256)
    current = torch.randn(5, 256)
    assert torch.equal(model.background(current), current)  # nothing learnt yet: current alone
    model.update_background(first)
    torch.testing.assert_close(model.bg_global, first.mean(0))  # the first update sets it
    model.update_background(second)
    m = min(0.9, 2 / 11)  # Eq. 6's m, warmed up at its second update (t = 1)
    expected = m * first.mean(0) + (1 - m) * second.mean(0)
    torch.testing.assert_close(model.bg_global, expected)
    torch.testing.assert_close(model.background(current), 0.75 * expected + 0.25 * current)
    off = small_model(bg_rectify=False)
    off.update_background(first)
    assert torch.equal(off.background(current), current)


@pytest.mark.parametrize("momentum", [0.999, 0.5])
def test_eq6_forgets_its_first_batch_as_the_warm_up_says(momentum):
    """After n updates the batch of update i weighs (1 - m_i) prod_{t>i} m_t in the global
    background, m_t = min(m, (1 + t) / (10 + t)), m_0 = 0: one-hot batches read the weights off.
    The paper's 0.999 over 100 steps would leave the first batch 0.999^99 = 0.91 of it."""
    n = 100
    model = MatchingNet(Encoder("resnet18"), ModelConfig(bg_momentum=momentum), None)
    model.bg_global = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        model.update_background(F.one_hot(torch.tensor([i]), n).double())
    rates = [0.0] + [min(momentum, (1 + t) / (10 + t)) for t in range(1, n)]
    weights = [(1 - rates[i]) * np.prod(rates[i + 1 :]) for i in range(n)]
    torch.testing.assert_close(model.bg_global, torch.tensor(weights, dtype=torch.float64))
    assert model.bg_global.sum().item() == pytest.approx(1)
    assert model.bg_global[0] < 1e-9 and int(model.bg_seen) == n  # the start is forgotten
    # its last sixth weighs more than the paper's last 1000 of 6000 steps do
    assert model.bg_global[-n // 6 :].sum() > 1 - 0.999**1000


def test_matching_logits_are_sigma_times_cosine():
    feats, protos = torch.randn(2, 8, 3, 4), torch.randn(2, 2, 8)
    logits = cosine_logits(feats, protos, sigma=20)
    f = feats[1, :, 2, 3]
    expected = 20 * torch.nn.functional.cosine_similarity(f, protos[1, 1], dim=0)
    torch.testing.assert_close(logits[1, 1, 2, 3], expected)


def test_one_query_against_many_episodes_broadcasts_eq5():
    """evaluate_lists matches a query image's features (1, C, h, w) against all its episodes'
    prototypes (B, 2, C) at once: each episode's logits are its own sigma * cosine."""
    feats, protos = torch.randn(1, 8, 3, 4), torch.randn(3, 2, 8)
    logits = cosine_logits(feats, protos, sigma=20)
    assert logits.shape == (3, 2, 3, 4)
    f = feats[0, :, 1, 2]
    expected = 20 * torch.nn.functional.cosine_similarity(f, protos[2, 0], dim=0)
    torch.testing.assert_close(logits[2, 0, 1, 2], expected)


def test_one_images_shots_pooled_together_are_eq2_by_hand():
    """evaluate_lists pools all of a support image's (image, class) shots in one call: its
    features (1, C, h, w) against N masks at 2x the grid, each cell the mean of a 2 x 2 block."""
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, 40.0]]])[None]
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    masks[0, :2, :2] = 1  # the top-left cell is the class, the other three background
    masks[1, :, 0] = 1  # half of the left cells the class; half of the right ones ignored
    masks[1, :, 3] = IGNORE
    shots = small_model().shots(feats, masks)
    torch.testing.assert_close(shots.fg, torch.tensor([[1.0, 10.0], [2.0, 20.0]]))
    torch.testing.assert_close(shots.bg, torch.tensor([[3.0, 30.0], [2.5, 25.0]]))
    unit = F.normalize(torch.tensor([2.5, 25.0]), dim=0)
    torch.testing.assert_close(shots.embedding, unit.expand(2, 2))


def test_k_shot_prototypes_of_shots_of_different_sizes_average_their_eq2_prototypes():
    model = small_model()
    feats = [torch.randn(1, 256, 4, 4), torch.randn(1, 256, 2, 3)]
    masks = [torch.zeros(1, 4, 4, dtype=torch.uint8), torch.ones(1, 2, 3, dtype=torch.uint8)]
    masks[0][0, 1:3, 1:3] = 1  # shot 0: the centre is the class, the rest background
    masks[1][0, 0, :2] = 0  # shot 1: all class but two background cells, one of them ignored
    masks[1][0, 0, 1] = IGNORE
    shots = [model.shots(f, m) for f, m in zip(feats, masks, strict=True)]
    fg, bg = model.prototypes(Shots.stack(shots))
    centre = torch.zeros(4, 4, dtype=torch.bool)
    centre[1:3, 1:3] = True
    shot0, shot1 = feats[0][0], feats[1][0]
    shot1_fg = (shot1.sum(dim=(1, 2)) - shot1[:, 0, 0] - shot1[:, 0, 1]) / 4
    torch.testing.assert_close(fg[0], (shot0[:, centre].mean(1) + shot1_fg) / 2)
    torch.testing.assert_close(bg[0], (shot0[:, ~centre].mean(1) + shot1[:, 0, 0]) / 2)
    embeddings = [F.normalize(f[0].mean(dim=(1, 2)), dim=0) for f in feats]
    torch.testing.assert_close(shots[1].embedding[0], embeddings[1])


def test_no_mining_means_no_head():
    assert small_model(mine=False).head is None
    assert small_model().head is not None


def test_ema_update_is_exact():
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.99)
    before = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=5)
    d = min(0.99, 6 / 15)
    torch.testing.assert_close(ema.model.weight, d * before + (1 - d) * model.weight)
    assert warmed_up(0.99, 10_000) == 0.99


def test_learning_rate_drops_at_a_third_and_two_thirds():
    cfg = TrainConfig(iterations=6000, lr=1e-3)
    assert [learning_rate(cfg, s) for s in (0, 1999, 2000, 3999, 4000, 5999)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]
    )


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    model = small_model(mine=False)
    images = torch.randn(4, 3, 64, 64)
    masks = torch.zeros(4, 64, 64, dtype=torch.uint8)
    masks[:, 16:48, 16:48] = 1
    images[:, :, 16:48, 16:48] += 2.0  # the "object" differs from its surround
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    model.train()
    for _ in range(6):
        logits = model(images[:2], [images[2:]], [masks[2:]]).logits
        loss = segmentation_loss(logits, masks[:2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_a_micro_batched_step_is_the_full_step():
    """train.micro_batches: the encoder in 3 checkpointed parts of the 2 + 2x2 + 4 images; the
    mining head (and its BatchNorm) and the losses on the whole batch. Same losses, weights,
    head statistics and global background as one pass, up to float summation order."""
    from latentfss.encoder import Normalise
    from latentfss.trainer import train_step

    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 2, (2, 2, 48, 48), dtype=torch.uint8, generator=generator)
    episode = {
        "query": torch.randint(0, 255, (2, 3, 48, 48), dtype=torch.uint8, generator=generator),
        "supports": torch.randint(
            0, 255, (2, 2, 3, 48, 48), dtype=torch.uint8, generator=generator
        ),
        "support_masks": masks,
        "query_mask": masks[:, 1].clone(),
    }
    mining = (
        torch.randn(4, 3, 48, 48, generator=generator),
        torch.randint(0, 4, (4, 48, 48), generator=generator),
    )
    models, losses = [], []
    for micro_batches in (1, 3):
        model = small_model().train()
        for module in model.encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.requires_grad_(False)
        optimizer = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9
        )
        for _ in range(2):  # the second step also moves the momenta and the global background
            losses.append(
                train_step(
                    model,
                    episode,
                    mining,
                    optimizer,
                    Normalise(torch.device("cpu")),
                    1.0,
                    micro_batches,
                )
            )
        models.append(model.state_dict())
    assert torch.allclose(losses[0], losses[2]) and torch.allclose(losses[1], losses[3])
    full, micro = models
    assert full.keys() == micro.keys()
    for key, value in full.items():
        if value.is_floating_point():
            scale = float(value.abs().max())  # float sums differ with the threads: ~1e-5 of it
            assert torch.allclose(value, micro[key], rtol=0, atol=1e-4 * scale + 1e-7), key


def test_joint_crop_pads_masks_with_ignore_and_keeps_labels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:15, 10:30] = 1
    out_image, out_mask = scale_crop_flip(image, mask, rng, crop=64, scale=(1.0, 1.0))
    assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64)
    assert set(np.unique(out_mask)) == {0, 1, IGNORE}
    assert (out_mask == 1).sum() == (mask == 1).sum()  # scale 1: every pixel kept
    assert (out_image[out_mask == IGNORE] == 0).all()  # padding


def test_strong_photometric_is_per_image_seeded_and_in_range():
    images = torch.rand(6, 3, 32, 32)
    a = strong_photometric(images, torch.Generator().manual_seed(3))
    b = strong_photometric(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == images.shape
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, images)


def test_the_blur_kernel_is_a_tenth_of_the_image_as_simclrs():
    """9 taps at the synthetic crop of 96 (the fixed kernel before SimCLR's rule), 47 at the
    presets' 473, where 9 taps would cut a sigma of 2 off at two sigmas; the blur keeps each
    image's mean and reaches exactly its radius."""
    from latentfss.augment import _gaussian_blur, blur_radius

    assert blur_radius(96) == 4 and blur_radius(473) == 23
    impulse = torch.zeros(1, 3, 101, 101)
    impulse[..., 50, 50] = 1
    row = _gaussian_blur(impulse, torch.tensor([2.0]), radius=23)[0, 0, 50]
    assert row[50 - 23] > 0 and row[50 + 23] > 0 and row[: 50 - 23].eq(0).all()
    taps = torch.exp(-(torch.arange(-23.0, 24.0) ** 2) / (2 * 2.0**2))
    taps /= taps.sum()  # by hand: the normalised Gaussian; a separable impulse response
    assert torch.allclose(row[50 - 23 : 50 + 24], taps * taps[23], atol=1e-7)
    images = torch.rand(2, 3, 96, 96)
    blurred = _gaussian_blur(images, torch.tensor([2.0, 0.5]), radius=4)
    assert torch.allclose(blurred.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.02)


def test_episodes_follow_the_protocol(annotated):
    index = read_index(annotated / "dataset")
    train_ids = index.split("train").index
    pixels = index.pixels[index.pixels["image_id"].isin(train_ids)]
    sampler = EpisodeSampler.from_pixels(pixels, base_classes(0, 20), 50, shots=2)
    data = EpisodeSamples(index.images, sampler, 20, crop=48, scale=(1.0, 1.0), seed=0)
    for k in range(5):
        sample = data[k]
        assert sample["supports"].shape == (2, 3, 48, 48)
        assert set(sample["query_mask"].unique().tolist()) <= {0, 1, IGNORE}
        again = data[k]
        assert torch.equal(sample["query"], again["query"])  # sample k is always the same
    pseudo = PseudoSamples(
        [artifact(annotated, layout.PSEUDO_MASKS, fold=0)], index.images, 48, (1.0, 1.0), 0
    )
    sample = pseudo[3]
    assert (
        sample["image"].shape == (3, 48, 48)
        and sample["mask"].max() <= 3
        or (sample["mask"].max() == IGNORE)
    )


def train_args(annotated, out, shot=1) -> TrainJob:
    return TrainJob(
        index=annotated / "dataset",
        encoder_init=artifact(annotated, layout.ENCODER_INIT),
        pseudo_masks=artifact(annotated, layout.PSEUDO_MASKS, fold=0),
        fold=0,
        shot=shot,
        out=out / "model.pt",
        log_csv=out / "train.csv",
        device="cpu",  # exact comparisons: CUDA kernels are not bit-deterministic
    )


TINY_TRAIN = TrainConfig(
    iterations=6,
    batch_episodes=2,
    batch_pseudo=2,
    crop=48,
    log_every=2,
    checkpoint_every=2,
    workers=0,
)
PROTOCOL = ProtocolConfig(min_support_pixels=30)  # as the fixture clustered


def test_an_interrupted_run_resumes_to_the_same_weights(annotated, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(train_args(annotated, whole), TINY_TRAIN, ModelConfig(), PROTOCOL)
    train(train_args(annotated, resumed), TINY_TRAIN, ModelConfig(), PROTOCOL, stop_at=3)
    assert (resumed / "train_state.pt").is_file() and not (resumed / "model.pt").exists()
    train(train_args(annotated, resumed), TINY_TRAIN, ModelConfig(), PROTOCOL)  # from step 2
    assert not (resumed / "train_state.pt").exists()
    a, b = torch.load(whole / "model.pt"), torch.load(resumed / "model.pt")
    assert a["step"] == b["step"] == 6
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, msg=key)
    assert pd.read_csv(whole / "train.csv").equals(pd.read_csv(resumed / "train.csv"))


def same_weights(a: Path, b: Path) -> bool:
    first, second = torch.load(a)["state_dict"], torch.load(b)["state_dict"]
    return all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.slow
def test_a_state_from_another_run_is_not_resumed(annotated, tmp_path, caplog):
    """A killed run's state is used only by a run of the same config, inputs and code; any
    other run starts over, saying why in one line, and ends where it would have anyway."""
    init = tmp_path / "encoder_init.pt"
    init.write_bytes((artifact(annotated, layout.ENCODER_INIT)).read_bytes())
    faster = dataclasses.replace(TINY_TRAIN, lr=5e-3)
    expected = {}
    for name, cfg in (("tiny", TINY_TRAIN), ("faster", faster)):
        args = train_args(annotated, tmp_path / name)
        train(dataclasses.replace(args, encoder_init=init), cfg, ModelConfig(), PROTOCOL)
        expected[name] = tmp_path / name / "model.pt"
    run = tmp_path / "run"
    args = dataclasses.replace(train_args(annotated, run), encoder_init=init)
    state = run / "train_state.pt"

    def forge_head(path: Path) -> None:  # same origin, another mining head (cluster.k)
        saved = torch.load(path)
        saved["model"]["head.6.weight"] = torch.zeros(7, 256, 1, 1)
        torch.save(saved, path)

    cases = [  # (what happens to the killed run's state or inputs, config after, why)
        (lambda: None, faster, "started from another train"),
        (lambda: os.utime(init, ns=(1, 1)), TINY_TRAIN, "started from another inputs"),
        (lambda: state.write_bytes(state.read_bytes()[:1000]), TINY_TRAIN, "cannot be read"),
        (lambda: forge_head(state), TINY_TRAIN, "holds another network"),
    ]
    for change, cfg, why in cases:
        train(args, TINY_TRAIN, ModelConfig(), PROTOCOL, stop_at=3)
        assert state.is_file()
        change()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            train(args, cfg, ModelConfig(), PROTOCOL)
        said = [r.getMessage() for r in caplog.records if "train_state.pt" in r.getMessage()]
        assert len(said) == 1 and why in said[0] and "training from step 0" in said[0], said
        assert same_weights(run / "model.pt", expected["faster" if cfg is faster else "tiny"])
    train(args, TINY_TRAIN, ModelConfig(), PROTOCOL, stop_at=3)  # the same run resumes
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(args, TINY_TRAIN, ModelConfig(), PROTOCOL)
    assert "resuming from step 2" in caplog.text
    train(args, TINY_TRAIN, ModelConfig(), PROTOCOL, stop_at=3)  # then another encoder arch
    torch.save(
        {"state_dict": Encoder("resnet50").state_dict(), "encoder": {"arch": "resnet50"}}, init
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(args, dataclasses.replace(TINY_TRAIN, iterations=1), ModelConfig(), PROTOCOL)
    assert "not resumed, it was started from another train, inputs" in caplog.text
    assert torch.load(run / "model.pt")["arch"] == "resnet50"


def test_model_file_and_training_log(annotated, tmp_path):
    cfg = TrainConfig(**{**TINY_TRAIN.__dict__, "workers": 1})
    train(train_args(annotated, tmp_path, shot=2), cfg, ModelConfig(), PROTOCOL)
    saved = torch.load(tmp_path / "model.pt")
    assert not any(k.startswith("head.") for k in saved["state_dict"])  # dropped at test time
    assert "bg_global" in saved["state_dict"] and saved["state_dict"]["bg_seen"]
    assert saved["arch"] == "resnet18" and saved["shot"] == 2 and saved["code_version"]
    assert saved["config"]["train"]["iterations"] == 6
    log = pd.read_csv(tmp_path / "train.csv")
    assert log.columns.tolist() == ["step", "loss_gt", "loss_pseudo", "lr"]
    assert log["step"].tolist() == [2, 4, 6] and (log["loss_pseudo"] > 0).all()


def test_training_without_mining_logs_no_pseudo_loss(annotated, tmp_path, capsys):
    code, err = cli(
        *train_argv(
            annotated,
            tmp_path,
            params(iterations=2, batch_episodes=2, crop=48, log_every=1, workers=0),
        ),
        "--model-params",
        params(mine=False),
        "--protocol",
        params(min_support_pixels=30),
        capsys=capsys,
    )
    assert code == 0, err
    assert (pd.read_csv(tmp_path / "train.csv")["loss_pseudo"] == 0).all()


@pytest.mark.gpu
def test_cuda_bf16_training_steps(annotated, tmp_path, caplog):
    """Training on CUDA (bf16 autocast), micro-batched too; the saved weights are CPU tensors."""
    caplog.set_level("INFO")
    args = dataclasses.replace(train_args(annotated, tmp_path), device="cuda")
    train(args, dataclasses.replace(TINY_TRAIN, micro_batches=2), ModelConfig(), PROTOCOL)
    assert "device: cuda:" in caplog.text
    log = pd.read_csv(tmp_path / "train.csv")
    assert np.isfinite(log[["loss_gt", "loss_pseudo"]].to_numpy()).all()
    checkpoint = torch.load(tmp_path / "model.pt")
    assert checkpoint["step"] == 6
    assert all(v.device.type == "cpu" for v in checkpoint["state_dict"].values())
