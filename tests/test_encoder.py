"""The encoder: output stride 8, no final ReLU, frozen BatchNorm, weights loading (the shipped
synthetic encoder among them), calibration."""

from __future__ import annotations

import hashlib
import logging
import shutil

import pytest
import torch
import torchvision

from latentfss import encoder as encoder_module
from latentfss.config import EncoderConfig
from latentfss.encoder import (
    SYNTHETIC,
    SYNTHETIC_SHA256,
    Encoder,
    build_encoder,
    calibrate_batchnorm,
    feature_size,
    load_encoder,
)
from latentfss.errors import InputError


def test_output_stride_8_and_channels():
    encoder = Encoder("resnet18").eval()
    with torch.no_grad():
        feats = encoder(torch.randn(2, 3, 97, 130))
    assert feats.shape == (2, 256, feature_size(97), feature_size(130)) == (2, 256, 13, 17)
    assert feature_size(473) == 60  # PASCAL preset: 60x60 grid, as PFENet


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet101"])
def test_a_seed_gives_torchvisions_random_weights(arch):
    torch.manual_seed(3)
    reference = getattr(torchvision.models, arch)().state_dict()
    after_reference = torch.get_rng_state()
    torch.manual_seed(3)
    ours = Encoder(arch).state_dict()
    assert torch.equal(torch.get_rng_state(), after_reference)  # later draws match too
    assert ours.keys() == {k for k in reference if not k.startswith(("layer4.", "fc."))}
    for key, value in ours.items():
        assert torch.equal(value, reference[key]), key


def test_resnet50_is_torchvisions_dilated_network_without_the_last_relu():
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    encoder = Encoder("resnet50")
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith(("layer4", "fc"))}
    encoder.load_state_dict(state)  # strict: the same module names
    reference.eval(), encoder.eval()
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        r = reference
        expected = r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))))
        feats = encoder(x)
    assert (feats < 0).any()  # the final ReLU is gone ...
    torch.testing.assert_close(torch.relu(feats), expected)  # ... and nothing else differs
    params = sum(p.numel() for p in encoder.parameters())
    assert round(params / 1e6, 1) == 8.5  # the paper's deep-stem network: 8.7M


def test_batchnorm_stays_frozen_in_train_mode():
    encoder = Encoder("resnet18").train()
    before = encoder.bn1.running_mean.clone()
    encoder(torch.randn(2, 3, 64, 64))
    assert not encoder.bn1.training
    torch.testing.assert_close(encoder.bn1.running_mean, before)


def test_calibration_sets_batchnorm_statistics_from_the_data():
    torch.manual_seed(0)
    encoder = Encoder("resnet18").eval()
    batches = [torch.randn(4, 3, 48, 48) + 0.5 for _ in range(3)]
    assert calibrate_batchnorm(encoder, batches) == 12
    with torch.no_grad():
        conv1 = torch.cat([encoder.conv1(b) for b in batches])  # (12, 64, 24, 24)
    torch.testing.assert_close(encoder.bn1.running_mean, conv1.mean(dim=(0, 2, 3)))
    per_batch = conv1.view(3, 4, *conv1.shape[1:]).var(dim=(1, 3, 4))  # the mean of each
    torch.testing.assert_close(encoder.bn1.running_var, per_batch.mean(0))  # batch's variance
    assert not encoder.bn1.training


def test_local_weights_load_and_report_missing_keys(tmp_path, caplog):
    source = Encoder("resnet18")
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer3.1.")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING):
        encoder = build_encoder(EncoderConfig(weights=str(tmp_path / "w.pth")))
    torch.testing.assert_close(encoder.conv1.weight, source.conv1.weight)
    assert "missing keys" in caplog.text and "layer3.1.conv1.weight" in caplog.text


def test_weights_that_share_no_key_are_refused(tmp_path):
    torch.save({"classifier.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="shares no key with resnet18"):
        build_encoder(EncoderConfig(weights=str(tmp_path / "other.pth")))
    with pytest.raises(InputError, match="nope.pth: not found"):
        build_encoder(EncoderConfig(weights=str(tmp_path / "nope.pth")))


def test_the_shipped_synthetic_encoder_is_the_default_and_loads_whole(caplog):
    assert EncoderConfig().weights == "synthetic"
    assert hashlib.sha256(SYNTHETIC.read_bytes()).hexdigest() == SYNTHETIC_SHA256
    assert SYNTHETIC.stat().st_size <= 25 * 2**20
    state = torch.load(SYNTHETIC, weights_only=True)["state_dict"]
    assert "layer4.1.conv2.weight" in state and not any(k.startswith("fc.") for k in state)
    with caplog.at_level(logging.WARNING):
        encoder = build_encoder(EncoderConfig())
    assert not caplog.records  # every conv1..layer3 key loads; layer4 is left for others
    assert torch.equal(encoder.layer3[1].conv2.weight, state["layer3.1.conv2.weight"].float())


def test_a_missing_or_altered_synthetic_encoder_is_one_line(tmp_path, monkeypatch):
    altered = tmp_path / "synthetic-resnet18.pt"
    shutil.copy(SYNTHETIC, altered)
    with altered.open("r+b") as f:  # one byte near the end (the zip's index)
        f.seek(-200, 2)
        byte = f.read(1)
        f.seek(-200, 2)
        f.write(bytes([byte[0] ^ 1]))
    monkeypatch.setattr(encoder_module, "SYNTHETIC", altered)
    with pytest.raises(InputError, match=r"synthetic-resnet18.pt: sha256 \w+\.\.\., expected"):
        build_encoder(EncoderConfig())
    monkeypatch.setattr(encoder_module, "SYNTHETIC", tmp_path / "gone.pt")
    with pytest.raises(InputError, match="gone.pt: not found; reinstall latentfss"):
        build_encoder(EncoderConfig())
    with pytest.raises(InputError, match="synthetic is a resnet18, not a resnet50"):
        build_encoder(EncoderConfig(arch="resnet50"))


def test_imagenet_weights_come_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(InputError, match="imagenet weights for resnet18 are not in"):
        build_encoder(EncoderConfig(weights="imagenet"))
    source = torchvision.models.resnet18()
    (tmp_path / "checkpoints").mkdir()
    torch.save(source.state_dict(), tmp_path / "checkpoints/resnet18-f37072fd.pth")
    encoder = build_encoder(EncoderConfig(weights="imagenet"))
    torch.testing.assert_close(encoder.layer3[1].conv2.weight, source.layer3[1].conv2.weight)


def test_saved_initial_encoder_round_trips(tmp_path):
    encoder = Encoder("resnet18")
    torch.save(
        {"state_dict": encoder.state_dict(), "encoder": {"arch": "resnet18"}}, tmp_path / "e.pt"
    )
    loaded = load_encoder(tmp_path / "e.pt")
    torch.testing.assert_close(loaded.layer2[0].conv1.weight, encoder.layer2[0].conv1.weight)
