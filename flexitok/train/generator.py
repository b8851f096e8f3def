"""Training task for the autoregressive generator: next-token cross-entropy on pre-tokenized shards.

The YAML config (``configs/generator-*.yaml``) has four sections, parsed like every run config
(:func:`flexitok.train.config.load_run_config`)::

    model:   {preset: tiny, condition: class, ...}   # GeneratorConfig fields; vocab/n_tokens default to the shards'
    data:    {path: shards/fmnist-train, limit: null, eval_path: null}
    train:   {...}                                    # flexitok.train.trainer_config.TrainerConfig fields
    task:    {train_tokens: null, cond_dropout: 0.1}

``task.train_tokens = k`` trains on (and computes the loss over) the first k tokens only, for generators meant to
produce short, coarse sequences. Prompts are read to the text encoder's own length
(:data:`~flexitok.models.text_encoder.ENCODER_MAX_TOKENS`) in training as at inference; the model's prefix keeps
``model.text_max_len`` of those features. ``task.text_max_length`` (0.1/0.2 configs) is accepted only at that value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from flexitok.data.tokens import TokenShardDataset
from flexitok.errors import ConfigError, InvalidInputError
from flexitok.models.generator import Generator, GeneratorConfig, generator_preset
from flexitok.models.text_encoder import ENCODER_MAX_TOKENS, CachedTextEncoder, TextEncoder
from flexitok.train.config import RunConfig, load_run_config
from flexitok.train.run import TrainTarget
from flexitok.train.task import TrainTask
from flexitok.train.trainer_config import TrainerConfig
from flexitok.utils.config_json import Bound

EXPORT_DIR = "generator"  # save_pretrained folder written under the run's out_dir
EVAL_BATCH = 64  # held-out batch size of the periodic evaluation


@dataclass
class GeneratorTaskConfig:
    """Loss options. ``train_tokens``: loss over the first k tokens only (None = all). ``cond_dropout``: probability
    of replacing a row's class/prompt by the null condition (needed for classifier-free guidance)."""

    FIELD_BOUNDS: ClassVar[dict[str, Bound]] = {
        "train_tokens": Bound(1, 2**16),
        "cond_dropout": Bound(0, 1),
        "eval_batches": Bound(0, 2**20),
    }

    train_tokens: int | None = None
    cond_dropout: float = 0.1
    eval_batches: int = 4

    def __post_init__(self) -> None:
        if self.train_tokens is not None and self.train_tokens < 1:
            raise InvalidInputError(f"task.train_tokens must be >= 1 or null, got {self.train_tokens}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise InvalidInputError(f"task.cond_dropout must be in [0, 1), got {self.cond_dropout}")


@dataclass
class TokenDataSpec:
    """Token shards written by ``flexitok pretokenize`` (``eval_path``: optional held-out shards for eval loss)."""

    path: str
    limit: int | None = None
    eval_path: str | None = None


@dataclass
class GeneratorTrainConfig(RunConfig):
    """``flexitok train generator``."""

    model: GeneratorConfig
    data: TokenDataSpec
    train: TrainerConfig = field(default_factory=TrainerConfig)
    task: GeneratorTaskConfig = field(default_factory=GeneratorTaskConfig)

    @classmethod
    def resolve_tree(cls, tree: dict[str, Any]) -> dict[str, Any]:
        """The model section defaults to what the token shards recorded (vocab size, token count, classes)."""
        tree = _drop_text_max_length(tree)
        data = tree.get("data")
        if not isinstance(data, dict) or "path" not in data:
            raise ConfigError("data.path (token shards from `flexitok pretokenize`) is required")
        model = tree.get("model") or {}
        if not isinstance(model, dict):
            raise ConfigError(f"model must be a mapping of GeneratorConfig fields, got {model!r}")
        return {**tree, "model": model_config_from_dict(model, TokenShardDataset(data["path"]).meta)}


def _drop_text_max_length(tree: dict[str, Any]) -> dict[str, Any]:
    """Accept an old config's ``task.text_max_length`` only where it equals the one text length, and drop it."""
    task = tree.get("task")
    if not isinstance(task, dict) or "text_max_length" not in task:
        return tree
    task = dict(task)
    value = task.pop("text_max_length")
    if value != ENCODER_MAX_TOKENS or isinstance(value, bool):
        raise ConfigError(
            f"task.text_max_length is {value!r}, but it is no longer a setting: prompts are read to the text "
            f"encoder's {ENCODER_MAX_TOKENS} tokens in training and at inference alike (a different length in "
            "training would teach the model text features it never sees when generating). Remove the key; how "
            "many of those features the model reads is model.text_max_len"
        )
    return {**tree, "task": task}


def model_config_from_dict(d: dict[str, Any], shard_meta: dict[str, Any] | None = None) -> GeneratorConfig:
    """``{"preset": name, **overrides}`` or plain fields; ``vocab_size``, ``n_tokens`` and (for class models)
    ``num_classes``/``class_names`` default to what the token shards recorded."""
    d = dict(d)
    meta = shard_meta or {}
    for key in ("vocab_size", "n_tokens"):
        if d.get(key) in (None, "auto") and key in meta:
            d[key] = int(meta[key])
    if d.get("condition", "class") == "class":
        _classes_from_shards(d, meta)
    d = {k: v for k, v in d.items() if v != "auto"}
    name = d.pop("preset", None)
    try:
        return generator_preset(name, **d) if name is not None else GeneratorConfig(**d)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"bad generator model config: {e}") from e


def _classes_from_shards(d: dict[str, Any], meta: dict[str, Any]) -> None:
    """``num_classes``/``class_names`` of a class-conditional model from the shards' meta (old shards may lack
    them: then the config's values stand); a config value that disagrees with the shards is a ConfigError."""
    names = tuple(str(n) for n in meta["class_names"]) if meta.get("class_names") else None
    count = len(names) if names is not None else meta.get("num_classes")
    if count is None:
        return
    if d.get("num_classes") not in (None, "auto") and int(d["num_classes"]) != int(count):
        raise ConfigError(
            f"model.num_classes = {d['num_classes']} but the token shards hold {count} classes; leave "
            "model.num_classes out to take it from the shards"
        )
    if names is not None and d.get("class_names") not in (None, "auto") and tuple(d["class_names"]) != names:
        raise ConfigError(
            f"model.class_names {list(d['class_names'])[:4]}... differ from the token shards' {list(names)[:4]}...; "
            "leave model.class_names out to take them from the shards"
        )
    d["num_classes"] = int(count)
    if names is not None:
        d["class_names"] = names


def load_training_config(path: str | Path | None, overrides: list[str] | None = None) -> GeneratorTrainConfig:
    """Read a generator YAML config plus dotted overrides (``train.lr=3e-4``)."""
    return load_run_config(GeneratorTrainConfig, path, overrides)


class GeneratorTask(TrainTask):
    """:class:`~flexitok.train.task.TrainTask` for :class:`Generator` on token-shard batches
    ``{"tokens": LongTensor [B, N], "label": LongTensor [B], "caption": list[str] (text models)}``."""

    model: Generator

    def __init__(
        self,
        model: Generator,
        cfg: GeneratorTaskConfig | None = None,
        text_encoder: nn.Module | None = None,
        eval_dataset: torch.utils.data.Dataset | None = None,
    ) -> None:
        super().__init__(model)
        self.cfg = cfg or GeneratorTaskConfig()
        self.eval_dataset = eval_dataset
        self.text_encoder = text_encoder
        if model.conditioning.needs_text_encoder and text_encoder is None:
            enc = TextEncoder(model.config.text_encoder)
            if enc.dim != model.config.text_dim:
                raise InvalidInputError(
                    f"text encoder {model.config.text_encoder!r} gives {enc.dim}-wide features; model.text_dim is "
                    f"{model.config.text_dim}"
                )
            self.text_encoder = CachedTextEncoder(enc)

    def _prefix(self, model: Generator, batch: dict[str, Any], drop: Tensor | None) -> tuple[Tensor, Tensor]:
        return model.prefix(model.conditioning.from_batch(batch, self.text_encoder), null=drop)

    def batch_loss(self, model: Generator, batch: dict[str, Any], drop_prob: float) -> Tensor:
        """Mean next-token cross-entropy over the first ``train_tokens`` tokens. -> scalar."""
        dev = model.tok_emb.weight.device
        tokens = torch.as_tensor(batch["tokens"]).to(dev).long()
        if self.cfg.train_tokens is not None:
            tokens = tokens[:, : self.cfg.train_tokens]
        drop = None
        if drop_prob > 0:
            drop = torch.rand(tokens.shape[0], device=dev) < drop_prob
        prefix, valid = self._prefix(model, batch, drop)
        logits = model(tokens[:, :-1], prefix, valid)  # [B, k, V]
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    def loss(self, batch: dict[str, Any], step: int) -> tuple[Tensor, dict[str, Any]]:
        # The trainer logs the loss itself (averaged over processes, synced only at log steps).
        return self.batch_loss(self.model, batch, self.cfg.cond_dropout), {}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """Called by the trainer at the end with the final (EMA) weights: write ``<out_dir>/generator``."""
        assert isinstance(model, Generator)
        model.save_pretrained(Path(out_dir) / EXPORT_DIR)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Held-out next-token loss (no condition dropout) on the first ``eval_batches`` batches."""
        if self.eval_dataset is None:
            return {}
        assert isinstance(model, Generator)
        was_training = model.training
        model.eval()
        loader = torch.utils.data.DataLoader(self.eval_dataset, batch_size=EVAL_BATCH, shuffle=False)
        losses = []
        for i, batch in enumerate(loader):
            if i >= self.cfg.eval_batches:
                break
            losses.append(float(self.batch_loss(model, batch, 0.0)))
        model.train(was_training)
        return {"eval_loss": sum(losses) / max(len(losses), 1)}


def _held_out_tokens(dataset: Dataset, cfg: GeneratorTrainConfig) -> tuple[Dataset, Dataset | None]:
    """(training set, held-out set or None): ``data.eval_path`` when given; else, with ``train.eval_every > 0``,
    the last ``eval_batches`` batches of the shards, never trained on. Printed at start; refused when the
    shards are too small to give up that many."""
    if cfg.train.eval_every <= 0:
        return dataset, None
    if cfg.data.eval_path:
        eval_ds: Dataset = TokenShardDataset(cfg.data.eval_path)
        what = f"the token shards {cfg.data.eval_path}"
    else:
        total, n = len(dataset), cfg.task.eval_batches * EVAL_BATCH  # type: ignore[arg-type]
        if n <= 0 or total < 2 * n:
            raise ConfigError(
                f"train.eval_every > 0 without data.eval_path holds out the last task.eval_batches x {EVAL_BATCH} = "
                f"{n} samples, but data.path has {total}; set data.eval_path, lower task.eval_batches or set "
                "train.eval_every=0"
            )
        dataset, eval_ds = Subset(dataset, range(total - n)), Subset(dataset, range(total - n, total))
        what = f"the last {n} samples of {cfg.data.path} (held out from training)"
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"evaluation every {cfg.train.eval_every} steps on {what}", flush=True)
    return dataset, eval_ds


def build(cfg: GeneratorTrainConfig) -> tuple[TrainTask, Dataset]:
    """The generator target: an AR :class:`Generator` on token shards (``data.path``)."""
    dataset = TokenShardDataset(cfg.data.path, limit=cfg.data.limit)
    meta = dataset.meta
    if "vocab_size" in meta and int(meta["vocab_size"]) != cfg.model.vocab_size:
        raise InvalidInputError(
            f"model.vocab_size={cfg.model.vocab_size} but the shards were made by a tokenizer with "
            f"vocab_size={meta['vocab_size']}"
        )
    if "n_tokens" in meta and int(meta["n_tokens"]) < cfg.model.n_tokens:
        raise InvalidInputError(f"model.n_tokens={cfg.model.n_tokens} but the shards hold {meta['n_tokens']} tokens")
    train_ds, eval_ds = _held_out_tokens(dataset, cfg)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    return GeneratorTask(Generator(cfg.model), cfg.task, eval_dataset=eval_ds), train_ds


TARGET = TrainTarget(
    name="generator",
    help="train an autoregressive generator on token shards",
    config_class=GeneratorTrainConfig,
    build=build,
    exported=lambda cfg: Path(cfg.train.out_dir) / EXPORT_DIR,
    export_label="generator",
)
