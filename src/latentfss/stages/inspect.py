"""Render and describe artifacts
(`latentfss inspect pseudo-masks | prototypes | training | benchmarks | summary`)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from latentfss import layout, store
from latentfss.datasets.images import read_image, read_mask, voc_palette
from latentfss.datasets.index import read_index
from latentfss.errors import InputError
from latentfss.fs import atomic_file
from latentfss.machine import machine

# pseudo-label colours: 0 = background (black), 1..K distinct hues, 255 = padding (grey)
PSEUDO_COLOURS = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
]


# where each artifact a view reads lies under results/{dataset}, when its own flag is not given
UNDER_RESULTS = {
    "index": layout.INDEX,
    "pseudo_masks": layout.PSEUDO_MASKS,
    "prototypes": layout.PROTOTYPES,
    "clusters": layout.CLUSTERS,
}


def located(args: argparse.Namespace, name: str) -> Path:
    """An artifact given by its own flag (the workflow's rules), else found under --results
    for --row and --fold (by hand; the train set's pseudo masks)."""
    path = getattr(args, name)
    if path is not None:
        return path
    if args.fold is None and "{fold}" in UNDER_RESULTS[name]:
        raise InputError(f"inspect {args.view}: give --{name.replace('_', '-')}, or --fold")
    where = {"row": args.row, "fold": args.fold, "images": "train_set"}
    return args.results / UNDER_RESULTS[name].format(**where)


def register_arguments(parser: argparse.ArgumentParser) -> None:
    views = parser.add_subparsers(dest="view", required=True, metavar="VIEW")
    masks = views.add_parser("pseudo-masks", help="PNG grid: image | ground truth | pseudo mask")
    protos = views.add_parser("prototypes", help="PNG: 2-D PCA of fg prototypes by cluster")
    training = views.add_parser("training", help="PNG: loss curves of train.csv files")
    benchmarks = views.add_parser("benchmarks", help="CSV: time and memory of every job")
    summary = views.add_parser("summary", help="print every artifact's arrays and attrs")
    for view in (masks, protos, summary):
        view.add_argument(
            "--results",
            type=Path,
            default=Path("results/synthetic"),
            help="results/{dataset} folder (default: %(default)s)",
        )
    for view, names in ((masks, ("index", "pseudo_masks")), (protos, ("prototypes", "clusters"))):
        view.add_argument("--fold", type=int, choices=range(4), help="the fold, under --results")
        view.add_argument("--row", default="main", help="the row, under --results (%(default)s)")
        for name in names:
            view.add_argument(
                f"--{name.replace('_', '-')}",
                type=Path,
                help=f"default: {UNDER_RESULTS[name]} under --results",
            )
        view.add_argument("--out", type=Path, required=True, help="PNG to write")
    masks.add_argument("--count", type=int, default=12, help="images in the grid")
    training.add_argument("logs", nargs="+", type=Path, help="train.csv files")
    training.add_argument("--out", type=Path, required=True, help="PNG to write")
    benchmarks.add_argument(
        "files", nargs="+", type=Path, help="Snakemake benchmark .tsv files, or folders of them"
    )
    benchmarks.add_argument("--out", type=Path, required=True, help="CSV to write")


def run(args: argparse.Namespace) -> None:
    if args.view == "summary":
        print(summary(args.results))
        return
    views = {
        "pseudo-masks": pseudo_mask_grid,
        "prototypes": prototype_projection,
        "training": training_curves,
        "benchmarks": benchmark_table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    views[args.view](args)


def colourise(labels: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    table = np.full((256, 3), 128, dtype=np.uint8)
    table[: len(colours)] = colours
    return table[labels]


def pseudo_mask_grid(args: argparse.Namespace) -> None:
    """Evenly spaced train images, one row each: image | ground truth | pseudo mask."""
    index = read_index(located(args, "index"))
    group = store.open_group(located(args, "pseudo_masks"), "write-pseudo-masks")
    image_ids, heights, widths = group["image_id"][:], group["height"][:], group["width"][:]
    rows = np.linspace(0, np.count_nonzero(image_ids >= 0) - 1, args.count).round().astype(int)
    voc = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
    tiles = []
    for row in np.unique(rows):
        record = index.images.loc[image_ids[row]]
        pseudo = group["masks"][row, : heights[row], : widths[row]]
        truth = voc[read_mask(record["mask"], index.num_classes)]
        tiles.append([read_image(record["image"]), truth, colourise(pseudo, PSEUDO_COLOURS)])
    cell = max(max(t.shape[0], t.shape[1]) for row in tiles for t in row) + 4
    sheet = Image.new("RGB", (3 * cell, len(tiles) * cell + 16), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for col, title in enumerate(("image", "ground truth", f"pseudo mask (K={group.attrs['K']})")):
        draw.text((col * cell + 4, 2), title, fill=(0, 0, 0))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(Image.fromarray(tile), (c * cell + 2, 16 + r * cell + 2))
    with atomic_file(args.out) as tmp:
        sheet.save(tmp, format="png")


def prototype_projection(args: argparse.Namespace) -> None:
    """The fold's clustered prototypes on their first two principal components: colour =
    sub-cluster, marker = base class; the K centroids as numbered stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prototypes = store.open_group(located(args, "prototypes"), "pool-prototypes")
    clusters = store.open_group(located(args, "clusters"), "cluster")
    member, assign = clusters["member"][:], clusters["assign"][:]
    x = prototypes["fg"][:][member]
    classes = prototypes["fg_class"][:][member]
    centroids = clusters["centroids"][1:]
    unit = np.concatenate([x, centroids]) / np.linalg.norm(
        np.concatenate([x, centroids]), axis=1, keepdims=True
    )
    centred = unit - unit[: len(x)].mean(axis=0)
    _, _, vt = np.linalg.svd(centred[: len(x)], full_matrices=False)
    points = centred @ vt[:2].T
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    markers = "os^v<>Dpx+*hH1234"
    colours = np.array(PSEUDO_COLOURS[1:]) / 255
    for i, c in enumerate(np.unique(classes)):
        pick = classes == c
        ax.scatter(
            points[: len(x)][pick, 0],
            points[: len(x)][pick, 1],
            s=10,
            alpha=0.6,
            marker=markers[i % len(markers)],
            c=colours[assign[pick] % len(colours)],
            label=f"class {c}",
        )
    for k, (px, py) in enumerate(points[len(x) :], 1):
        ax.scatter(px, py, s=260, marker="*", c=[colours[(k - 1) % len(colours)]], edgecolors="k")
        ax.annotate(str(k), (px, py), ha="center", va="center", fontsize=7)
    ax.set(
        title=f"fold {clusters.attrs['fold']}: {len(x)} base-class prototypes, K={len(centroids)}",
        xlabel="PC 1",
        ylabel="PC 2",
    )
    ax.legend(fontsize=6, ncol=2, markerscale=1.5, loc="best")
    fig.tight_layout()
    with atomic_file(args.out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run_labels(paths: list[Path]) -> list[str]:
    """Each file's folder, less the folders all of them share: main/train0/fold0/shot1, ..."""
    parents = [path.resolve().parent for path in paths]
    common = Path(os.path.commonpath(parents)) if len(parents) > 1 else parents[0].parent
    return [str(parent.relative_to(common)) for parent in parents]


def training_curves(args: argparse.Namespace) -> None:
    """The window-mean losses of every run, L_gt and L_pseudo side by side (Eq. 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, sharex=True)
    for path, label in zip(args.logs, run_labels(args.logs), strict=True):
        log = pd.read_csv(path)
        for ax, column in zip(axes, ("loss_gt", "loss_pseudo"), strict=True):
            ax.plot(log["step"], log[column], label=label, linewidth=1.2)
    axes[0].set(title="L_gt (support-query episodes)", xlabel="step", ylabel="loss")
    axes[1].set(title="L_pseudo (mining branch; 0 without it)", xlabel="step")
    axes[1].legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    with atomic_file(args.out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def benchmark_table(args: argparse.Namespace) -> None:
    """One row per job from Snakemake's benchmark files: wall seconds, peak memory and the
    cores the job was given (`threads`, with the profiles' benchmark-extended), and the machine
    (CPU, vector extensions, torch, oneDNN) this table was gathered on: every job's in a local
    run; on a cluster, summary.md has each model's and evaluation's own. (The cpu_time column
    is left out: it missed most of the CPU time /usr/bin/time counted.)"""
    rows = []
    files = (sorted(p.glob("*.tsv")) if p.is_dir() else [p] for p in args.files)
    for path in itertools.chain.from_iterable(files):
        bench = pd.read_csv(path, sep="\t").iloc[-1]  # the last repeat if there were several
        threads = bench.get("threads", float("nan"))
        rows.append(
            {
                "job": path.stem,
                "seconds": bench["s"],
                "max_rss_mb": bench["max_rss"],
                "threads": threads,
            }
        )
    table = pd.DataFrame(rows)
    total = {
        "job": "total (sequential)",
        "seconds": table["seconds"].sum(),
        "max_rss_mb": table["max_rss_mb"].max(),
    }
    table = pd.concat([table, pd.DataFrame([total])]).astype({"threads": "Int64"})
    host = machine()
    table = table.assign(
        cpu=host["cpu"],
        vector_extensions=", ".join(host["vector_extensions"] or ["unknown"]),
        torch=host["torch"],
        onednn=host["onednn"],
    )
    with atomic_file(args.out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.1f")


def summary(results: Path) -> str:
    """Every artifact under `results`: arrays (shape, dtype, chunks) and attrs."""
    lines = []
    for index_dir in sorted(results.glob("dataset")):
        index = read_index(index_dir)
        lines.append(f"{index_dir}/  {len(index.images)} images, {len(index.pixels)} pixel rows")
        lines.append(f"  meta: {_short(index.meta)}")
    for path in sorted(results.rglob("*.zarr")):
        group = store.open_group(path, "the stage that makes it")
        lines.append(f"{path}/")
        for name, array in sorted(group.arrays()):
            lines.append(
                f"  {name:10s} {str(array.shape):24s} {str(array.dtype):8s} chunks={array.chunks}"
            )
        lines.append(f"  attrs: {_short(group.attrs.asdict())}")
    return "\n".join(lines) if lines else f"{results}: no artifacts yet"


def _short(value: dict) -> str:
    """JSON with long lists cut, so one artifact's attrs fit on a line or two."""

    def cut(v):
        if isinstance(v, list) and len(v) > 8:
            return [*map(cut, v[:8]), f"... {len(v)} items"]
        return {k: cut(x) for k, x in v.items()} if isinstance(v, dict) else v

    return json.dumps(cut(value))
