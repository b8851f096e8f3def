"""Everything about training checkpoints, in one place (what to open for "where is a checkpoint written"):

* :mod:`~flexitok.train.checkpointing.files`: the checkpoint *folder* on disk: atomic, content-hashed
  (``manifest.json``), verified before ``last`` points at it; reading it back.
* :mod:`~flexitok.train.checkpointing.checkpointer`: *what* a checkpoint holds (modules, EMA, optimizers,
  scheduler, trainer state; full or sharded under FSDP) and the collective save / verify / load of a run.
* :mod:`~flexitok.train.checkpointing.rundir`: the run folder: its lock, crash leftovers, which checkpoint to
  resume from (fallback past a corrupt ``last``), hyperparameter changes on resume.
* :mod:`~flexitok.train.checkpointing.state`: :class:`TrainState`, where a run is (step, data position, RNG
  streams) and what it was configured with.

No imports here: the modules import each other and :mod:`flexitok.train.stream` needs only ``state``.
"""
