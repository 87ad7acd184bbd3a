"""Dataset readers (VOC/SBD, COCO, the synthetic benchmark) and the prepared index they feed."""
