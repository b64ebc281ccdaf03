"""Training: typed run configs, the trainer (1 CPU .. N GPUs), checkpoints, parallelism, optimizer, metrics."""
from .config import RunConfig, load_run_config
from .trainer import Trainer, TrainingDiverged, TrainingInterrupted, TrainResult, train

__all__ = ["RunConfig", "Trainer", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "load_run_config", "train"]
