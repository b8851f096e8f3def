"""Training: the loop (:mod:`~flexitok.train.trainer`), its task interface (:mod:`~flexitok.train.task`) and the
tasks (tokenizer, VAE, generator).

``flexitok train <target> --config configs/<run>.yaml [section.key=value ...] [--resume]`` runs them from the
command line; multi-GPU: ``torchrun --nproc_per_node=8 -m flexitok train tokenizer --config ...``.
"""

from flexitok.train.checkpointing.state import TrainState
from flexitok.train.ema import EMA
from flexitok.train.task import ExtraOptimizer, TrainTask
from flexitok.train.trainer import train
from flexitok.train.trainer_config import TrainerConfig

__all__ = ["EMA", "ExtraOptimizer", "TrainerConfig", "TrainState", "TrainTask", "train"]
