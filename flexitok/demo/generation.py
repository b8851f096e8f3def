"""The demo's optional generation panel: AR generator -> k tokens -> FlexTok decoder."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from flexitok.adaptive import decode_tokens
from flexitok.errors import InvalidInputError
from flexitok.sampling.decode import DecodeConfig


class ARGeneratorBackend:
    """Wraps a :class:`flexitok.models.generator.Generator` and its tokenizer for :func:`create_app`.

    Sampling is seeded per request (same seed, condition and k -> same image).
    """

    def __init__(
        self,
        generator: Any,
        tokenizer: Any,
        decode: DecodeConfig | None = None,
        cfg_scale: float = 3.0,
        temperature: float = 1.0,
    ) -> None:
        from flexitok.cli.generate import check_pair

        check_pair(generator, tokenizer.vocab_size, tokenizer.n_registers)
        self.generator, self.tokenizer = generator, tokenizer
        self.decode = decode or DecodeConfig()
        self.cfg_scale, self.temperature = cfg_scale, temperature
        c = generator.config
        self.condition: str = c.condition
        if c.condition == "class":
            self.class_names = list(c.class_names or (f"class {i}" for i in range(c.num_classes)))
        else:
            self.class_names = []
        self.max_tokens: int = c.n_tokens
        self._text_encoder: Any = None

    @classmethod
    def load(cls, name_or_path: str, tokenizer: Any, decode: DecodeConfig | None = None) -> ARGeneratorBackend:
        from flexitok.models.generator import Generator

        return cls(Generator.from_pretrained(name_or_path, device=tokenizer.device), tokenizer, decode)

    @torch.no_grad()
    def generate(self, k: int, seed: int, class_index: int | None, prompt: str | None) -> Tensor:
        """-> image ``[3, H, W]`` in [-1, 1] from ``k`` sampled tokens."""
        from flexitok.cli.generate import condition_kwargs
        from flexitok.sampling.ar import ARSamplingConfig, generate

        labels = prompts = None
        if self.condition == "class":
            if class_index is None or not 0 <= class_index < len(self.class_names):
                raise InvalidInputError(f"pick a class in 0..{len(self.class_names) - 1}")
            labels = [class_index]
        elif self.condition == "text":
            if not prompt or not prompt.strip():
                raise InvalidInputError("type a prompt")
            prompts = [prompt.strip()]
            if self._text_encoder is None:
                from flexitok.models.text_encoder import TextEncoder

                self._text_encoder = TextEncoder(self.generator.config.text_encoder).to(self.tokenizer.device)
        kwargs = condition_kwargs(self.generator, labels, prompts, self._text_encoder)
        if self.condition == "none":
            kwargs["batch_size"] = 1
        cfg = ARSamplingConfig(n_tokens=k, temperature=self.temperature, guidance_scale=self.cfg_scale)
        device = self.generator.tok_emb.weight.device
        tokens = generate(self.generator, cfg, generator=[torch.Generator(device=device).manual_seed(seed)], **kwargs)
        return decode_tokens(self.tokenizer, tokens[0], replace(self.decode, seed=seed))[0]
