"""The standard FID Inception-v3: the TF "2015-12-05" graph ported to PyTorch (the weights file
``pt_inception-2015-12-05-6726825d.pth`` used by pytorch-fid, torch-fidelity and ADM-compatible evaluators).

The network is Inception-v3 with the quirks of the TF graph: the average pools inside the A, C and E blocks
ignore padding (``count_include_pad=False``), the last E block pools with a max instead of an average, inputs
are resized to 299x299 bilinearly without antialiasing and scaled to [-1, 1], and the classifier has 1008
outputs. Module and parameter names follow torchvision's ``Inception3`` (without the auxiliary head), which is
the key layout of the weights file, so it loads with ``strict=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flexitok.errors import FeatureExtractorError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
# torch-fidelity ships the same network under this name.
ALT_WEIGHTS_NAMES = ("weights-inception-2015-12-05-6726825d.pth",)
WEIGHTS_ENV = "FLEXITOK_INCEPTION_WEIGHTS"
INPUT_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, as in the TF graph) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int | tuple[int, int], **kwargs: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, bias=False, **kwargs)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | avgpool->1x1; out 224 + pool_features channels."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1->3x3->3x3/2 | maxpool/2; out 480 + c_in channels."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``c7`` inner channels); out 768 channels."""

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row, col = {"padding": (0, 3)}, {"padding": (3, 0)}
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), **col)
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), **row)
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction: 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2; out 512 + c_in channels."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches; out 2048 channels. ``max_pool``: the TF graph's last block
    pools with a max where the others average."""

    def __init__(self, c_in: int, max_pool: bool = False) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([a, b, c, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """``images [B, 3, H, W]`` in [-1, 1] -> (pool3 features ``[B, 2048]``, logits ``[B, 1008]``).

    The logits are the classifier's matmul without its bias, as the Inception Score of the TF evaluators
    (ADM's, torch-fidelity's ``logits_unbiased``) computes them."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(POOL_DIM, NUM_LOGITS)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> ``[B, 3, 299, 299]``: bilinear, no antialiasing, no corner alignment."""
        x = images.float().clamp(-1, 1)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.preprocess(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        blocks: tuple[nn.Module, ...] = (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b)
        blocks += (self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)
        for block in blocks:
            x = block(x)
        pool = x.mean(dim=(2, 3))  # [B, 2048]
        return pool, pool @ self.fc.weight.T


def find_weights(path: str | Path | None = None) -> Path | None:
    """The weights file: ``path`` if given, else ``$FLEXITOK_INCEPTION_WEIGHTS``, else a copy in the torch hub
    checkpoint cache (``torch.hub.get_dir()/checkpoints``) under either known name; None when absent."""
    if path is not None:
        return Path(path)
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in (WEIGHTS_NAME, *ALT_WEIGHTS_NAMES):
        if (hub / name).is_file():
            return hub / name
    return None


def _clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # torchvision-style files may carry the unused auxiliary head.
    return {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}


def load_fid_inception(path: str | Path | None = None, download: bool = True) -> FIDInceptionV3:
    """The FID Inception with its weights (see :func:`find_weights`; downloaded once into the torch hub cache
    when none is found and ``download``), frozen and in eval mode. Raises :class:`FeatureExtractorError` when
    the file is missing, cannot be downloaded or does not hold this network."""
    net = FIDInceptionV3()
    weights = find_weights(path)
    how = (
        f"download {WEIGHTS_URL} on a machine with internet access and pass it as --extractor inception:FILE, "
        f"set ${WEIGHTS_ENV}=FILE, or copy it to {Path(torch.hub.get_dir()) / 'checkpoints' / WEIGHTS_NAME}; or use the offline efflite0 extractor"
    )
    if weights is not None:
        if not weights.is_file():
            raise FeatureExtractorError(f"FID Inception weights not found at {weights}; {how}")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FeatureExtractorError(f"cannot read FID Inception weights {weights}: {e}") from e
    elif download:
        try:
            state = torch.hub.load_state_dict_from_url(WEIGHTS_URL, map_location="cpu", progress=True)
        except Exception as e:  # offline, proxy, HTTP error: all end the same way for the user
            raise FeatureExtractorError(f"could not download the FID Inception weights ({e}); {how}") from e
    else:
        raise FeatureExtractorError(f"FID Inception weights not found; {how}")
    if not isinstance(state, dict):
        raise FeatureExtractorError(f"{weights or WEIGHTS_URL} does not hold a state dict")
    try:
        net.load_state_dict(_clean_state_dict(state), strict=True)
    except RuntimeError as e:
        raise FeatureExtractorError(f"{weights or WEIGHTS_URL} is not the FID Inception-v3 weights file: {e}") from e
    return net.eval().requires_grad_(False)
