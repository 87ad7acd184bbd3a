"""Rule evaluate: one fold and shot's test episodes (latentfss.scoring), from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfss.config import EvaluateConfig, ProtocolConfig, from_arguments, from_params
from latentfss.runtime import add_device_argument
from latentfss.scoring import EvaluateJob, evaluate


def register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, type=Path, help="prepared dataset index dir")
    parser.add_argument("--model", required=True, type=Path, help="trained model.pt")
    parser.add_argument("--bank", type=Path, help="region bank dir (needed for fg_rectify)")
    parser.add_argument("--fold", required=True, type=int, choices=range(4))
    parser.add_argument("--shot", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="eval directory to write")
    parser.add_argument("--episodes", type=Path, help="replay this episode list instead")
    parser.add_argument("--params", default="", help="config section `evaluate` as JSON")
    parser.add_argument("--protocol", default="", help="config section `protocol` as JSON")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores the job may use")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> None:
    cfg = from_params(EvaluateConfig, args.params, "evaluate")
    protocol = from_params(ProtocolConfig, args.protocol, "protocol")
    evaluate(from_arguments(EvaluateJob, args), cfg, protocol)
