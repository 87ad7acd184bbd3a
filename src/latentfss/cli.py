"""The `latentfss` command: one subcommand per pipeline stage, named as the Snakemake rules."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import PackageNotFoundError, distribution

from latentfss import __version__
from latentfss.errors import InputError, Stopped

# subcommand -> (module under latentfss.stages, summary)
STAGES = {
    "make-synthetic": ("make_synthetic", "generate the synthetic VOC-format benchmark"),
    "prepare": ("prepare", "index a dataset: splits, paths, sizes, per-class pixel counts"),
    "pretrain-encoder": (
        "pretrain_encoder",
        "pre-train the ResNet on a generated corpus labelled by its factors",
    ),
    "extract-features": (
        "extract_features",
        "embed every train image with the frozen encoder (features.zarr)",
    ),
    "pool-prototypes": ("pool_prototypes", "Eq. 2: per-image class and background prototypes"),
    "cluster": ("cluster", "K-Means over base-class prototypes: K+1 representatives"),
    "write-pseudo-masks": (
        "write_pseudo_masks",
        "Eq. 3: dense pseudo labels for every train image",
    ),
    "train": ("train", "episodic training with the mining branch (Eq. 1, 4-7)"),
    "build-bank": ("build_bank", "image embeddings and region prototypes for rectification"),
    "evaluate": ("evaluate", "test episodes with rectified prototypes (Eq. 7-9): mIoU, FB-IoU"),
    "summarize": ("summarize", "the paper's tables from every fold and shot"),
    "inspect": ("inspect", "render and describe any artifact"),
    "segment": ("segment", "segment your own images from K annotated shots"),
}


FAISS_INSTALL = "pip install -e '.[cpu]' (or '.[gpu]' on a CUDA 12 machine)"


def faiss_clash() -> str | None:
    """Why the installed faiss cannot be trusted: faiss-cpu and a faiss-gpu both installed
    (they write the same `faiss` module, and the last one installed wins in part)."""
    installed = []
    for name in ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11"):
        try:
            installed.append(f"{name} {distribution(name).version}")
        except PackageNotFoundError:
            continue
    if len(installed) < 2:
        return None
    names = " ".join(item.split()[0] for item in installed)
    return (
        f"{' and '.join(installed)} are installed together; they share the faiss module: "
        f"pip uninstall -y {names}, then {FAISS_INSTALL}"
    )


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`ERROR: latentfss cluster: argument --fold: ...`)."""

    def error(self, message: str):
        self.exit(2, f"ERROR: {self.prog}: {message} (see --help)\n")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The parser; only `command`'s stage module is imported, so `--help` and jobs start fast."""
    parser = Parser(prog="latentfss", description="Few-shot segmentation by mining latent classes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, (module, summary) in STAGES.items():
        stage = sub.add_parser(name, help=summary, description=summary)
        if name == command:
            try:
                mod = importlib.import_module(f"latentfss.stages.{module}")
            except ModuleNotFoundError as e:
                if e.name != "faiss":
                    raise
                parser.exit(2, f"ERROR: faiss is not installed: {FAISS_INSTALL}\n")
            mod.register_arguments(stage)
            stage.set_defaults(run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if clash := faiss_clash():
        print(f"ERROR: {clash}", file=sys.stderr)
        return 2
    command = next((a for a in argv if a in STAGES), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args.run(args)
        return 0
    except InputError as e:
        message, code = str(e), 2
        if message.startswith("Caught InputError"):  # raised in a data-loader worker
            message = message.rstrip().splitlines()[-1].split(": ", 1)[1]
    except Stopped as e:
        message, code = f"stopped by {e}", 128 + e.signum
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    # printed once the failed stage's frames are released, so open progress bars finish their
    # line first and the error is the last line of the log
    print(f"ERROR: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
