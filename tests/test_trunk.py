"""The fast trunk (packed QKV / MLP weights, broadcast adaLN, in-place inference) against the plain formulas."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from flexitok.config import TransformerConfig
from flexitok.nn.blocks import AdaLNBlock, Block
from flexitok.nn.masks import causal_last_mask
from flexitok.nn.packed import is_packed, packed_weight

CFG = TransformerConfig(dim=64, depth=1, head_dim=16)
TOL = 1e-5


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding: max |a - b| <= TOL x max(1, max |b|)."""
    a, b = a.detach(), b.detach()
    return bool((a - b).abs().max() <= TOL * max(1.0, float(b.abs().max())))


def _ln(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=CFG.norm_eps)


def _ref_attention(attn, x, mask=None):
    # The textbook form: three projections, heads split, per-head LayerNorm on q and k, SDPA.
    b, s, d = x.shape
    h = CFG.num_heads

    def heads(t):
        return t.view(b, s, h, d // h).transpose(1, 2)

    q, k, v = heads(attn.wq(x)), heads(attn.wk(x)), heads(attn.wv(x))
    out = F.scaled_dot_product_attention(_ln(q), _ln(k), v, attn_mask=mask, scale=CFG.attn_scale)
    return attn.proj(out.transpose(1, 2).reshape(b, s, d))


def _ref_mlp(mlp, x):
    return mlp.fc2(F.silu(mlp.fc1(x)) * mlp.fc3(x))


def _ref_adaln(blk: AdaLNBlock, x, c, split):
    # Modulation materialised per token, as [B, S, D] tensors.
    mod = blk.adaLN_modulation(c).view(c.shape[0], blk.groups, 6, -1)
    per_token = mod[:, :1].expand(-1, x.shape[1], -1, -1).clone()
    if blk.groups == 2:
        per_token[:, split:] = mod[:, 1:2]
    gate_a, gate_m, shift_a, scale_a, shift_m, scale_m = per_token.unbind(2)
    x = x + gate_a * _ref_attention(blk.attn, _ln(x) * (1 + scale_a) + shift_a)
    return x + gate_m * _ref_mlp(blk.mlp, _ln(x) * (1 + scale_m) + shift_m)


def _ref_block(blk: Block, x, mask):
    x = x + _ref_attention(blk.attn, _ln(x), mask)
    return x + _ref_mlp(blk.mlp, _ln(x))


@pytest.mark.parametrize("groups, split", [(1, 0), (2, 5), (2, 0), (2, 12)])
def test_adaln_block_matches_reference_in_inference_and_training(groups, split):
    torch.manual_seed(0)
    blk = AdaLNBlock(CFG, groups)
    _randomize(blk)
    x, c = torch.randn(3, 12, 64), torch.randn(3, 64)
    x_before = x.clone()
    with torch.inference_mode():
        fast = blk(x, c, split)
    assert torch.equal(x, x_before), "the inference path must not modify its input"
    ref = _ref_adaln(blk, x, c, split)
    assert _close(fast, ref)

    # Autograd path: same values and the same gradients for every parameter and the input.
    xg = x.clone().requires_grad_(True)
    out = blk(xg, c, split)
    assert _close(out, ref)
    out.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in blk.named_parameters()}
    gx = xg.grad.clone()
    blk.zero_grad()
    xr = x.clone().requires_grad_(True)
    _ref_adaln(blk, xr, c, split).pow(2).sum().backward()
    for n, p in blk.named_parameters():
        assert _close(grads[n], p.grad), n
    assert _close(gx, xr.grad)


@pytest.mark.parametrize("masked", [False, True])
def test_plain_block_matches_reference(masked):
    torch.manual_seed(1)
    blk = Block(CFG)
    _randomize(blk, 1)
    x = torch.randn(2, 10, 64)
    mask = causal_last_mask(6, 4) if masked else None
    with torch.no_grad():
        fast = blk(x, mask)
    assert _close(fast, _ref_block(blk, x, mask))
    assert _close(blk(x, mask), _ref_block(blk, x, mask))


def test_projection_weights_are_packed_and_keep_their_keys():
    blk = AdaLNBlock(CFG, 2)
    qkv, mlp = (blk.attn.wq, blk.attn.wk, blk.attn.wv), (blk.mlp.fc1, blk.mlp.fc3)
    assert is_packed(qkv) and is_packed(mlp)
    keys = set(blk.state_dict())
    assert {"attn.wq.weight", "attn.wk.weight", "attn.wv.weight", "mlp.fc1.weight", "mlp.fc3.weight"} <= keys
    assert not any("qkv" in k for k in keys)
    with torch.no_grad():
        view = packed_weight(qkv)
        assert view.data_ptr() == blk.attn.wq.weight.data_ptr()  # zero copy
        assert torch.equal(view, torch.cat([w.weight for w in qkv]))
    assert packed_weight(qkv).requires_grad  # with autograd: a differentiable concatenation


def test_packing_survives_conversion_loading_and_in_place_updates():
    torch.manual_seed(2)
    blk = AdaLNBlock(CFG, 2)
    _randomize(blk, 2)
    x, c = torch.randn(2, 9, 64), torch.randn(2, 64)
    qkv = (blk.attn.wq, blk.attn.wk, blk.attn.wv)

    blk64 = copy.deepcopy(blk).double()  # _apply repacks after the dtype change
    assert is_packed((blk64.attn.wq, blk64.attn.wk, blk64.attn.wv)) and blk64.attn.wq.weight.dtype == torch.float64

    # load_state_dict(assign=True) replaces the storages; the post-load hook packs them again.
    other = AdaLNBlock(CFG, 2)
    other.load_state_dict({k: v.clone() for k, v in blk.state_dict().items()}, assign=True)
    assert is_packed((other.attn.wq, other.attn.wk, other.attn.wv)) and is_packed((other.mlp.fc1, other.mlp.fc3))
    with torch.no_grad():
        assert _close(other(x, c, 4), blk(x, c, 4))

    # In-place updates (optimizer steps, copy_) write into the packed storage and are seen by the fast path.
    with torch.no_grad():
        blk.attn.wk.weight.mul_(-1.5)
        blk.mlp.fc3.weight.add_(0.1)
        assert is_packed(qkv)
        assert _close(blk(x, c, 4), _ref_adaln(blk, x, c, 4))
        # Replacing a weight's storage unpacks it: the fast path falls back to concatenating.
        blk.attn.wv.weight.data = blk.attn.wv.weight.data.clone() * 2
        assert not is_packed(qkv)
        assert _close(blk(x, c, 4), _ref_adaln(blk, x, c, 4))


def test_decoder_features_are_not_overwritten_by_later_blocks():
    # return_features_at keeps a reference to a hidden state: the in-place fast path must leave it intact.
    from flexitok.config import tiny_config
    from flexitok.models.flextok import FlexTok

    torch.manual_seed(3)
    model = FlexTok(tiny_config(depth=3)).eval()
    _randomize(model.decoder, 3)
    dec = model.decoder
    x, t, cond = torch.randn(2, 3, 32, 32), torch.rand(2), torch.randn(2, 16, 64)
    with torch.no_grad():
        v_fast, f_fast = dec(x, t, cond, return_features_at=0)
    v_ref, f_ref = dec(x, t, cond, return_features_at=0)  # autograd path: no in-place writes
    assert _close(f_fast, f_ref) and _close(v_fast, v_ref)


@pytest.mark.slow
def test_compiled_model_matches_eager_and_the_bench_times_it() -> None:
    # FlexTok.compile (inductor; on the CPU with freezing) is an opt-in for inference: same tokens and images.
    from flexitok import DecodeConfig
    from flexitok.bench import BenchConfig, run_benchmark
    from flexitok.config import tiny_config
    from flexitok.models.flextok import FlexTok

    torch.manual_seed(0)
    model = FlexTok(tiny_config(image_size=16)).eval()
    _randomize(model.decoder, seed=1)  # adaLN-zero layers off zero, so the decoder output depends on the tokens
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    noise = model.initial_noise(2, torch.Generator().manual_seed(3))
    decode = DecodeConfig(steps=2, guidance_scale=3.0)
    with torch.inference_mode():
        tokens = model.tokenize(images)
        eager = model.detokenize(tokens, decode, noise=noise)
        assert model.compile() is model
        assert torch.equal(model.tokenize(images), tokens)
        compiled = model.detokenize(tokens, decode, noise=noise)
    assert eager.abs().max() > 0 and _close(compiled, eager)
    report = run_benchmark(
        BenchConfig(
            model="tiny",
            resolution=16,
            batch_size=1,
            device="cpu",
            compile=True,
            warmup=1,
            repeats=1,
            phases=("decoder_pass",),
            peak_size=64,
            decode=DecodeConfig(steps=1),
        )
    )
    assert report.config.compile and report.phases["decoder_pass"].seconds_per_batch > 0
    assert "compiled" in report.format_table()
