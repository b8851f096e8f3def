"""Training: the generic trainer (:mod:`~flexitok.train.trainer`) and its tasks (tokenizer, VAE, generator).

``flexitok train <target> --config configs/<run>.yaml [section.key=value ...] [--resume]`` runs them from the
command line; multi-GPU: ``torchrun --nproc_per_node=8 -m flexitok train tokenizer --config ...``.
"""

from flexitok.train.ema import EMA
from flexitok.train.trainer import TrainConfig, TrainTask, train

__all__ = ["EMA", "TrainConfig", "TrainTask", "train"]
