"""The CUDA path's precision (bf16 autocast) on the CPU, with $LATENTFSS_CPU_BF16: training,
an encode-once evaluation job and build-bank run without a dtype error, keep the matching and
the losses in fp32, and predict what fp32 predicts on nearly every pixel. The same tests run on
CUDA where a GPU is present (`gpu`-marked)."""

from __future__ import annotations

from types import SimpleNamespace

import faiss
import numpy as np
import pytest
import torch

import latentfss.encoder
import latentfss.model
from conftest import PROTOCOL, artifact, cli, params
from latentfss import layout, scoring, store
from latentfss.encoder import Normalise, encode_batches
from latentfss.metrics import iou_counts
from latentfss.model import segmentation_loss
from latentfss.runtime import CPU_BF16
from latentfss.trainer import train_step
from test_training import small_model

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# The least share of pixels where bf16 and fp32 must predict alike
AGREE = 0.97


@pytest.fixture
def bf16(request, monkeypatch) -> SimpleNamespace:
    """The bf16 path on the parameter's device, and the dtypes the encoder's features came out
    in (the proof that autocast was on)."""
    monkeypatch.setenv(CPU_BF16, "1")
    monkeypatch.setenv("LATENTFSS_DEVICE", request.param)
    seen: set[torch.dtype] = set()

    def recording(*args, **kwargs):
        feats = encode_batches(*args, **kwargs)
        seen.update(f.dtype for f in feats)
        return feats

    for module in (latentfss.encoder, latentfss.model):
        monkeypatch.setattr(module, "encode_batches", recording)
    return SimpleNamespace(device=torch.device(request.param), encoder_dtypes=seen)


def fp32(monkeypatch) -> None:
    """From here on, the CPU in full precision."""
    monkeypatch.setenv(CPU_BF16, "0")
    monkeypatch.setenv("LATENTFSS_DEVICE", "cpu")


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b, strict=True))
    return float(np.mean(np.concatenate([(x == y).ravel() for x, y in zip(a, b, strict=True)])))


@pytest.fixture
def predictions(monkeypatch) -> list[np.ndarray]:
    """Every prediction an evaluation job scores, in order."""
    seen = []

    def recording(preds, *labels):
        seen.extend(preds.cpu().numpy())
        return iou_counts(preds, *labels)

    monkeypatch.setattr(scoring, "iou_counts", recording)
    return seen


@pytest.mark.parametrize("bf16", DEVICES, indirect=True)
def test_a_training_step_in_bf16(bf16, monkeypatch):
    """Encoder and mining head in bf16; the matching, Eq. 6's background and the losses in
    fp32; finite losses, micro-batched too; the step's model predicts as fp32 does."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 2, 64, 64, dtype=torch.uint8)
    masks[..., 16:48, 12:40] = 1
    episode = {
        "query": torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8, generator=generator),
        "supports": torch.randint(
            0, 255, (2, 2, 3, 64, 64), dtype=torch.uint8, generator=generator
        ),
        "support_masks": masks,
        "query_mask": masks[:, 1].clone(),
    }
    normalise = Normalise(bf16.device)
    mining = normalise(normalise.unit(episode["query"])), torch.randint(0, 4, (2, 64, 64))
    model = small_model().to(bf16.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for micro_batches in (1, 2):
        losses = train_step(model, episode, mining, optimizer, normalise, 1.0, micro_batches)
        assert torch.isfinite(losses).all()
    assert bf16.encoder_dtypes == {torch.bfloat16}
    assert model.bg_global.dtype == torch.float32 and torch.isfinite(model.bg_global).all()

    query = normalise(normalise.unit(episode["query"]))
    supports = normalise(normalise.unit(episode["supports"])).unbind(1)
    shot_masks = masks.to(bf16.device).unbind(1)
    with torch.no_grad():
        out = model(query, supports, shot_masks, mining=mining[0])
        assert out.mining.dtype == torch.bfloat16  # the head ran under autocast
        assert out.logits.dtype == torch.float32 and out.background.dtype == torch.float32
        assert segmentation_loss(out.mining, mining[1].to(bf16.device)).dtype == torch.float32
        half = out.logits.argmax(1).cpu().numpy()
        fp32(monkeypatch)
        full = model.cpu()(query.cpu(), [s.cpu() for s in supports], [m.cpu() for m in shot_masks])
    assert agreement(list(half), list(full.logits.argmax(1).numpy())) >= AGREE


def evaluate(evaluated, annotated, out, *extra: str) -> None:
    code = cli(
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
        out,
        "--episodes",
        evaluated / "eval/episodes_seed0.csv",
        "--protocol",
        PROTOCOL,
        "--params",
        params(input_size=64, batch_size=5, workers=0),
        *extra,
    )[0]
    assert code == 0


@pytest.mark.parametrize("bf16", DEVICES, indirect=True)
def test_an_encode_once_evaluation_job_in_bf16(
    evaluated, annotated, bf16, tmp_path, predictions, monkeypatch
):
    """Evaluation with the bank's rectification: the query and support encodings in bf16, the
    prototypes, Eq. 8-9 and the matching in fp32; predictions as fp32's."""
    bank = ("--bank", evaluated / "bank")
    evaluate(evaluated, annotated, tmp_path / "bf16", *bank)
    assert bf16.encoder_dtypes == {torch.bfloat16}
    half = predictions.copy()
    predictions.clear()
    fp32(monkeypatch)
    evaluate(evaluated, annotated, tmp_path / "fp32", *bank)
    assert len(half) == 12 and agreement(half, predictions) >= AGREE


def bank_arrays(path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    index = faiss.read_index(str(path / "images.faiss"))
    regions = store.open_group(path / "regions.zarr", "build-bank")
    return index.reconstruct_n(0, index.ntotal), {k: regions[k][:] for k in regions.array_keys()}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("bf16", DEVICES, indirect=True)
def test_build_bank_in_bf16(evaluated, annotated, bf16, tmp_path):
    """The bank's image embeddings and region prototypes from bf16 features: the same regions,
    vectors within a cosine of 0.99 of fp32's, and the same nearest train image for each."""
    out = tmp_path / "bank"
    step = ("build-bank", "--index", annotated / "dataset", "--model", evaluated / "model.pt")
    step += ("--pseudo-masks", artifact(annotated, layout.PSEUDO_MASKS, fold=0), "--out", out)
    assert cli(*step, "--params", params(input_size=64))[0] == 0
    assert bf16.encoder_dtypes == {torch.bfloat16}
    (half, half_regions), (full, full_regions) = bank_arrays(out), bank_arrays(evaluated / "bank")
    for key in ("image", "label", "pixels", "image_id"):
        np.testing.assert_array_equal(half_regions[key], full_regions[key])
    assert half_regions["prototypes"].dtype == np.float32
    assert cosines(half, full).min() >= 0.99
    assert cosines(half_regions["prototypes"], full_regions["prototypes"]).min() >= 0.99
    similar = half @ full.T  # each bf16 embedding's nearest fp32 one is its own image's
    np.testing.assert_array_equal(similar.argmax(1), np.arange(len(half)))
