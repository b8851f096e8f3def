"""Fuzz the Python generation API (``GenerationPipeline`` inputs) against the shared policy of
:mod:`flexitok.utils.limits`: every input is either generated from or refused with a FlexiTokError; counted in
the fuzz tally (tests/fuzz_support.py) as "pipeline inputs"."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from flexitok import DecodeConfig, GenerationPipeline, Generator
from flexitok.errors import FlexiTokError
from flexitok.models.generator import generator_preset
from flexitok.utils.limits import MAX_PROMPT_CHARS
from tests.conftest import tiny_model
from tests.fuzz_support import alarm, budget, record

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz suite needs hypothesis (the dev extra)")
st = pytest.importorskip("hypothesis.strategies")
given, settings = hypothesis.given, hypothesis.settings
FUZZ = settings.get_profile("fuzz")
FAST = DecodeConfig(steps=1, guidance_scale=1.0, seed=0)
pytestmark = pytest.mark.usefixtures("one_thread")


def _encoder(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones(len(prompts), 2, 6), torch.ones(len(prompts), 2, dtype=torch.bool)


@pytest.fixture(scope="module")
def pipes() -> dict[str, GenerationPipeline]:
    tok = tiny_model()
    out = {}
    for kind in ("class", "text"):
        torch.manual_seed(0)
        cfg = generator_preset("tiny", vocab_size=tok.vocab_size, n_tokens=4, condition=kind, num_classes=3, text_dim=6)
        out[kind] = GenerationPipeline(Generator(cfg).eval(), tok, text_encoder=_encoder if kind == "text" else None)
    return out


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 3


def _is_prompt(p: Any) -> bool:
    return isinstance(p, str) and bool(p.strip()) and len(p) <= MAX_PROMPT_CHARS


def _rows(kind: str, labels: Any, prompts: Any) -> int | None:
    """How many samples a valid condition asks for, or None when the condition is invalid for this generator."""
    if kind == "class":
        if prompts is not None:
            return None
        if _is_id(labels):
            return 1
        ok = isinstance(labels, list) and labels and all(_is_id(v) for v in labels)
        return len(labels) if ok else None
    if labels is not None:
        return None
    if _is_prompt(prompts):
        return 1
    ok = isinstance(prompts, list) and prompts and all(_is_prompt(p) for p in prompts)
    return len(prompts) if ok else None


_SCALARS = st.one_of(st.integers(-3, 5), st.booleans(), st.floats(-2, 4), st.text(max_size=3))
_TEXT = st.one_of(st.text(max_size=6), st.sampled_from([" ", "x" * (MAX_PROMPT_CHARS + 1), "x" * MAX_PROMPT_CHARS]))


@settings(FUZZ, max_examples=budget(80))
@given(data=st.data())
def test_fuzz_generation_pipeline_inputs(pipes, data) -> None:
    kind = data.draw(st.sampled_from(["class", "text"]))
    # About half the draws are well-formed for this kind, so both outcomes are exercised.
    good_labels = st.one_of(st.integers(0, 2), st.lists(st.integers(0, 2), min_size=1, max_size=3))
    good_prompts = st.one_of(st.just("a shoe"), st.lists(st.sampled_from(["a", "bag", " b "]), min_size=1, max_size=3))
    any_labels = st.one_of(st.none(), _SCALARS, st.lists(_SCALARS, max_size=3))
    any_prompts = st.one_of(st.none(), _TEXT, st.integers(), st.lists(_TEXT, max_size=3))
    well_formed = data.draw(st.booleans(), label="well_formed")
    if well_formed and kind == "class":
        labels, prompts = data.draw(good_labels, label="labels"), None
    elif well_formed:
        labels, prompts = None, data.draw(good_prompts, label="prompts")
    else:
        labels, prompts = data.draw(any_labels, label="labels"), data.draw(any_prompts, label="prompts")
    num_samples = data.draw(st.one_of(st.none(), st.none(), st.integers(-1, 4)), label="num_samples")
    n_tokens = data.draw(st.one_of(st.none(), st.integers(1, 4), st.integers(-1, 5)), label="n_tokens")
    batch_size = data.draw(st.one_of(st.none(), st.integers(1, 3), st.integers(-1, 3)), label="batch_size")
    rows = _rows(kind, labels, prompts)
    valid = (
        rows is not None
        and (num_samples is None or num_samples == rows)
        and (n_tokens is None or 1 <= n_tokens <= 4)
        and (batch_size is None or batch_size >= 1)
    )
    what = f"{kind}: labels={labels!r:.60} prompts={prompts!r:.60} n={num_samples} k={n_tokens} bs={batch_size}"
    try:
        with alarm(60):
            out = pipes[kind](labels, prompts, num_samples, n_tokens, decode=FAST, batch_size=batch_size)
    except FlexiTokError as e:
        record("pipeline inputs", "refused_valid" if valid else "clean_error", f"{what}: {e}")
        return
    except BaseException as e:  # noqa: BLE001
        outcome = "hang" if type(e).__name__ == "Hang" else "traceback"
        record("pipeline inputs", outcome, f"{what}: {type(e).__name__}: {e}")
        return
    if not valid:
        record("pipeline inputs", "silent", what)
        return
    ok = out.tokens.shape == (rows, n_tokens or 4) and out.images.shape[0] == rows
    record("pipeline inputs", "accepted" if ok else "silent", f"{what}: shapes {tuple(out.tokens.shape)}")
