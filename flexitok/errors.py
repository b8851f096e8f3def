"""Exceptions raised for user errors (bad input, bad files); the CLI prints their message without a traceback."""


class FlexiTokError(Exception):
    """Base class for errors caused by the caller's input rather than a bug."""


class InvalidInputError(FlexiTokError, ValueError):
    """A tensor, image or argument has the wrong shape, dtype, range or value."""


class OutputError(FlexiTokError):
    """An output file or folder cannot be created (a parent that is a file, no permission, an invalid name)."""


class CheckpointError(FlexiTokError):
    """A checkpoint is missing, truncated, corrupt or does not match the model."""


class ConfigError(InvalidInputError):
    """A run config (YAML or override) has an unknown key or a value of the wrong type."""


class DatasetError(FlexiTokError):
    """A dataset is missing, empty, malformed or configured inconsistently."""


class FeatureExtractorError(FlexiTokError):
    """A feature network's package or weights (EfficientNet-Lite0, Inception) are not available."""


class TrainingError(FlexiTokError):
    """A training run cannot start or continue: its folder is in use, it diverged, or its settings changed."""


class TrainingStopped(TrainingError):
    """A run stopped on request (SIGTERM from a scheduler) after writing a checkpoint: rerun with ``--resume``."""

    exit_code = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, try again


class OutsideTrainedRegimeWarning(UserWarning):
    """The model is used outside what it was trained for (e.g. images larger than its position tables)."""


class MissingExtraError(FlexiTokError, ImportError):
    """An optional dependency is not installed; the message names the extra to install (``flexitok[train]``)."""
