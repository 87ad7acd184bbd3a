"""Backs docs/running.md, "GPUs": the whole GPU path checked in one command.

    pip install --no-index --no-deps --target /tmp/site wheels/*.whl   # bench/gpu_wheels.txt
    PYTHONPATH=src:/tmp/site python bench/gpu_check.py --out DIR       # about 9 minutes
    python bench/gpu_check.py --device cpu --quick --out DIR           # tiny shapes; a test

Each part (bench/gpu_checklist.md) runs in its own process under a time budget, its results
written to DIR/gpu_check.json and .md as it ends. `--device cpu`: the device side in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import limits
import numpy as np
import pandas as pd
import torch
from inference import Floors
from PIL import Image
from record import describe, machine, run_stage, scratch, table

from latentfss import store
from latentfss.config import EvaluateConfig, ModelConfig, SyntheticConfig, TrainConfig
from latentfss.datasets import images, voc
from latentfss.datasets.index import read_index
from latentfss.encoder import Encoder, Normalise
from latentfss.episodes import IGNORE, EpisodeSampler, novel_classes, sample_test_episodes
from latentfss.metrics import IoUMeter
from latentfss.model import MatchingNet
from latentfss.region_bank import RegionBank, inner_product_index, on_device
from latentfss.runtime import CPU_BF16, pick_device
from latentfss.scoring import episode_by_episode, evaluate_lists
from latentfss.stages.make_synthetic import generate
from latentfss.trainer import sgd, train_step

REPO = Path(__file__).resolve().parents[1]
PAPER_FPS = {1: 27.8, 5: 12.8}  # Table 7, on the authors' GPU, every episode encoded anew

# Seconds each part may take; on one H100 they add up to 9 minutes.
BUDGETS = dict(tests=100, pipeline=110, train=90, evaluate=120, annotation=100)
QUICK_BUDGET = 300  # each part, on a loaded 2-core CI machine
SHAPES = {  # the PASCAL preset's, and the tiny ones of --quick
    False: dict(
        arch="resnet50", crop=473, episodes=4, pseudo=32, micro=(1, 8), shots=(1, 5),
        size=(375, 500), coco_size=(480, 640), k=5, train=100, val=200, test_episodes=1000,
        one_by_one=100, min_support_pixels=2048, bank_images=4000, workers=4,
    ),
    True: dict(
        arch="resnet18", crop=64, episodes=2, pseudo=2, micro=(1, 2), shots=(1, 2),
        size=(60, 80), coco_size=(64, 80), k=2, train=8, val=40, test_episodes=20,
        one_by_one=4, min_support_pixels=30, bank_images=50, workers=0,
    ),
}  # fmt: skip
SIDES = ("device", "cpu")
PSEUDO_CLASSES = 6  # K + 1 of the PASCAL preset
TINY = SyntheticConfig(num_train=24, num_val=8, min_size=48, max_size=64)  # as the tests'


def flags(**section) -> str:
    return json.dumps(section)


def annotate(out: Path, on: dict, encoder: str, params: str, cluster: dict, keep: bool) -> dict:
    """extract-features .. write-pseudo-masks into `out` (`on`: index, device, threads), the
    features kept or, without `keep`, computed again on the device: each stage's run_stage."""
    init, features, prototypes = out / "encoder_init.pt", out / "features.zarr", out / "protos.zarr"
    run = {}
    run["extract-features"] = run_stage(
        "extract-features", out=features, encoder_out=init, encoder=encoder, params=params, **on
    )
    inputs = dict(index=on["index"], features=features)
    if not keep:
        inputs = dict(on, encoder_init=init, annotation=params)
    run["pool-prototypes"] = run_stage("pool-prototypes", out=prototypes, **inputs)
    clusters = out / "clusters.zarr"
    run["cluster"] = run_stage(
        "cluster", index=on["index"], prototypes=prototypes, fold=0, out=clusters, **cluster
    )
    run["write-pseudo-masks"] = run_stage(
        "write-pseudo-masks", clusters=clusters, out=out / "pseudo_masks.zarr", **inputs
    )
    return run


def pipeline(args, shapes, work: Path, record) -> None:
    """The tiny pipeline's stages (prepare ... evaluate) on the device and on the CPU in fp32,
    then what the two sides share: pseudo-mask labels that agree, the metrics' differences."""
    root, index, protocol = work / "tiny", work / "tiny_index", flags(min_support_pixels=30)
    if not root.is_dir():
        generate(TINY, root)
    run_stage("prepare", out=index, params=flags(root=str(root)))
    encoder = flags(arch="resnet18", weights="none", calibration_images=8)
    cluster = dict(params=flags(k=3, nredo=2), protocol=protocol)
    task = dict(fold=0, shot=1, protocol=protocol)
    for side in SIDES:
        os.environ[CPU_BF16] = "1" if side == "device" and args.device == "cpu" else "0"
        device, out = args.device if side == "device" else "cpu", work / side
        on = dict(index=index, device=device, threads=os.cpu_count())
        run = annotate(out, on, encoder, flags(input_size=64, batch_size=5), cluster, keep=True)
        model, masks, bank = out / "model.pt", out / "pseudo_masks.zarr", out / "bank"
        params = flags(iterations=6, batch_episodes=2, batch_pseudo=2, crop=48, workers=0)
        train = dict(params=params, out=model, log_csv=out / "train.csv", pseudo_masks=masks)
        run["train"] = run_stage(
            "train", encoder_init=out / "encoder_init.pt", **train, **task, **on
        )
        params = flags(input_size=64)
        run["build-bank"] = run_stage(
            "build-bank", model=model, pseudo_masks=masks, out=bank, params=params, **on
        )
        params = flags(episodes=24, seeds=[0, 1], input_size=64, workers=0)
        run["evaluate"] = run_stage(
            "evaluate", model=model, bank=bank, out=out / "eval", params=params, **task, **on
        )
        metrics = json.loads((out / "eval/metrics.json").read_text())
        losses = pd.read_csv(out / "train.csv")[["loss_gt", "loss_pseudo"]].to_numpy()
        result = {"device": device, "stage_seconds": {k: v["seconds"] for k, v in run.items()}}
        result |= {metric: round(100 * metrics[metric], 2) for metric in ("miou", "fbiou")}
        record(**{side: result | {"losses_finite": bool(np.isfinite(losses).all())}})
    masks = [store.open_group(work / s / "pseudo_masks.zarr", "")["masks"][:] for s in SIDES]
    agree = float((masks[0] == masks[1])[masks[1] != IGNORE].mean())
    result = record(pseudo_mask_agreement_pct=round(100 * agree, 4))
    differences = {m: result["device"][m] - result["cpu"][m] for m in ("miou", "fbiou")}
    record(**{f"{m}_difference": round(d, 2) for m, d in differences.items()})


def train(args, shapes, work: Path, record) -> None:
    """Two training steps (train_step, random weights and data) per shot and micro-batch count:
    the second's seconds and the peak memory (CUDA: torch's peak allocation; CPU: peak RSS)."""
    device, crop, count = pick_device(args.device), shapes["crop"], shapes["episodes"]
    normalise, rows, cuda = Normalise(device), [], device.type == "cuda"
    for shot, micro in ((s, m) for s in shapes["shots"] for m in shapes["micro"]):
        torch.manual_seed(0)
        model = MatchingNet(Encoder(shapes["arch"]), ModelConfig(), PSEUDO_CLASSES)
        model = model.to(device).train().to(memory_format=torch.channels_last)
        optimizer = sgd(model, TrainConfig())
        masks = torch.randint(0, 2, (count, shot, crop, crop), dtype=torch.uint8)
        episode = {
            "query": torch.randint(0, 255, (count, 3, crop, crop), dtype=torch.uint8),
            "supports": torch.randint(0, 255, (count, shot, 3, crop, crop), dtype=torch.uint8),
            "support_masks": masks,
            "query_mask": masks[:, 0].clone(),
        }
        pixels = torch.randint(0, 255, (shapes["pseudo"], 3, crop, crop), dtype=torch.uint8)
        labels = torch.randint(0, PSEUDO_CLASSES, (shapes["pseudo"], crop, crop))
        mining = (normalise(normalise.unit(pixels)), labels)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):  # the first allocates the momenta and warms the kernels up
            start = time.perf_counter()
            train_step(model, episode, mining, optimizer, normalise, 1.0, micro)
            if cuda:
                torch.cuda.synchronize()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's, so far
        peak = torch.cuda.max_memory_allocated() if cuda else rss
        rows.append(
            {
                "shot": shot,
                "micro_batches": micro,
                "images": count * (1 + shot) + shapes["pseudo"],
                "seconds": round(time.perf_counter() - start, 3),
                "peak_mb": round(peak / 2**20),
            }
        )
        record(rows=rows, arch=shapes["arch"], crop=crop)
        del model, optimizer


def sized_images(shapes, work: Path, key: str = "size") -> Path:
    """The index of synthetic images all of shapes[key] (height, width), made once."""
    root, index = work / key, work / f"{key}_index"
    if not index.is_dir():
        height, width = shapes[key]
        cfg = SyntheticConfig(
            num_train=shapes["train"], num_val=shapes["val"], min_size=height, max_size=width
        )
        made = work / f"{key}.tmp"
        shutil.rmtree(made, ignore_errors=True)  # a part out of time left it
        generate(cfg, made)
        for jpeg in (made / "JPEGImages").iterdir():
            image = Image.open(jpeg).resize((width, height), Image.Resampling.BILINEAR)
            image.save(jpeg, quality=cfg.jpeg_quality)
            mask_path = voc.mask_path(made, jpeg.stem)
            mask = Image.open(mask_path).resize((width, height), Image.Resampling.NEAREST)
            images.write_mask(mask_path, np.asarray(mask))
        made.rename(root)
        run_stage("prepare", out=index, params=flags(root=str(root)))
    return index


def evaluate(args, shapes, work: Path, record) -> None:
    """Encode-once evaluation and episode by episode on the same lists, against their floors."""
    device = pick_device(args.device)
    index = read_index(sized_images(shapes, work))
    torch.manual_seed(0)
    model = MatchingNet(Encoder(shapes["arch"]), ModelConfig(), pseudo_classes=None)
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    cfg = EvaluateConfig(resize="none", batch_size=8, cache_mb=16384, workers=shapes["workers"])
    bank_images, generator = shapes["bank_images"], torch.Generator().manual_seed(0)
    per_image, per_region = (  # the bank: random unit vectors, 4 regions an image
        torch.nn.functional.normalize(torch.randn(n, model.encoder.channels, generator=generator))
        for n in (bank_images, 4 * bank_images)
    )
    nearest = on_device(inner_product_index(per_image.numpy()), device)
    offsets = torch.arange(0, 4 * bank_images + 1, 4, device=device)
    bank = RegionBank(nearest, per_region.to(device), offsets, cfg.top_n, cfg.beta)
    novel = novel_classes(0, index.num_classes, "consecutive")
    val = index.pixels[index.pixels["image_id"].isin(index.split("val").index)]
    floors, rate = Floors(model, index, cfg, device), limits.matmul_rate(device)
    kind = type(bank.index).__name__  # where faiss put the bank's index
    facts = dict(bank_images=bank_images, faiss_index=kind, faiss_on_gpu=kind.startswith("Gpu"))
    common, rows = (index, cfg, bank, device), []
    for shot in shapes["shots"]:
        sampler = EpisodeSampler.from_pixels(val, novel, shapes["min_support_pixels"], shot)
        episodes = sample_test_episodes(sampler, shapes["test_episodes"], 0)
        evaluate_lists(model, {"warm-up": episodes[:8]}, *common, novel)
        _, _, work_done = evaluate_lists(model, {"seed0": episodes}, *common, novel)
        few, meter, start = episodes[: shapes["one_by_one"]], IoUMeter(novel), time.perf_counter()
        for pred, label, class_id in episode_by_episode(model, few, *common):
            meter.update(pred, label, class_id)
        one_by_one = time.perf_counter() - start
        for variant, count, seconds, flops in (
            ("encode once", len(episodes), work_done["seconds"], floors(episodes, once=True)),
            ("episode by episode", len(few), one_by_one, floors(few, once=False)),
        ):
            rows.append(
                {
                    "shot": shot,
                    "variant": variant,
                    "episodes": count,
                    "episodes_per_s": round(count / seconds, 1),
                    "floor_episodes_per_s": round(count / (flops / rate[0]), 1),
                    "paper_episodes_per_s": PAPER_FPS.get(shot),
                }
            )
        record(rows=rows, matmul=f"{rate[0] / 1e12:.1f} TFLOP/s {rate[1]}", **facts)


def annotation(args, shapes, work: Path, record) -> None:
    """The COCO preset's annotation at COCO's image sizes (features computed again): images/s."""
    index = sized_images(shapes, work, "coco_size")
    on = dict(index=index, device=args.device, threads=os.cpu_count())
    encoder = flags(arch=shapes["arch"], weights="none", calibration_images=16)
    params = flags(input_size=shapes["crop"], batch_size=16)
    protocol = flags(min_support_pixels=shapes["min_support_pixels"])
    cluster = dict(params=flags(k=shapes["k"]), protocol=protocol)
    stages = annotate(work / "coco", on, encoder, params, cluster, keep=False)
    del stages["cluster"]
    for stage, timed in stages.items():
        timed["startup_seconds"] = limits.startup_seconds(stage, repeats=1)
        after = max(timed["seconds"] - timed["startup_seconds"], 1e-3)
        timed["images_per_s_after_startup"] = round(shapes["train"] / after, 1)
    record(images=shapes["train"], size=shapes["coco_size"], stages=stages)


def tests(args, shapes, work: Path, record) -> None:
    """The `gpu`-marked tests (skipped without CUDA)."""
    found = REPO.glob("tests/test_*.py")
    files = sorted(str(p.relative_to(REPO)) for p in found if "mark.gpu" in p.read_text())
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    done = subprocess.run([*command, *files], cwd=REPO, capture_output=True, text=True)
    print(done.stdout[-4000:], done.stderr[-2000:])
    last = (done.stdout.strip().splitlines() or [""])[-1]
    record(files=files, summary=last, exit_code=done.returncode)
    if done.returncode not in (0, 5):  # 5: nothing collected (no CUDA: every one skipped)
        raise SystemExit(f"gpu tests failed: {last or done.stderr[-500:]}")


PARTS = {part.__name__: part for part in (tests, pipeline, train, evaluate, annotation)}


def run_part(name: str, budget: float, args, log) -> dict:
    """One part in its own process group (killed whole when its budget runs out)."""
    argv = [sys.executable, __file__, "--part", name, "--device", args.device, "--work", args.work]
    start = time.perf_counter()
    log.write(f"\n===== {name} (budget {budget:g} s)\n")
    log.flush()
    argv += ["--quick"] * args.quick
    child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status = "ok" if child.wait(timeout=budget) == 0 else f"failed (exit {child.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        status = f"out of time after {budget:g} s"
    path = Path(args.work) / f"{name}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), **results}


def report(results: dict) -> str:
    quick = " --quick" if results["quick"] else ""
    lines = [
        f"## GPU check (`bench/gpu_check.py --device {results['device']}{quick}`)",
        "",
        f"Machine: {describe(results['machine'])}. Shapes: {results['shapes']}. The device "
        "side runs bf16 autocast (on the CPU through $LATENTFSS_CPU_BF16), the CPU side fp32.",
        "",
    ]
    parts, shown = results["parts"], ("status", "seconds", "rows")
    rest = {n: json.dumps({k: v for k, v in p.items() if k not in shown}) for n, p in parts.items()}
    lines += table(
        [{"name": name, **part, "rest": rest[name]} for name, part in parts.items()],
        {"part": "{name}", "status": "{status}", "seconds": "{seconds}", "results": "`{rest}`"},
    )
    for name, part in parts.items():
        if part.get("rows"):
            columns = {key: f"{{{key}}}" for key in part["rows"][0]}
            lines += ["", f"{name}:", "", *table(part["rows"], columns)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes (the test suite's run)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/gpu_check")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--budget", type=float, help="seconds for every part (default: its own)")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = SHAPES[args.quick]
    if args.part:  # the parent's child: one part, its results rewritten each time it records
        os.environ[CPU_BF16] = "1" if args.device == "cpu" else "0"
        work, results = Path(args.work), {}

        def record(**values) -> dict:
            results.update(values)
            (work / f"{args.part}.json").write_text(json.dumps(results, indent=2) + "\n")
            return results

        PARTS[args.part](args, shapes, work, record)
        return
    paths = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)  # the parts run from other folders
    args.out.mkdir(parents=True, exist_ok=True)
    results = dict(machine=machine(), device=args.device, quick=args.quick, shapes=shapes, parts={})
    with scratch() as work, open(args.out / "gpu_check.log", "w") as log:
        args.work = work
        for name in args.only:
            budget = args.budget or (QUICK_BUDGET if args.quick else BUDGETS[name])
            results["parts"][name] = part = run_part(name, budget, args, log)
            print(f"{name}: {part['status']} in {part['seconds']} s", flush=True)
            (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.out / "gpu_check.md").write_text(report(results))
    if failed := [name for name, part in results["parts"].items() if part["status"] != "ok"]:
        raise SystemExit(
            f"gpu check: {', '.join(failed)} did not pass; see {args.out}/gpu_check.log"
        )


if __name__ == "__main__":
    main()
