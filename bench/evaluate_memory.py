"""Backs docs/method.md, "Evaluation": memory stays bounded on COCO-sized val sets.

Evaluation's memory on a COCO-sized val set: peak RSS of the evaluate stage over about 10,000
distinct images, against the bytes their features would take if every query's were kept.

A synthetic val set of `--val-images` images (own seed) is generated and indexed; the evaluate
stage then runs fold 0, 1-shot, with the default run's fold-0 model and bank, one list of
`--episodes` episodes, once per `--cache-mb` budget, each in its own process.

    python bench/evaluate_memory.py [--results results/synthetic] [--val-images 24000]
        [--episodes 16000] [--cache-mb 256]

Writes bench/results/evaluate_memory.json and .md (assembled into docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from record import arguments, describe, run_stage, save, scratch

from latentfss.datasets.index import read_index
from latentfss.model import load_model

REPO = Path(__file__).resolve().parents[1]


def feature_bytes(index, image_ids, channels: int) -> int:
    """float32 layer3 features of these images at their original size (stride 8)."""
    sizes = index.images.loc[list(image_ids), ["height", "width"]].to_numpy()
    return int(sum(4 * channels * -(-h // 8) * -(-w // 8) for h, w in sizes))


def main() -> None:
    parser = arguments(__doc__, results=True, threads=True)
    parser.add_argument("--val-images", type=int, default=24000)
    parser.add_argument("--episodes", type=int, default=16000)
    parser.add_argument("--cache-mb", type=int, nargs="+", default=[256])
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    run = args.results / "fold0/shot1"
    if not (run / "bank").is_dir():
        raise SystemExit(f"{args.results}: run `snakemake --cores 2` first")
    synthetic = {**config["synthetic"], "seed": 1, "num_train": 20, "num_val": args.val_images}
    rows = []
    with scratch() as tmp:
        tmp = Path(tmp)
        made = run_stage("make-synthetic", out=tmp / "voc", params=json.dumps(synthetic))
        dataset = {**config["dataset"], "root": str(tmp / "voc")}
        run_stage("prepare", out=tmp / "dataset", params=json.dumps(dataset), threads=args.threads)
        index = read_index(tmp / "dataset")
        channels = load_model(run / "model.pt")[0].encoder.channels
        for cache_mb in args.cache_mb:
            params = {
                **config["evaluate"],
                "episodes": args.episodes,
                "seeds": [0],
                "cache_mb": cache_mb,
            }
            timed = run_stage(
                "evaluate",
                index=tmp / "dataset",
                model=run / "model.pt",
                bank=run / "bank",
                fold=0,
                shot=1,
                out=tmp / f"eval{cache_mb}",
                params=json.dumps(params),
                protocol=json.dumps(config["protocol"]),
                threads=args.threads,
            )
            metrics = json.loads((tmp / f"eval{cache_mb}/metrics.json").read_text())
            episodes = np.loadtxt(
                tmp / f"eval{cache_mb}/episodes_seed0.csv",
                delimiter=",",
                skiprows=1,
                usecols=1,
                dtype=np.int64,
            )
            queries = np.unique(episodes)
            work = metrics["work"]  # seconds: evaluate_lists itself; stage_seconds: the process
            rows.append(
                {
                    "cache_mb": cache_mb,
                    "stage_seconds": timed["seconds"],
                    "peak_rss_mb": timed["peak_rss_mb"],
                    **work,
                    "seconds": round(work["seconds"], 1),
                    "distinct_queries": len(queries),
                    "all_query_features_mb": round(feature_bytes(index, queries, channels) / 2**20),
                    "episodes_per_s": round(metrics["episodes_per_s"], 1),
                    "miou": round(100 * metrics["miou"], 2),
                }
            )
            print(rows[-1], flush=True)
    results = {
        "threads": args.threads,
        "val_images": args.val_images,
        "make_synthetic_seconds": made["seconds"],
        "channels": channels,
        "runs": rows,
    }
    save(results, markdown, args.out, "evaluate_memory")


def markdown(r: dict) -> list[str]:
    lines = [
        "## Evaluation's memory (`bench/evaluate_memory.py`)",
        "",
        f"Machine: {describe(r['machine'])}; {r['threads']} threads. A synthetic val set of "
        f"{r['val_images']} images; the evaluate stage (its own process) on fold 0, 1-shot, "
        "with the default run's fold-0 model and bank, one list, once per `evaluate.cache_mb`. "
        f'Features: {r["channels"]} channels, float32. "All queries kept" is what keeping '
        "the features of every query image would take.",
        "",
        "| cache_mb | episodes | distinct images | images encoded | all queries kept MB | "
        "peak RSS MB | seconds (stage) | episodes/s | mIoU (%) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["runs"]:
        lines.append(
            f"| {row['cache_mb']} | {row['episodes']} | {row['distinct_images']} | "
            f"{row['encoded_images']} | {row['all_query_features_mb']} | "
            f"{row['peak_rss_mb']} | {row['seconds']} ({row['stage_seconds'] or '-'}) | "
            f"{row['episodes_per_s']} | "
            f"{row['miou']} |"
        )
    return lines


if __name__ == "__main__":
    main()
