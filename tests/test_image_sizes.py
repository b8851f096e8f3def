"""Any image size per call: tokenize batches and mixed-size lists, detokenize(image_size=...), larger sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexitok import DecodeConfig, FlexTok, InvalidInputError
from flexitok.errors import OutsideTrainedRegimeWarning
from tests.conftest import bilinear_align_corners


@pytest.fixture(scope="module")
def model(official_dir) -> FlexTok:
    # Position tables of 4x4 patches: 64x64 images at most in the trained regime.
    return FlexTok.from_official(official_dir / "model.safetensors")


def _images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


def test_small_non_square_image_same_tokens_alone_batched_and_mixed(model):
    """A 32x48 image (a 2x3 patch grid inside the 4x4 table) gets the same tokens alone, in a same-size batch
    and in a list with images of other sizes."""
    batch = _images(3, 32, 48, 0)
    alone = model.tokenize(batch[1:2])
    assert alone.shape == (1, 32)
    assert torch.equal(model.tokenize(batch)[1:2], alone)
    mixed = [_images(1, 64, 64, 1)[0], batch[1], _images(1, 16, 32, 2)[0], batch[0][None]]
    ids = model.tokenize(mixed)
    assert ids.shape == (4, 32)
    assert torch.equal(ids[1:2], alone)
    assert torch.equal(ids[3:4], model.tokenize(batch[0:1]))
    assert torch.equal(ids[0:1], model.tokenize(mixed[0][None]))
    # Different content, different tokens: the list really holds separate images.
    assert not torch.equal(ids[1], ids[3])


def test_smaller_grids_use_the_top_left_corner_of_the_table(model):
    """Official semantics (posemb_scaling='absolute'): no interpolation below the table size."""
    latents = torch.randn(1, 16, 4, 6)  # 2x3 patches
    pe = model.encoder.posemb
    got = model.encoder.embed_patches(latents) - model.encoder.patch_embed(latents).flatten(1, 2)
    expected = pe.table[0, :, :2, :3].permute(1, 2, 0).reshape(1, 6, -1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_sizes_that_do_not_fit_the_patch_grid_are_refused(model):
    with pytest.raises(InvalidInputError, match="40x48 .* multiples of 16 and 16"):
        model.tokenize(_images(1, 40, 48, 0))
    with pytest.raises(InvalidInputError, match="image 1 of the list"):
        model.tokenize([_images(1, 32, 32, 0)[0], torch.zeros(32, 32)])
    with pytest.raises(InvalidInputError, match="image_size has 1 entries for 2"):
        model.detokenize_list(torch.zeros(2, 4, dtype=torch.long), DecodeConfig(steps=1), image_size=[(32, 32)])
    with pytest.raises(InvalidInputError, match="multiples of 16"):
        model.detokenize(torch.zeros(1, 4, dtype=torch.long), DecodeConfig(steps=1), image_size=(24, 32))


def test_detokenize_image_size_one_for_all_and_per_image(model):
    tokens = model.tokenize(_images(3, 32, 48, 3))
    assert model.detokenize(tokens, DecodeConfig(steps=1, guidance_scale=1.0)).shape == (3, 3, 64, 64)  # native default
    assert model.detokenize(tokens, DecodeConfig(steps=1, guidance_scale=1.0), image_size=(32, 48)).shape == (
        3,
        3,
        32,
        48,
    )
    assert model.detokenize(tokens, DecodeConfig(steps=1, guidance_scale=1.0), image_size=32).shape == (3, 3, 32, 32)
    sizes = [(32, 48), (64, 64), (32, 48)]
    noise = model.initial_noise_list(3, torch.Generator().manual_seed(4), sizes)
    assert [tuple(n.shape) for n in noise] == [(16, 4, 6), (16, 8, 8), (16, 4, 6)]
    mixed = model.detokenize_list(
        tokens[:, :8], DecodeConfig(steps=2, guidance_scale=3.0), image_size=sizes, noise=noise
    )
    assert isinstance(mixed, list) and [tuple(m.shape) for m in mixed] == [(3, 32, 48), (3, 64, 64), (3, 32, 48)]
    for i in range(3):
        alone = model.detokenize(
            tokens[i : i + 1, :8], DecodeConfig(steps=2, guidance_scale=3.0), image_size=sizes[i], noise=noise[i][None]
        )
        assert torch.allclose(mixed[i], alone[0], atol=1e-5)
    # Drawing the noise inside detokenize follows the same per-image order as initial_noise_list.
    drawn = model.detokenize_list(
        tokens[:, :8],
        DecodeConfig(steps=2, guidance_scale=3.0),
        image_size=sizes,
        generator=torch.Generator().manual_seed(4),
    )
    assert all(torch.equal(a, b) for a, b in zip(drawn, mixed, strict=True))
    with pytest.raises(InvalidInputError, match="noise must have shape"):
        model.detokenize_list(tokens, DecodeConfig(steps=1), image_size=sizes, noise=torch.zeros(3, 16, 4, 6))
    with pytest.raises(InvalidInputError, match="one size for all images; for one per image use detokenize_list"):
        model.detokenize(tokens, DecodeConfig(steps=1), image_size=sizes)  # type: ignore[arg-type]


def test_autoencode_keeps_the_input_size(model):
    out = model.autoencode(_images(2, 32, 48, 5), decode=DecodeConfig(steps=1, guidance_scale=1.0))
    assert out.shape == (2, 3, 32, 48)


def test_larger_than_the_table_warns_and_interpolates(model):
    """Above the table (outside the trained regime) the table is stretched bilinearly, with a warning."""
    with pytest.warns(OutsideTrainedRegimeWarning, match="96x64 is larger than .*64x64"):
        ids = model.tokenize(_images(1, 96, 64, 6))
    assert ids.shape == (1, 32)
    with pytest.warns(OutsideTrainedRegimeWarning, match="decoder"):
        out = model.detokenize(ids, DecodeConfig(steps=1, guidance_scale=1.0), image_size=(96, 64))
    assert out.shape == (1, 3, 96, 64)
    # Rows stretched from 4 to 6 (corners aligned), columns exactly the table's 4.
    table = model.encoder.posemb.table[0].double().numpy()
    got = model.encoder.posemb.for_grid((6, 4))[0].double().numpy()
    assert np.abs(got - bilinear_align_corners(table, (6, 4))).max() < 1e-6
    # A grid wider in one axis and narrower in the other: the narrow axis is still the top-left crop.
    got = model.encoder.posemb.for_grid((2, 6))[0].double().numpy()
    assert np.abs(got - bilinear_align_corners(table[:, :2, :], (2, 6))).max() < 1e-6


def test_cli_keep_aspect_and_size_round_trip_through_the_tokens_file(tmp_path, one_thread):
    """flexitok tokenize --keep-aspect / --size record the sizes; detokenize decodes at them."""
    import json

    from PIL import Image

    from flexitok.cli.main import main
    from tests.conftest import tiny_model

    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)  # native 32x32, 4x4 pixel patches
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(g.integers(0, 255, (50, 50, 3), dtype=np.uint8)).save(tmp_path / "square.png")
    files = [str(tmp_path / "wide.png"), str(tmp_path / "square.png")]
    common = ["--model", str(model_dir), "--device", "cpu"]
    assert main(["tokenize", *files, "--keep-aspect", "-o", str(tmp_path / "t.json"), *common]) == 0
    record = json.loads((tmp_path / "t.json").read_text())
    assert record["image_sizes"] == [[20, 32], [32, 32]] and "image_size" not in record
    assert main(["detokenize", str(tmp_path / "t.json"), "-o", str(tmp_path / "out"), "--steps", "1", *common]) == 0
    assert Image.open(tmp_path / "out" / "wide.png").size == (32, 20)  # PIL: (W, H)
    assert Image.open(tmp_path / "out" / "square.png").size == (32, 32)

    assert main(["tokenize", *files, "--size", "16x24", "-o", str(tmp_path / "s.json"), *common]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["image_size"] == [16, 24]
    out = tmp_path / "one.png"
    assert main(["detokenize", str(tmp_path / "s.json"), "-o", str(tmp_path / "out2"), "--size", "8x8", *common]) == 0
    assert Image.open(tmp_path / "out2" / "wide.png").size == (8, 8)
    assert main(["tokenize", files[0], "--size", "18x24", "-o", str(out.with_suffix(".json")), *common]) == 2


def test_cli_reconstruct_keeps_the_aspect_ratio_or_takes_a_size(tmp_path, one_thread):
    """flexitok reconstruct --keep-aspect / --size: rows at the images' own sizes, the same tokens as tokenize."""
    from PIL import Image

    from flexitok.cli.main import main
    from flexitok.io.images import load_image
    from tests.conftest import tiny_model

    model = tiny_model()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)  # native 32x32
    g = np.random.default_rng(1)
    Image.fromarray(g.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(g.integers(0, 255, (50, 50, 3), dtype=np.uint8)).save(tmp_path / "square.png")
    files = [str(tmp_path / "wide.png"), str(tmp_path / "square.png")]
    common = ["--model", str(model_dir), "--device", "cpu", "--steps", "1", "--tokens", "1,8"]
    pad = 2

    assert main(["reconstruct", *files, "--keep-aspect", "-o", str(tmp_path / "a.png"), *common]) == 0
    grid = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    # 2 rows x 3 columns (input, k=1, k=8) of 32x32 slots under a label strip; the wide row is 20x32, centred.
    assert grid.shape[1] == pad + 3 * (32 + pad)
    strip = grid.shape[0] - (pad + 2 * (32 + pad))
    assert strip > 0
    wide = load_image(tmp_path / "wide.png", lambda hw: (20, 32)).tensor
    expect = ((wide.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    top = strip + pad + (32 - 20) // 2
    assert np.abs(grid[top : top + 20, pad : pad + 32].astype(float) - expect).max() <= 1
    assert (grid[strip + pad : top, pad : pad + 32] == 255).all()  # white above the centred 20-row cell

    assert main(["reconstruct", *files, "--size", "16x24", "-o", str(tmp_path / "s.png"), *common]) == 0
    w, h = Image.open(tmp_path / "s.png").size
    assert w == pad + 3 * (24 + pad) and h > pad + 2 * (16 + pad)
    assert main(["reconstruct", *files, "--size", "18x24", "-o", str(tmp_path / "bad.png"), *common]) == 2
    assert not (tmp_path / "bad.png").exists()
