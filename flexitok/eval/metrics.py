"""Image-quality metrics on [-1, 1] images: PSNR, SSIM (per image) and the Frechet distance of features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flexitok.errors import InvalidInputError

_DATA_RANGE = 2.0  # images live in [-1, 1]


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise InvalidInputError(
            f"expected two image batches [B,C,H,W] of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def psnr(a: torch.Tensor, b: torch.Tensor, min_mse: float = 0.0) -> torch.Tensor:
    """Per-image PSNR in dB of ``a, b [B,C,H,W]`` in [-1, 1] (both clamped) -> ``[B]``; identical images give inf
    (or the finite ceiling ``10 * log10(4 / min_mse)`` when ``min_mse > 0``)."""
    _check_pair(a, b)
    a = a.double().clamp(-1, 1)
    b = b.double().clamp(-1, 1)
    mse = (a - b).pow(2).flatten(1).mean(1)
    if min_mse > 0:
        mse = mse.clamp_min(min_mse)
    return 10.0 * torch.log10(_DATA_RANGE**2 / mse)  # mse = 0 -> +inf


def _gaussian_window(size: int, sigma: float, channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM of ``a, b [B,C,H,W]`` in [-1, 1] -> ``[B]`` (Wang et al. 2004: Gaussian 11x11, sigma 1.5,
    K1=0.01, K2=0.03, valid-region mean over all channels). The window shrinks for images smaller than it.

    SSIM's luminance term is not shift-invariant, so images are mapped to the usual [0, 1] range first
    (values then match ``skimage``/``torchmetrics`` on [0, 1] images with ``data_range=1``)."""
    _check_pair(a, b)
    a = (a.double().clamp(-1, 1) + 1) / 2
    b = (b.double().clamp(-1, 1) + 1) / 2
    size = min(window_size, a.shape[-1], a.shape[-2])
    c = a.shape[1]
    window = _gaussian_window(size, sigma, c, a.dtype, a.device)
    c1, c2 = 0.01**2, 0.03**2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(1)


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``."""
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise InvalidInputError(f"need features [N, D] with N >= 2, got {tuple(feats.shape)}")
    x = feats.detach().double()
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _eigvalsh_robust(m: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric matrix; retries with a tiny diagonal jitter when LAPACK fails to converge
    (happens for large, heavily rank-deficient covariances)."""
    m = (m + m.T) / 2
    try:
        return torch.linalg.eigvalsh(m)
    except torch.linalg.LinAlgError:
        jitter = 1e-10 * max(float(m.diagonal().abs().mean()), 1e-30)
        return torch.linalg.eigvalsh(m + jitter * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)) - jitter


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    m = (m + m.T) / 2
    try:
        vals, vecs = torch.linalg.eigh(m)
    except torch.linalg.LinAlgError:
        jitter = 1e-10 * max(float(m.diagonal().abs().mean()), 1e-30)
        vals, vecs = torch.linalg.eigh(m + jitter * torch.eye(m.shape[0], dtype=m.dtype, device=m.device))
        vals = vals - jitter
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance_from_stats(
    mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` in float64.

    ``tr((S_a S_b)^{1/2})`` equals the trace of the PSD square root of ``S_a^{1/2} S_b S_a^{1/2}``, which is
    symmetric, so two symmetric eigen-decompositions replace a general (and less stable) ``sqrtm``.
    """
    mu_a, mu_b, cov_a, cov_b = (t.double() for t in (mu_a, mu_b, cov_a, cov_b))
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mu_a.numel(), mu_a.numel()):
        raise InvalidInputError(
            f"mismatched Gaussian statistics: means {tuple(mu_a.shape)}/{tuple(mu_b.shape)}, "
            f"covariances {tuple(cov_a.shape)}/{tuple(cov_b.shape)}"
        )
    root_a = _sqrt_psd(cov_a)
    tr_sqrt = _eigvalsh_robust(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * tr_sqrt
    return max(float(value), 0.0)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to ``feats_a [N, D]`` and ``feats_b [M, D]`` (float64,
    unbiased covariances).

    With few samples (N * M <= D * D, e.g. a quick eval on 1280-d features) the covariances are low-rank; then
    ``tr((S_a S_b)^{1/2})`` is computed exactly as the nuclear norm of ``A_c B_c^T / sqrt((N-1)(M-1))`` from the
    centred features, which avoids eigen-solving a huge singular D x D matrix.
    """
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise InvalidInputError(
            f"feature sets must be [N, D] and [M, D], got {tuple(feats_a.shape)} and {tuple(feats_b.shape)}"
        )
    n, m, d = feats_a.shape[0], feats_b.shape[0], feats_a.shape[1]
    if min(n, m) < 2:
        raise InvalidInputError(f"need at least 2 samples per feature set, got {n} and {m}")
    a, b = feats_a.detach().double(), feats_b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise InvalidInputError("Frechet distance is not defined: the features contain NaN or inf")
    if n * m <= d * d:
        mu_a, mu_b = a.mean(0), b.mean(0)
        ac, bc = a - mu_a, b - mu_b
        tr_a = ac.pow(2).sum() / (n - 1)
        tr_b = bc.pow(2).sum() / (m - 1)
        tr_sqrt = torch.linalg.svdvals(bc @ ac.T).sum() / math.sqrt((n - 1) * (m - 1))
        value = float((mu_a - mu_b).pow(2).sum() + tr_a + tr_b - 2 * tr_sqrt)
        return max(value, 0.0)
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def inception_score(logits: torch.Tensor, splits: int = 1) -> tuple[float, float]:
    """Inception Score of class ``logits [N, C]``: ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean of
    ``p(y|x)`` over the split -> (mean, std) over ``splits`` equal consecutive parts (the ADM evaluator uses
    parts of 5,000 samples; torch-fidelity 10 parts). Computed in float64; uniform predictions give 1, confident
    predictions spread evenly over m classes give m."""
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise InvalidInputError(f"need logits [N, C], got {tuple(logits.shape)}")
    n = logits.shape[0]
    if not 1 <= splits <= n:
        raise InvalidInputError(f"splits must be in 1..{n}, got {splits}")
    logp = torch.log_softmax(logits.detach().double(), dim=1)
    scores = []
    for part in torch.tensor_split(logp, splits):
        log_marginal = torch.logsumexp(part, dim=0) - math.log(part.shape[0])  # log p(y) [C]
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(math.exp(float(kl)))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False)) if splits > 1 else 0.0


def _kth_neighbour_radii(feats: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance of each point of ``feats [N, D]`` to its k-th nearest other point -> ``[N]``."""
    radii = []
    for s in range(0, feats.shape[0], batch):
        d = torch.cdist(feats[s : s + batch], feats)  # [b, N]; the point itself is at distance 0
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _covered(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    """For each query ``[Q, D]``: is it inside at least one ball ``(points [N, D], radii [N])``? -> bool ``[Q]``."""
    out = []
    for s in range(0, queries.shape[0], batch):
        d = torch.cdist(queries[s : s + batch], points)  # [b, N]
        out.append((d <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch: int = 4096) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of features ``real [N, D]`` and ``fake [M, D]``.

    Each set's manifold is the union of balls around its points with radius the distance to the point's k-th
    nearest neighbour within the set (k = 3, as in the paper and the ADM evaluator). Precision: the fraction of
    fake points inside the real manifold; recall: the fraction of real points inside the fake manifold.
    Distances in float64, ``batch`` rows at a time (memory ``batch x max(N, M)``)."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise InvalidInputError(f"need features [N, D] and [M, D], got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise InvalidInputError(f"need more than k={k} points per set, got {real.shape[0]} and {fake.shape[0]}")
    r, f = real.detach().double(), fake.detach().double()
    r_radii, f_radii = _kth_neighbour_radii(r, k, batch), _kth_neighbour_radii(f, k, batch)
    precision = float(_covered(f, r, r_radii, batch).double().mean())
    recall = float(_covered(r, f, f_radii, batch).double().mean())
    return precision, recall
