"""Dataset readers (VOC/SBD, COCO, the synthetic benchmark) and the prepared index they feed."""

from __future__ import annotations

from dataclasses import dataclass

DATASETS = ("synthetic", "pascal", "coco")


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset lives and which train list to use (config section `dataset`)."""

    name: str = "synthetic"
    root: str = "results/synthetic/voc"
    # synthetic/pascal: a built list (voc | voc_sbd | trainaug) or a list file; ignored for coco
    train_list: str = "voc"

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"name must be one of {', '.join(DATASETS)}")
        if not self.train_list:
            raise ValueError("train_list must name a built list or a list file")
