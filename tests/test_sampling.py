"""Rectified-flow samplers: the official Euler default, second-order accuracy, guidance intervals, pass counts."""

from __future__ import annotations

import math

import pytest
import torch

from flexitok.errors import InvalidInputError
from flexitok.sampling.decode import DecodeConfig as D
from flexitok.sampling.flow import decoder_passes, evaluation_times, sample_flow, timestep_grid
from flexitok.sampling.guidance import APG, cfg_combine


def _official_euler(velocity, noise, cond, null, steps, scale, apg):
    # The reference loop: guided Euler steps on the official grid.
    x, b = noise, noise.shape[0]
    for t in timestep_grid(steps):
        tt = torch.full((b,), t)
        both = velocity(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null]))
        v = apg(both[:b], both[b:], scale) if apg else cfg_combine(both[:b], both[b:], scale)
        x = x - (1.0 / steps) * v
    return x


class _Recorder:
    """A velocity field that depends on x, t and the condition, recording every call's (t, rows)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def __call__(self, x, t, cond):
        self.calls.append((float(t[0]), x.shape[0]))
        return torch.sin(x) * (1 + t.view(-1, 1, 1, 1)) + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def test_default_sampler_is_the_official_euler_loop():
    noise, cond, null = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8), torch.zeros(2, 5, 8)
    for apg in (False, True):
        ref = _official_euler(_Recorder(), noise, cond, null, 6, 3.0, APG() if apg else None)
        cfg = D(steps=6, guidance_scale=3.0, apg=apg)
        assert cfg.official
        assert torch.equal(sample_flow(_Recorder(), noise, cond, null, cfg), ref)


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_convergence_order(sampler, order):
    # dx/dt = x from t = 1 to 0: x(0) = x(1) / e. Halving the step divides the error by 2^order.
    def velocity(x, t, cond):
        return x

    x1 = torch.ones(1, 1, 1, 1, dtype=torch.float64)

    def err(steps):
        out = sample_flow(velocity, x1, torch.zeros(1, 1, 1), config=D(steps=steps, sampler=sampler))
        return abs(float(out) - math.exp(-1))

    ratio = err(16) / err(32)
    assert 2**order * 0.8 < ratio < 2**order * 1.25


@pytest.mark.parametrize("sampler", ["euler", "heun", "midpoint"])
@pytest.mark.parametrize("interval", [None, (0.3, 0.7), (0.0, 0.0)])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_pass_count_and_guidance_interval(sampler, interval, scale):
    rec = _Recorder()
    noise, cond, null = torch.randn(2, 1, 2, 2), torch.randn(2, 3, 4), torch.zeros(2, 3, 4)
    cfg = D(steps=5, guidance_scale=scale, sampler=sampler, guidance_interval=interval)
    sample_flow(rec, noise, cond, null, cfg)
    times = evaluation_times(5, sampler)
    assert [t for t, _ in rec.calls] == pytest.approx(times)
    assert len(times) == {"euler": 5, "heun": 9, "midpoint": 10}[sampler]
    for t, rows in rec.calls:
        guided = scale != 1.0 and (interval is None or interval[0] <= t <= interval[1])
        assert rows == (4 if guided else 2), (t, rows)
    assert decoder_passes(cfg) == sum(rows for _, rows in rec.calls) // 2


def test_guidance_outside_the_interval_is_the_conditional_velocity():
    noise, cond, null = torch.randn(1, 1, 2, 2), torch.randn(1, 3, 4), torch.zeros(1, 3, 4)
    off = sample_flow(_Recorder(), noise, cond, null, D(steps=4, guidance_scale=5.0, guidance_interval=(0.0, 0.1)))
    unguided = sample_flow(_Recorder(), noise, cond, None, D(steps=4))
    assert torch.equal(off, unguided)  # no evaluation t (1, .75, .5, .25) lies in [0, 0.1]
    on = sample_flow(_Recorder(), noise, cond, null, D(steps=4, guidance_scale=5.0, guidance_interval=(0.0, 1.0)))
    assert torch.equal(on, sample_flow(_Recorder(), noise, cond, null, D(steps=4, guidance_scale=5.0)))
    assert decoder_passes(D()) == 40 and decoder_passes(D(guidance_scale=1.0)) == 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "rk4"}, "unknown sampler"),
        ({"guidance_interval": (0.8, 0.2)}, "guidance_interval"),
        ({"guidance_interval": (-0.1, 0.5)}, "guidance_interval"),
        ({"guidance_interval": (0.5,)}, "two numbers"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_sampler_options_are_refused(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        D(**kwargs)


def test_sampler_options_serialise_only_when_not_official():
    assert D().to_dict() == {"steps": 20, "guidance_scale": 7.5, "apg": True, "seed": 0}
    d = D(sampler="heun", guidance_interval=(0.25, 0.75)).to_dict()
    assert d["sampler"] == "heun" and d["guidance_interval"] == [0.25, 0.75]
    assert D(**{**d, "guidance_interval": tuple(d["guidance_interval"])}) == D(
        sampler="heun", guidance_interval=(0.25, 0.75)
    )


def test_ftok_header_refuses_sampler_options_it_cannot_store():
    from flexitok.codec.ftok import FtokError, FtokFile

    args = ((1, 2, 3), "0" * 32, (32, 32), 16, (8, 8, 8, 5, 5, 5), "")
    assert FtokFile(*args, D(steps=7)).decode.steps == 7
    for d in (D(sampler="heun"), D(guidance_interval=(0.2, 0.8))):
        with pytest.raises(FtokError, match="cannot be stored"):
            FtokFile(*args, d)


def test_detokenize_with_fewer_passes_calls_the_decoder_fewer_times():
    from flexitok.config import tiny_config
    from flexitok.models.flextok import FlexTok

    torch.manual_seed(0)
    model = FlexTok(tiny_config()).eval()
    rows: list[int] = []
    model.decoder.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    tokens = torch.zeros(2, 16, dtype=torch.long)
    for cfg in (D(steps=4), D(steps=4, sampler="midpoint", guidance_interval=(0.5, 1.0)), D(steps=3, sampler="heun")):
        rows.clear()
        out = model.detokenize(tokens, cfg)
        assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
        assert sum(rows) == 2 * decoder_passes(cfg), cfg
