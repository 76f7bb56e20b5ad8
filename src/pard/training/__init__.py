"""PARD training: COD samples (Algorithm 1), the collator, data loading and the Trainer wiring."""

from .cod import CODConfig, PackedSample, build_cod_sample
from .collator import CODCollator
from .data import DataConfig
from .trainer import TrainConfig, train

__all__ = ["CODCollator", "CODConfig", "DataConfig", "PackedSample", "TrainConfig", "build_cod_sample", "train"]
