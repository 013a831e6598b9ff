"""WAE training on top of the public :mod:`wae_fast` API (see :mod:`wae_fast.train.trainer`)."""
from .checkpoint import CheckpointError
from .config import TrainConfig, lr_factor, preset
from .data import DataError, ImageData, load_dataset
from .trainer import Trainer

__all__ = ["CheckpointError", "DataError", "ImageData", "TrainConfig", "Trainer", "load_dataset",
           "lr_factor", "preset"]
