"""The math of generator metrics: Fréchet distance, KID, Inception Score, precision/recall. No I/O.

Every function takes arrays (NumPy, or torch tensors to compute on their device) and returns numbers.
Statistics and features are float64 throughout: the Fréchet distance subtracts nearly equal traces, and
float32 covariances lose the digits that distinguish good generators.
"""
from __future__ import annotations

import logging
import math
import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..runtime.threads import torch_threads

log = logging.getLogger(__name__)

Array = np.ndarray | torch.Tensor


# Eigenvalues of sqrt(S1) S2 sqrt(S1) (or of a covariance) below -NEG_TOL * (largest eigenvalue) are an
# error: a PSD product cannot have them, so they mean broken statistics (a non-covariance), not rounding.
NEG_TOL = 1e-6
# A distance below -DIST_TOL * (tr S1 + tr S2 + ||mu1 - mu2||^2) is an error; above it, it is rounding in
# the subtraction of nearly equal traces and is reported as 0 (a distance is never negative). The eigh
# route drops eigenvalues that are zero in exact arithmetic; the legacy sqrtm route takes their square
# roots, which puts a few 1e-7 of the traces into the rounding when the covariances are singular.
DIST_TOL = 1e-5


class MetricWarning(UserWarning):
    """A metric was computed, but its inputs make it unreliable (too few samples, odd statistics)."""


def _t64(x: Array, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


@dataclass(frozen=True)
class FrechetResult:
    """The Fréchet distance and what the computation saw on the way."""
    value: float
    mean_term: float            # ||mu1 - mu2||^2
    trace_term: float           # tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))
    min_eigenvalue: float | None      # smallest eigenvalue of S1 S2 (eigh route; None for sqrtm)
    clipped: int                      # eigenvalues below zero that were clipped to zero (eigh route)
    max_imag: float                   # largest |imaginary part| of sqrtm(S1 S2), dropped (sqrtm route)
    method: str                       # "eigh" or "sqrtm"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _check_stats(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor,
                 labels: tuple[str, str]) -> None:
    if mu1.dim() != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {tuple(mu1.shape)} ({labels[0]}) vs "
                         f"{tuple(mu2.shape)} ({labels[1]})")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be {d} x {d} to match the means, got {tuple(s1.shape)} "
                         f"({labels[0]}) and {tuple(s2.shape)} ({labels[1]})")
    for label, name, t in ((labels[0], "mu", mu1), (labels[0], "sigma", s1), (labels[1], "mu", mu2),
                           (labels[1], "sigma", s2)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{label}: {name} holds NaN or Inf values; the statistics are broken "
                             f"(recompute them)")
    for label, s in ((labels[0], s1), (labels[1], s2)):
        diag = torch.diagonal(s)
        if float(diag.min()) < -NEG_TOL * max(float(diag.abs().max()), 1e-300):
            raise ValueError(f"{label}: sigma has a negative variance ({float(diag.min()):.3g}) on its "
                             f"diagonal: not a covariance matrix (recompute the statistics)")


def _similar_psd(s1: torch.Tensor, s2: torch.Tensor, label: str) -> torch.Tensor:
    """A symmetric PSD matrix with the nonzero spectrum of S1 S2: F^T S2 F for any factor S1 = F F^T.

    F is the Cholesky factor when S1 is positive definite (cheap). Otherwise (fewer samples than dims:
    S1 singular) F is the d x r factor of a pivoted Cholesky stopped at rounding (``_low_rank_factor``),
    which costs d r^2 instead of an eigen-decomposition's d^3: for 200 samples of 2048 dims, 0.1 s
    against 1.6 s. Where the rank is high or the remainder is not rounding, a symmetric eigen-decomposition
    S1 = V diag(w) V^T gives F = V_r diag(sqrt(w_r)) over the r eigenvalues above rounding, and tells a
    singular covariance from one that is not a covariance (``label`` names it then). Either way the
    eigenvalues that are zero in exact arithmetic are dropped, not square-rooted as rounding.
    """
    s1 = (s1 + s1.T) / 2
    chol, info = torch.linalg.cholesky_ex(s1)
    if int(info) == 0:
        return chol.T @ s2 @ chol
    factor = _low_rank_factor(s1, max_rank=s1.shape[0] // 4)
    if factor is None:
        w, v = torch.linalg.eigh(s1)
        top = max(float(w[-1]), 1e-300)
        if float(w[0]) < -NEG_TOL * top:
            raise ValueError(f"{label}: sigma has a clearly negative eigenvalue ({float(w[0]):.3g}, largest "
                             f"{float(w[-1]):.3g}): not a covariance matrix (recompute the statistics)")
        keep = w > top * s1.shape[0] * torch.finfo(s1.dtype).eps
        factor = v[:, keep] * w[keep].sqrt()
    return factor.T @ s2 @ factor


def _low_rank_factor(s1: torch.Tensor, max_rank: int) -> torch.Tensor | None:
    """F (d x r) with S1 = F F^T to rounding, by Cholesky with diagonal pivoting (each step takes the
    largest remaining diagonal) stopped where that is rounding (d * eps * the largest variance, LAPACK's
    pstrf rule). None when the rank would pass ``max_rank`` (then an eigen-decomposition is as cheap) or
    when S1 - F F^T is not rounding: a PSD matrix's remainder is bounded by its diagonal, so anything
    larger means S1 is not PSD, which the eigen-decomposition reports."""
    d = s1.shape[0]
    diag = s1.diagonal().clone()
    tol = max(float(diag.max()), 1e-300) * d * torch.finfo(s1.dtype).eps
    rows = s1.new_zeros((max_rank, d))   # F^T, filled row by row: contiguous reads below
    for k in range(max_rank + 1):
        p = int(torch.argmax(diag))
        if float(diag[p]) <= tol:
            break
        if k == max_rank:
            return None
        col = (s1[p] - rows[:k].T @ rows[:k, p]) / math.sqrt(float(diag[p]))
        rows[k] = col
        diag -= col * col
        diag[p] = 0.0   # taken; rounding must not let it be picked again
    factor = rows[:k].T
    if float((s1 - factor @ rows[:k]).abs().max()) > 4 * tol:
        return None
    return factor


def _one_cpu_thread(device: torch.device) -> AbstractContextManager[None]:
    # Symmetric eigensolvers synchronise their threads at every column: on a shared machine with a core
    # busy, a multi-threaded 2048-d eigh ran many times slower than a single-threaded one
    # (docs/performance.md). The work is small next to feature extraction, so the CPU route runs on one
    # thread.
    return torch_threads(1) if device.type == "cpu" else nullcontext()


def frechet_details(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array,
                    method: str = "eigh", labels: tuple[str, str] = ("A", "B")) -> FrechetResult:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), with diagnostics.

    ``method="eigh"`` (default): tr sqrt(S1 S2) as the sum of square roots of the eigenvalues of a
    symmetric PSD matrix with the spectrum of S1 S2: L^T S2 L for the Cholesky factor of S1, or
    sqrt(S1) S2 sqrt(S1) (symmetric eigen-decomposition) when S1 is singular. Float64, no complex numbers,
    so no "imaginary component" failure; fewer samples than dims is fine. Runs on the device of torch
    inputs (on the CPU, on one thread).
    ``method="sqrtm"``: pytorch-fid's route (scipy.linalg.sqrtm of S1 S2, eps 1e-6 on the diagonals when
    the product is singular), kept to reproduce old numbers; a large imaginary part is warned about and
    dropped instead of raising.

    A distance is never negative: a value below zero by rounding (within ``DIST_TOL`` of the traces) is
    0; statistics that are not covariances (NaN, negative variances or eigenvalues, a clearly negative
    distance) raise ValueError naming the input by its ``labels``.
    """
    if method not in ("eigh", "sqrtm"):
        raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    device = sigma1.device if isinstance(sigma1, torch.Tensor) else None
    mu1_, s1, mu2_, s2 = (_t64(a, device) for a in (mu1, sigma1, mu2, sigma2))
    _check_stats(mu1_, s1, mu2_, s2, labels)
    diff = mu1_ - mu2_
    mean_term = float(diff @ diff)
    traces = float(torch.trace(s1) + torch.trace(s2))
    if method == "sqrtm":
        tr_covmean, worst_imag = _sqrtm_trace(s1.cpu().numpy(), s2.cpu().numpy())
        trace_term = traces - 2 * tr_covmean
        value = _never_negative(mean_term + trace_term, traces + mean_term, labels)
        return FrechetResult(value, mean_term, trace_term, None, 0, worst_imag, "sqrtm")

    with _one_cpu_thread(s1.device):
        m = _similar_psd(s1, s2, labels[0])
        lam = torch.linalg.eigvalsh((m + m.T) / 2)
    # A zero covariance (every sample the same) leaves no nonzero spectrum: tr sqrt(S1 S2) is 0.
    lam_min, lam_max = (float(lam[0]), float(lam[-1])) if lam.numel() else (0.0, 0.0)
    clipped = int((lam < 0).sum())
    if lam_min < -NEG_TOL * max(lam_max, 1e-300):
        raise ValueError(f"{labels[0]} / {labels[1]}: sigma1 sigma2 has a clearly negative eigenvalue "
                         f"({lam_min:.3g}, largest {lam_max:.3g}): the covariances are not valid covariance "
                         f"matrices (recompute the statistics)")
    tr_covmean = float(lam.clamp(min=0).sqrt().sum())
    trace_term = traces - 2 * tr_covmean
    value = _never_negative(mean_term + trace_term, traces + mean_term, labels)
    return FrechetResult(value, mean_term, trace_term, lam_min, clipped, 0.0, "eigh")


def _never_negative(value: float, scale: float, labels: tuple[str, str]) -> float:
    """``value`` clamped at 0 when it is below zero by rounding only; an error when clearly negative."""
    if math.isnan(value):
        raise ValueError(f"{labels[0]} / {labels[1]}: the Fréchet distance is NaN; the statistics are "
                         f"broken (recompute them)")
    if value < -DIST_TOL * max(abs(scale), 1e-300):
        raise ValueError(f"{labels[0]} / {labels[1]}: the Fréchet distance came out negative ({value:.6g}); "
                         f"the statistics are not valid covariances (recompute them)")
    return max(value, 0.0)


def _sqrtm_trace(s1: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> tuple[float, float]:
    """(tr sqrtm(S1 S2), largest |imaginary part|), pytorch-fid's calculate_frechet_distance route."""
    from scipy import linalg  # here, not at the top: only this legacy route needs scipy, slow to import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # SciPy >= 1.16 deprecates disp=
        covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        log.warning("legacy sqrtm: singular product; adding %g to the covariance diagonals", eps)
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    worst = 0.0
    if np.iscomplexobj(covmean):
        worst = float(np.max(np.abs(covmean.imag)))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            # pytorch-fid raises "Imaginary component" here; we keep the real part and say so.
            warnings.warn(f"legacy sqrtm: imaginary component {worst:.3g} dropped (pytorch-fid would stop "
                          f"here); the default eigh route has no such failure", MetricWarning, stacklevel=3)
        covmean = covmean.real
    return float(np.trace(covmean)), worst


def frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array, method: str = "eigh") -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)); see ``frechet_details`` for the routes."""
    return frechet_details(mu1, sigma1, mu2, sigma2, method).value


def check_kid_args(counts: list[int | None], subsets: int, subset_size: int) -> None:
    """KID's settings against the image counts (None: not known yet), before any feature is computed."""
    if subset_size < 2:
        raise ValueError(f"KID subset size must be at least 2, got {subset_size} (--kid-subset-size)")
    if subsets < 1:
        raise ValueError(f"KID needs at least one subset, got {subsets} (--kid-subsets)")
    known = [n for n in counts if n is not None]
    if known and subset_size > min(known):
        shown = " and ".join("?" if n is None else str(n) for n in counts)
        raise ValueError(f"KID subset size {subset_size} is larger than the number of images "
                         f"({shown}); use a subset size of at most {min(known)} "
                         f"(--kid-subset-size), or more images")


def check_is_args(count: int | None, splits: int) -> None:
    """The Inception Score's splits against the image count (None: not known yet)."""
    if splits < 1:
        raise ValueError(f"the Inception Score needs at least 1 split, got {splits} (--splits)")
    if count is not None and count < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} images, got {count}; "
                         f"use fewer --splits or more images")


def check_knn_args(counts: list[int | None], k: int) -> None:
    """Precision/recall/density/coverage's k against the sample counts (None: not known yet)."""
    if k < 1:
        raise ValueError(f"the number of nearest neighbours k must be at least 1, got {k} (--k)")
    known = [n for n in counts if n is not None]
    if known and min(known) <= k:
        shown = " and ".join("?" if n is None else str(n) for n in counts)
        raise ValueError(f"k={k} nearest neighbours need more than {k} samples per set, got {shown}; "
                         f"use a smaller --k or more images")


@dataclass(frozen=True)
class KIDResult:
    mean: float
    std: float
    subsets: int
    subset_size: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef0: float = 1.0,
                    gamma: float | None = None) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (gamma a.b + coef0)^degree, gamma = 1/dims by default."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"polynomial_mmd2 needs two sets of the same size >= 2, got {x.shape[0]} and "
                         f"{y.shape[0]}")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * g + coef0) ** degree
    k_yy = (y @ y.T * g + coef0) ** degree
    k_xy = (x @ y.T * g + coef0) ** degree
    off_xx = k_xx.sum() - torch.diagonal(k_xx).sum()
    off_yy = k_yy.sum() - torch.diagonal(k_yy).sum()
    return float((off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid(features1: Array, features2: Array, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020, degree: int = 3, coef0: float = 1.0, gamma: float | None = None) -> KIDResult:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased polynomial-kernel MMD^2 over random
    subsets, mean and std. Subsets are drawn as torch-fidelity draws them (NumPy RandomState(seed),
    without replacement, set 1 then set 2), so equal features and seed give its numbers."""
    f1, f2 = _t64(features1), _t64(features2)
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"KID needs two N x D feature matrices of equal D, got {tuple(f1.shape)} and "
                         f"{tuple(f2.shape)}")
    n1, n2 = f1.shape[0], f2.shape[0]
    check_kid_args([n1, n2], subsets, subset_size)
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        a = f1[torch.from_numpy(rng.choice(n1, subset_size, replace=False)).to(f1.device)]
        b = f2[torch.from_numpy(rng.choice(n2, subset_size, replace=False)).to(f2.device)]
        values[i] = polynomial_mmd2(a, b, degree, coef0, gamma)
    return KIDResult(float(values.mean()), float(values.std()), subsets, subset_size)


@dataclass(frozen=True)
class ISResult:
    mean: float
    std: float
    splits: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def inception_score(logits: Array, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> ISResult:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

    ``logits`` are N x C (the FID net's 1008, without the fc bias as the original code and torch-fidelity
    use). Rows are shuffled with NumPy RandomState(seed) first, as torch-fidelity does.
    """
    x = _t64(logits)
    if x.dim() != 2:
        raise ValueError(f"inception_score needs an N x C logits matrix, got shape {tuple(x.shape)}")
    n = x.shape[0]
    check_is_args(n, splits)
    if shuffle:
        x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n)).to(x.device)]
    p, log_p = x.softmax(dim=1), x.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(dim=0, keepdim=True)
        kl = (p[lo:hi] * (log_p[lo:hi] - q.log())).sum(dim=1).mean()
        scores.append(math.exp(float(kl)))
    return ISResult(float(np.mean(scores)), float(np.std(scores)), splits)


def _kth_radius(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    # Distance to the k-th nearest neighbour other than the point itself (index k after sorting, 0 = self).
    return torch.cat([torch.cdist(b, x).kthvalue(k + 1, dim=1).values for b in x.split(block)])


def _covered(q: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    return torch.cat([(torch.cdist(b, ref) <= radii[None, :]).any(dim=1) for b in q.split(block)])


def _pair(generated: Array, real: Array, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g, r = _t64(generated), _t64(real)
    if g.dim() != 2 or r.dim() != 2 or g.shape[1] != r.shape[1]:
        raise ValueError(f"precision/recall needs two N x D matrices of equal D, got {tuple(g.shape)} and "
                         f"{tuple(r.shape)}")
    check_knn_args([g.shape[0], r.shape[0]], k)
    return g, r


def precision_recall(generated: Array, real: Array, k: int = 3, block: int = 4096) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls, k=3 by default.

    Precision: share of generated samples inside some real sample's k-NN ball; recall: share of real
    samples inside some generated sample's ball. Memory is bounded by ``block`` rows of distances.
    """
    g, r = _pair(generated, real, k)
    precision = float(_covered(g, r, _kth_radius(r, k, block), block).double().mean())
    recall = float(_covered(r, g, _kth_radius(g, k, block), block).double().mean())
    return {"precision": precision, "recall": recall, "k": k}


def prdc(generated: Array, real: Array, k: int = 5, block: int = 4096) -> dict:
    """Precision, recall (Kynkäänniemi et al. 2019) and density, coverage (Naeem et al. 2020), k-NN balls.

    With B(x, r_k(x)) the ball around a sample reaching its k-th nearest neighbour in its own set:
    precision = share of generated samples in some real ball; recall = share of real samples in some
    generated ball; density = (1 / kM) sum over the M generated samples of the number of real balls that
    hold it (1 on average when the sets match, more when samples crowd the real modes); coverage = share
    of real balls that hold at least one generated sample. k = 5 by default, as Naeem et al. A point on
    a ball's surface counts as inside. Memory is bounded by ``block`` rows of distances.
    """
    g, r = _pair(generated, real, k)
    real_radii = _kth_radius(r, k, block)
    held = torch.cat([(torch.cdist(b, r) <= real_radii[None, :]).sum(dim=1) for b in g.split(block)])
    nearest = torch.cat([torch.cdist(b, g).min(dim=1).values for b in r.split(block)])
    return {"precision": float((held > 0).double().mean()),
            "recall": float(_covered(r, g, _kth_radius(g, k, block), block).double().mean()),
            "density": float(held.double().sum() / (k * g.shape[0])),
            "coverage": float((nearest <= real_radii).double().mean()), "k": k}
