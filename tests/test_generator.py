"""AR generator: causal masking, KV cache == full recompute, filtering, CFG batching, conditioning, training."""

from __future__ import annotations

import pytest
import torch

from flexitok.errors import CheckpointError, InvalidInputError
from flexitok.models.conditioning import ClassLabels, Condition, TextFeatures, Unconditional
from flexitok.models.generator import Generator, generator_preset
from flexitok.sampling.ar import (
    ARSamplingConfig,
    cfg_batch,
    generate,
    guidance_schedule,
    sample_logits,
    top_k_filter,
    top_p_filter,
)
from flexitok.train.generator import GeneratorTask, GeneratorTaskConfig

V, N = 40, 10


def make(condition: str = "class", **kw) -> Generator:
    torch.manual_seed(0)
    cfg = generator_preset("tiny", vocab_size=V, n_tokens=N, condition=condition, num_classes=4, text_dim=12, **kw)
    return Generator(cfg).eval()


def cond_kwargs(condition: str, b: int = 3) -> Condition:
    if condition == "class":
        return ClassLabels(torch.arange(b) % 4)
    if condition == "text":
        mask = torch.ones(b, 5, dtype=torch.bool)
        mask[0, 3:] = False  # a padded prompt
        return TextFeatures(torch.randn(b, 5, 12), mask)
    return Unconditional(b)


@pytest.mark.parametrize("condition", ["class", "text", "none"])
def test_causal_logits_ignore_future_tokens(condition: str) -> None:
    m = make(condition)
    prefix, valid = m.prefix(cond_kwargs(condition))
    tokens = torch.randint(0, V, (3, N))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % V
    a = m(tokens, prefix, valid)
    b = m(changed, prefix, valid)
    # rows 0..6 predict tokens 0..6 and only see tokens < 6
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_padded_text_positions_do_not_leak() -> None:
    m = make("text")
    kw = cond_kwargs("text")
    assert isinstance(kw, TextFeatures)
    prefix, valid = m.prefix(kw)
    tokens = torch.randint(0, V, (3, 4))
    base = m(tokens, prefix, valid)
    feats = kw.features.clone()
    feats[0, 3:] = 100.0  # garbage under the padding mask
    prefix2, valid2 = m.prefix(TextFeatures(feats, kw.mask))
    torch.testing.assert_close(m(tokens, prefix2, valid2), base)
    assert torch.isfinite(base).all()


@pytest.mark.parametrize("condition", ["class", "text", "none"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_sampling_matches_uncached(condition: str, temperature: float) -> None:
    m = make(condition)
    kw = cond_kwargs(condition)
    out = []
    for use_cache in (True, False):
        cfg = ARSamplingConfig(
            n_tokens=N, temperature=temperature, top_k=20, top_p=0.95, guidance_scale=2.5, use_cache=use_cache
        )
        out.append(generate(m, cfg, kw, generator=torch.Generator().manual_seed(7)))
    assert out[0].shape == (3, N)
    assert torch.equal(out[0], out[1])


def test_cached_logits_match_full_forward() -> None:
    m = make("class")
    prefix, valid = m.prefix(ClassLabels(torch.tensor([1, 2])))
    tokens = torch.randint(0, V, (2, N - 1))
    full = m(tokens, prefix, valid)  # [2, N, V]
    cache = m.new_cache(2)
    steps = [m.prefill(prefix, valid, cache)]
    for i in range(N - 1):
        steps.append(m.step(tokens[:, i : i + 1], cache, m.prefix_len + i)[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_seeds_reproduce_and_per_row_generators_ignore_batching() -> None:
    m = make("class")
    cfg = ARSamplingConfig(n_tokens=6, temperature=1.0)
    labels = torch.tensor([0, 1, 2, 3])
    a = generate(m, cfg, ClassLabels(labels), generator=torch.Generator().manual_seed(3))
    b = generate(m, cfg, ClassLabels(labels), generator=torch.Generator().manual_seed(3))
    c = generate(m, cfg, ClassLabels(labels), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    whole = generate(m, cfg, ClassLabels(labels), generator=gens)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    half = generate(m, cfg, ClassLabels(labels[2:]), generator=gens[2:])
    assert torch.equal(whole[2:], half)


def test_top_k_and_top_p_filters() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0]])
    k2 = top_k_filter(logits, 2)
    assert torch.isfinite(k2).tolist() == [[False, True, True, False, False]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    probs = logits.softmax(-1)[0]  # sorted: 4.0 (0.64), 3.0 (0.24), 2.0 (0.09), ...
    p = float(probs[1] + probs[2]) - 1e-3  # needs the two most likely tokens
    kept = torch.isfinite(top_p_filter(logits, p))
    assert kept.tolist() == [[False, True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).sum() == 1  # always keeps the top token
    # sampling never leaves the filtered set
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_logits(logits.expand(64, -1), 1.0, top_k=2, generator=g) for _ in range(4)])
    assert set(draws.unique().tolist()) <= {1, 2}
    assert torch.equal(sample_logits(logits, temperature=0.0), torch.tensor([1]))


def test_cfg_batches_cond_and_uncond_together() -> None:
    m = make("class")
    prefix, valid = m.prefix(ClassLabels(torch.tensor([0, 1, 2])))
    null_prefix = m.null_prefix(3)
    assert null_prefix is not None
    null, null_valid = null_prefix
    both, both_valid = cfg_batch(prefix, valid, null, null_valid)
    assert both.shape == (6, m.prefix_len, m.config.dim) and both_valid.shape == (6, m.prefix_len)
    torch.testing.assert_close(both[3:], m.conditioning.table.weight[-1].view(1, 1, -1).expand(3, 1, -1))
    seen = []
    hook = m.head.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[0]))
    generate(m, ARSamplingConfig(n_tokens=4, guidance_scale=3.0), ClassLabels(torch.tensor([0, 1, 2])))
    assert seen and all(s == 6 for s in seen)  # one [cond; uncond] batch per step
    seen.clear()
    generate(m, ARSamplingConfig(n_tokens=4, guidance_scale=1.0), ClassLabels(torch.tensor([0, 1, 2])))
    assert all(s == 3 for s in seen)  # no guidance -> no uncond rows
    hook.remove()


def test_guidance_changes_samples_and_schedules() -> None:
    m = make("class")
    labels = ClassLabels(torch.tensor([0, 1, 2, 3]))
    greedy = [generate(m, ARSamplingConfig(n_tokens=N, temperature=0, guidance_scale=s), labels) for s in (1.0, 8.0)]
    assert not torch.equal(*greedy)
    lin = guidance_schedule("linear", 4.0)
    assert lin(0, 5) == 1.0 and lin(4, 5) == 4.0 and guidance_schedule("constant", 2.0)(3, 5) == 2.0
    cos = guidance_schedule("cosine", 3.0)
    assert cos(0, 9) == pytest.approx(1.0) and cos(8, 9) == pytest.approx(3.0)


@pytest.mark.parametrize("condition", ["class", "text"])
def test_condition_changes_logits(condition: str) -> None:
    m = make(condition)
    tokens = torch.randint(0, V, (2, 5))
    if condition == "class":
        a = m(tokens, *m.prefix(ClassLabels(torch.tensor([0, 0]))))
        b = m(tokens, *m.prefix(ClassLabels(torch.tensor([1, 3]))))
    else:
        a = m(tokens, *m.prefix(TextFeatures(torch.randn(2, 4, 12))))
        b = m(tokens, *m.prefix(TextFeatures(torch.randn(2, 4, 12))))
    assert (a - b).abs().amax(-1).min() > 1e-4  # every position's logits depend on the condition
    null_prefix = m.null_prefix(2)
    assert null_prefix is not None
    null = m(tokens, *null_prefix)
    assert not torch.allclose(a, null)


def test_invalid_tokens_and_labels_raise_clear_errors() -> None:
    m = make("class")
    prefix, valid = m.prefix(ClassLabels(torch.tensor([0])))
    with pytest.raises(InvalidInputError, match=r"\[0, 40\)"):
        m(torch.tensor([[3, 40]]), prefix, valid)
    with pytest.raises(InvalidInputError, match=r"\[0, 40\)"):
        m(torch.tensor([[-1]]), prefix, valid)
    with pytest.raises(InvalidInputError, match="integer"):
        m(torch.zeros(1, 2), prefix, valid)
    with pytest.raises(InvalidInputError, match="at most"):
        m(torch.zeros(1, N + 1, dtype=torch.long), prefix, valid)
    with pytest.raises(InvalidInputError, match="class labels"):
        m.prefix(ClassLabels(torch.tensor([7])))
    with pytest.raises(InvalidInputError, match="at most"):
        generate(m, ARSamplingConfig(n_tokens=N + 1), ClassLabels(torch.tensor([0])))
    with pytest.raises(InvalidInputError):
        ARSamplingConfig(top_p=0.0)


def test_save_and_load_roundtrip(tmp_path) -> None:
    m = make("text", class_names=None)
    m.save_pretrained(tmp_path / "g")
    loaded = Generator.from_pretrained(tmp_path / "g")
    assert loaded.config == m.config
    tokens = torch.randint(0, V, (2, 3))
    kw = cond_kwargs("text", 2)
    torch.testing.assert_close(loaded(tokens, *loaded.prefix(kw)), m(tokens, *m.prefix(kw)))
    with pytest.raises(CheckpointError, match="no generator"):
        Generator.from_pretrained(tmp_path / "missing")
    (tmp_path / "g" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        Generator.from_pretrained(tmp_path / "g")


def test_tiny_overfit_reduces_loss() -> None:
    torch.manual_seed(0)
    cfg = generator_preset("tiny", vocab_size=V, n_tokens=N, num_classes=4)
    m = Generator(cfg)
    task = GeneratorTask(m, GeneratorTaskConfig(cond_dropout=0.1))
    # synthetic data: each class has its own fixed sequence
    seqs = torch.randint(0, V, (4, N))
    batch = {"tokens": seqs.repeat(4, 1), "label": torch.arange(4).repeat(4)}
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3)
    first = None
    for step in range(40):
        loss, logs = task.loss(batch, step)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        assert float(task.batch_loss(m, batch, 0.0)) < 0.25 * first
    out = generate(m, ARSamplingConfig(n_tokens=N, temperature=0), ClassLabels(torch.arange(4)))
    assert (out == seqs).float().mean() > 0.9  # memorised sequences come back under greedy decoding


def test_train_tokens_limits_the_loss_to_the_first_k() -> None:
    m = make("class")
    tokens = torch.randint(0, V, (2, N))
    task = GeneratorTask(m, GeneratorTaskConfig(train_tokens=3, cond_dropout=0.0))
    labels = torch.tensor([0, 1])
    base = task.batch_loss(m, {"tokens": tokens, "label": labels}, 0.0)
    changed = tokens.clone()
    changed[:, 3:] = (changed[:, 3:] + 5) % V
    torch.testing.assert_close(task.batch_loss(m, {"tokens": changed, "label": labels}, 0.0), base)
