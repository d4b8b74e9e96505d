"""The pure math of functional.py: Fréchet distance routes, KID, Inception Score, precision/recall."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from inceptionv3.metrics import functional

# pytorch-fid's own calculate_frechet_distance warns about SciPy's deprecated disp= and singular products.
_PYTORCH_FID_NOISE = (pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated"),
                      pytest.mark.filterwarnings("ignore:Matrix is singular"))


def _stats(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((n, d)) @ a + shift
    return x.mean(0), np.cov(x, rowvar=False)


def test_eigh_equals_sqrtm_on_well_conditioned_stats():
    rng = np.random.default_rng(0)
    mu1, s1 = _stats(rng, 2000, 64)
    mu2, s2 = _stats(rng, 2000, 64, shift=0.3)
    a = functional.frechet_distance(mu1, s1, mu2, s2)
    b = functional.frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
    assert a == pytest.approx(b, rel=1e-9)


@_PYTORCH_FID_NOISE[0]
@_PYTORCH_FID_NOISE[1]
def test_matches_pytorch_fid_reference():
    pf = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(1)
    mu1, s1 = _stats(rng, 500, 32)
    mu2, s2 = _stats(rng, 500, 32, shift=0.1)
    assert functional.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        pf.calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-9)


def test_closed_form_and_identity():
    # Diagonal covariances: FID = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
    want = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert functional.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-12)
    rng = np.random.default_rng(2)
    mu, s = _stats(rng, 300, 16)
    assert abs(functional.frechet_distance(mu, s, mu, s)) < 1e-9


def test_singular_covariances_give_a_real_number_and_diagnostics():
    # N < dims: both covariances have rank 9 of 128; no complex numbers, no exception.
    rng = np.random.default_rng(3)
    mu1, s1 = _stats(rng, 10, 128)
    mu2, s2 = _stats(rng, 10, 128, shift=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # rounding-level negatives are clipped silently
        res = functional.frechet_details(mu1, s1, mu2, s2)
    assert np.isfinite(res.value) and res.value > 0
    assert res.method == "eigh" and res.min_eigenvalue > -1e-8
    assert res.value == pytest.approx(res.mean_term + res.trace_term)


def test_low_rank_factor_gives_the_eigendecomposition_s_distance(monkeypatch):
    # N < dims: the pivoted Cholesky factor (rank N - 1) and the eigen-decomposition route agree to
    # rounding, and the factor is the one that ran.
    rng = np.random.default_rng(6)
    mu1, s1 = _stats(rng, 20, 256)
    mu2, s2 = _stats(rng, 30, 256, shift=0.2)
    factor = functional._low_rank_factor(torch.from_numpy(s1), max_rank=64)
    assert factor is not None and factor.shape == (256, 19)
    assert torch.allclose(factor @ factor.T, torch.from_numpy(s1), rtol=0, atol=1e-12 * s1.max())
    fast = functional.frechet_distance(mu1, s1, mu2, s2)
    monkeypatch.setattr(functional, "_low_rank_factor", lambda s, max_rank: None)
    assert fast == pytest.approx(functional.frechet_distance(mu1, s1, mu2, s2), rel=1e-12)


def test_low_rank_factor_declines_high_rank_and_indefinite_matrices():
    rng = np.random.default_rng(7)
    _, s = _stats(rng, 100, 64)                    # rank 63 > the cap
    assert functional._low_rank_factor(torch.from_numpy(s), max_rank=16) is None
    indefinite = np.eye(16) * 1e-3
    indefinite[0, 1] = indefinite[1, 0] = 2.0      # with unit variances: eigenvalues 3 and -1
    indefinite[0, 0] = indefinite[1, 1] = 1.0
    assert functional._low_rank_factor(torch.from_numpy(indefinite), max_rank=16) is None


def test_a_zero_covariance_leaves_the_means_and_the_other_trace():
    rng = np.random.default_rng(8)
    mu2, s2 = _stats(rng, 40, 16)
    res = functional.frechet_details(np.zeros(16), np.zeros((16, 16)), mu2, s2)
    assert res.value == pytest.approx(float(mu2 @ mu2) + np.trace(s2), rel=1e-12)


def test_torch_inputs_and_bad_inputs():
    rng = np.random.default_rng(4)
    mu1, s1 = _stats(rng, 200, 8)
    mu2, s2 = _stats(rng, 200, 8, shift=1.0)
    want = functional.frechet_distance(mu1, s1, mu2, s2)
    got = functional.frechet_distance(*(torch.from_numpy(a).float() for a in (mu1, s1, mu2, s2)))
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        functional.frechet_distance(mu1, s1, mu2[:4], s2[:4, :4])
    bad = s2.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        functional.frechet_distance(mu1, s1, mu2, bad)
    with pytest.raises(ValueError, match="B: sigma has a negative variance"):
        functional.frechet_details(mu1, s1, mu2, -np.eye(8))


def test_a_distance_is_never_negative():
    rng = np.random.default_rng(5)
    # Identical singular statistics (N < dims): rounding below zero is reported as exactly 0.
    x = np.abs(rng.standard_normal((10, 256)))
    mu, s = x.mean(0), np.cov(x, rowvar=False)
    for method in ("eigh", "sqrtm"):
        assert functional.frechet_distance(mu, s, mu, s, method=method) == 0.0
    # Not covariances although the diagonals are positive: the error names the input.
    mu1, s1 = _stats(rng, 200, 8)
    indefinite = np.eye(8) - 3 * np.outer(np.ones(8), np.ones(8)) / 8      # eigenvalues 1 and -2
    np.fill_diagonal(indefinite, 0.5)
    with pytest.raises(ValueError, match="real.npz: sigma has a clearly negative eigenvalue"):
        functional.frechet_details(mu1, indefinite, mu1, s1, labels=("real.npz", "gen"))
    with pytest.raises(ValueError, match="a / b: sigma1 sigma2 has a clearly negative eigenvalue"):
        functional.frechet_details(mu1, s1, mu1, indefinite, labels=("a", "b"))


def test_kid_matches_torch_fidelity():
    tf_kid = pytest.importorskip("torch_fidelity.metric_kid")
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.rand(40, 16, generator=g, dtype=torch.float64), torch.rand(30, 16, generator=g,
                                                                              dtype=torch.float64) + 0.1
    ours = functional.kid(f1, f2, subsets=7, subset_size=20)
    ref = tf_kid.kid_features_to_metric(f1, f2, kid_subsets=7, kid_subset_size=20, verbose=False,
                                        rng_seed=2020)
    assert ours.mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    assert ours.std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9)
    with pytest.raises(ValueError, match="subset size 50 is larger than the number of images"):
        functional.kid(f1, f2, subset_size=50)


def test_kid_is_about_zero_for_one_distribution():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g)
    assert abs(functional.kid(x[:200], x[200:], subsets=5, subset_size=100).mean) < 0.05


def test_inception_score_matches_torch_fidelity():
    tf_isc = pytest.importorskip("torch_fidelity.metric_isc")
    logits = torch.randn(50, 1008, generator=torch.Generator().manual_seed(0)) * 3
    ours = functional.inception_score(logits, splits=5)
    ref = tf_isc.isc_features_to_metric(logits, splits=5, shuffle=True, rng_seed=2020)
    assert ours.mean == pytest.approx(ref["inception_score_mean"], rel=1e-9)
    assert ours.std == pytest.approx(ref["inception_score_std"], rel=1e-9)
    # Confident, evenly spread predictions over C classes score C.
    onehot = torch.eye(10).repeat(3, 1) * 100
    assert functional.inception_score(onehot, splits=1).mean == pytest.approx(10, rel=1e-6)
    with pytest.raises(ValueError, match="at least 10 images"):
        functional.inception_score(logits[:5])


def test_precision_recall_matches_torch_fidelity():
    tf_prc = pytest.importorskip("torch_fidelity.metric_prc")
    g = torch.Generator().manual_seed(0)
    gen, real = torch.randn(60, 8, generator=g), torch.randn(50, 8, generator=g) * 1.5 + 0.5
    ours = functional.precision_recall(gen, real, k=3)
    p, r = tf_prc.calculate_precision_recall_full(gen.double(), real.double(), neighborhood=3)
    assert (ours["precision"], ours["recall"]) == pytest.approx((p, r))
    same = functional.precision_recall(real, real)
    assert same["precision"] == same["recall"] == 1.0


def _brute_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    """Naeem et al.'s definitions, written out with loops over a full distance matrix."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    r_real = np.sort(dist(real, real), axis=1)[:, k]          # column 0 is the point itself
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d_rf = dist(real, fake)                                    # real i, fake j
    inside = d_rf <= r_real[:, None]                           # fake j in real i's ball
    return {"precision": np.mean([inside[:, j].any() for j in range(len(fake))]),
            "recall": np.mean([(d_rf[i] <= r_fake).any() for i in range(len(real))]),
            "density": inside.sum() / (k * len(fake)),
            "coverage": np.mean([inside[i].any() for i in range(len(real))])}


def test_prdc_matches_brute_force_numpy():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((40, 6))
    fake = rng.standard_normal((35, 6)) * 0.7 + 0.4
    for k in (1, 3, 5):
        want = _brute_prdc(real, fake, k)
        got = functional.prdc(fake, real, k=k, block=7)        # blocks smaller than the sets
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-12), (key, k)
    assert functional.prdc(fake, real, k=3)["precision"] == functional.precision_recall(fake, real)["precision"]
    same = functional.prdc(real, real, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    with pytest.raises(ValueError, match="k=5 nearest neighbours need more than 5 samples"):
        functional.prdc(fake[:5], real, k=5)


def test_argument_checks_before_any_compute():
    with pytest.raises(ValueError, match=r"subset size 50 is larger than the number of images \(40 and \?\)"):
        functional.check_kid_args([40, None], 10, 50)
    functional.check_kid_args([None, None], 10, 50)
    with pytest.raises(ValueError, match="at least 1 split"):
        functional.check_is_args(None, 0)
    with pytest.raises(ValueError, match="needs at least 10 images, got 4"):
        functional.check_is_args(4, 10)
    with pytest.raises(ValueError, match="k must be at least 1"):
        functional.check_knn_args([10, 10], 0)
