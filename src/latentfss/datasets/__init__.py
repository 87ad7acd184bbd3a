"""Dataset readers (VOC/SBD, COCO, the synthetic benchmark) and the prepared index they feed."""

from __future__ import annotations

from dataclasses import dataclass

from latentfss.datasets.voc import TRAIN_LISTS

DATASETS = ("synthetic", "pascal", "coco")


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset lives and which train list to use (config section `dataset`)."""

    name: str = "synthetic"
    root: str = "results/synthetic/voc"
    train_list: str = "voc"  # synthetic/pascal: voc | voc_sbd | trainaug; ignored for coco

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"name must be one of {', '.join(DATASETS)}")
        if self.train_list not in TRAIN_LISTS:
            raise ValueError(f"train_list must be one of {', '.join(TRAIN_LISTS)}")
