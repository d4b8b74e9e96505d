"""The metric commands as users run them: broken and foreign statistics files, exit codes after bad images,
settings checked before any compute, exploding features, and one pass serving every metric (sFID too).

The metric network is the FID graph with random weights (test_metrics' generator) on a few small images.
"""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from test_metrics import _fid_state_dict, _write_images

from inceptionv3 import metrics
from inceptionv3.cli.main import main
from inceptionv3.metrics import functional
from inceptionv3.metrics.featurenet import FeatureNet, SpatialEngine
from inceptionv3.metrics.modes import SFID_DIMS
from inceptionv3.models.inception import InceptionV3

N = 3
COMMON = ["--device", "cpu", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric_cli")
    sd = _fid_state_dict()
    weights = root / "fid_random.pth"
    torch.save(sd, weights)
    a = _write_images(root / "a", 0, (64, 48), n=N)
    b = _write_images(root / "b", 1, (48, 56), n=N, offset=30)
    bad = _write_images(root / "bad", 0, (64, 48), n=N)
    (bad / "zz_broken.png").write_bytes(b"not a png")
    return {"root": root, "sd": sd, "weights": str(weights), "a": a, "b": b, "bad": bad}


def _stats_file(path, d: int = 8, seed: int = 0, **extra) -> str:
    x = np.random.default_rng(seed).standard_normal((50, d))
    np.savez(path, mu=x.mean(0), sigma=np.cov(x, rowvar=False), **extra)
    return str(path)


def test_broken_statistics_files_get_one_line(tmp_path, capsys):
    good = _stats_file(tmp_path / "good.npz")
    full = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(full[: len(full) // 2])
    (tmp_path / "text.npz").write_text("mu sigma\n1 2 3\n")
    np.savez(tmp_path / "meta_list.npz", mu=np.zeros(8), sigma=np.eye(8), meta=np.array(json.dumps([1, 2])))
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(8), sigma=np.eye(7))
    np.savez(tmp_path / "pickled.npz", mu=np.array([{"x": 1}], dtype=object), sigma=np.eye(1))
    np.savez(tmp_path / "nan.npz", mu=np.full(8, np.nan), sigma=np.eye(8))
    indefinite = np.eye(8) - 3 * np.ones((8, 8)) / 8
    np.fill_diagonal(indefinite, 0.5)
    np.savez(tmp_path / "indefinite.npz", mu=np.zeros(8), sigma=indefinite)
    # A forged header claiming a 10^6-d mean: refused before anything is allocated.
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        for key, shape in (("mu", (10**6,)), ("sigma", (10**6, 10**6))):
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
            z.writestr(f"{key}.npy", buf.getvalue())
    cases = {"truncated": "not a readable .npz", "text": "not a readable .npz", "meta_list": "JSON list",
             "shapes": "do not fit together", "pickled": "pickled Python objects; refused",
             "nan": "NaN or Inf", "indefinite": "clearly negative eigenvalue", "huge": "at most 16384"}
    for name, why in cases.items():
        assert main(["fid", str(tmp_path / f"{name}.npz"), good, *COMMON]) == 2, name
        err = capsys.readouterr().err
        assert f"{name}.npz" in err and why in err and "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) == 1, err
    # Identical statistics: exactly 0, never "-0.000000".
    assert main(["fid", good, good, *COMMON]) == 0
    assert capsys.readouterr().out.startswith("FID: 0.000000 ")


def test_foreign_statistics_say_where_they_came_from(tmp_path, capsys):
    clean = metrics.load_stats(_stats_file(tmp_path / "cifar10_legacy_tensorflow_train_32.npz"))
    assert clean.meta == {"tool": "clean-fid", "mode": "tf"} and clean.n is None
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((60, 12))
    adm = _stats_file(tmp_path / "VIRTUAL_imagenet64_labeled.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8),
                      mu_s=xs.mean(0), sigma_s=np.cov(xs, rowvar=False))
    assert metrics.load_stats(adm).meta == {"tool": "adm", "mode": "tf"}
    spatial = metrics.load_stats(adm, spatial=True)
    assert spatial.dims == 12 and spatial.meta["tap"] == "mixed_6/conv"
    with pytest.raises(ValueError, match="no 'mu_s' and 'sigma_s'"):
        metrics.load_stats(_stats_file(tmp_path / "edm-cifar10-32x32.npz"), spatial=True)
    # Ours record the tool; a clean-fid file in another mode is flagged even without weights metadata.
    ours = metrics.save_stats(metrics.Stats(clean.mu, clean.sigma, 50, {"mode": "clean", "dims": 8,
                                                                         "weights_sha256": "abc"}),
                              tmp_path / "ours.npz")
    assert main(["stats", "--info", str(ours), str(tmp_path / "cifar10_legacy_tensorflow_train_32.npz")]) == 0
    out = capsys.readouterr().out
    assert "tool inceptionv3, mode clean, 8-d, n=50" in out
    assert "tool clean-fid, mode tf, 8-d, n unknown" in out
    assert "not comparable" in out and "differ in mode: 'clean'" in out
    assert main(["stats", "--info", str(ours), str(ours)]) == 0
    assert "comparable: same weights" in capsys.readouterr().out


def test_settings_are_checked_before_any_compute(sets, monkeypatch, capsys):
    def no_network(*a, **k):
        raise AssertionError("the network was built before the settings were checked")
    monkeypatch.setattr(FeatureNet, "__init__", no_network)
    a, b = str(sets["a"]), str(sets["b"])
    cases = [(["kid", a, b], "subset size 1000 is larger than the number of images (3 and 3)"),
             (["is", a, "--splits", "0"], "at least 1 split"),
             (["is", a, "--splits", "5"], "needs at least 5 images, got 3"),
             (["prdc", a, b, "--k", "3"], "more than 3 samples per set"),
             (["fid", a, b, "--also", "kid"], "subset size 1000"),
             (["fid", a, _stats_file(sets["root"] / "s.npz"), "--also", "prdc"], "need the images themselves"),
             (["fid", a, str(sets["root"] / "s.npz"), "--sfid"], "s.npz: holds no sFID statistics"),
             # a statistics input to a metric that needs images is named first, whatever else is wrong
             (["kid", a, str(sets["root"] / "s.npz")], "s.npz: KID, the Inception Score and precision/recall"),
             (["kid", str(sets["root"] / "s.npz"), b, "--kid-subset-size", "2"], "need the images themselves"),
             (["is", str(sets["root"] / "s.npz"), "--splits", "5"], "need the images themselves"),
             (["prdc", a, str(sets["root"] / "s.npz"), "--k", "3"], "need the images themselves")]
    for argv, why in cases:
        assert main([*argv, *COMMON]) == 2, argv
        assert why in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):
        main(["fid", a, b, "--also", "kid,fdi"])
    assert "unknown metric(s) fdi" in capsys.readouterr().err


def test_one_pass_serves_every_metric_and_bad_images_exit_1(sets, monkeypatch, capsys):
    seen = []
    forward = FeatureNet.forward_prepared

    def recording(self, x, logits=False):
        out = forward(self, x, logits)
        seen.append((self.dims, logits, out))
        return out
    monkeypatch.setattr(FeatureNet, "forward_prepared", recording)
    w = ["--weights", sets["weights"], *COMMON]
    argv = ["fid", str(sets["bad"]), str(sets["b"]), "--also", "kid,is,prdc", "--sfid", "--kid-subsets", "3",
            "--kid-subset-size", "2", "--splits", "2", "--k", "2", "--dims", "64", "--format", "json", *w]
    assert main(argv) == 1                                    # one unreadable file in A: exit 1, result printed
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert r["failed"] == [1, 0] and r["n"] == [N, N]
    assert "1 image(s) could not be read" in captured.err
    # One pass per set (logits for A only: the Inception Score is A's), one per set for sFID. 64-d features
    # keep the test's Fréchet step cheap; sFID's is 2023-d whatever the tap.
    assert [(d, lg, o[0].shape[0]) for d, lg, o in seen] == [(64, True, N), (64, False, N),
                                                          (SFID_DIMS, False, N), (SFID_DIMS, False, N)]
    (_, _, (fa, la)), (_, _, (fb, _)), (_, _, (sa, _)), (_, _, (sb, _)) = seen
    # Every number equals the metric computed on its own from the same features.
    assert r["kid"] == pytest.approx(functional.kid(fa, fb, 3, 2).mean, rel=1e-6)
    assert r["is"] == pytest.approx(functional.inception_score(la, 2).mean, rel=1e-6)
    want = functional.prdc(fa, fb, k=2)
    assert {k: r[k] for k in want} == pytest.approx(want)

    def stats(x):
        x = x.double().numpy()
        return x.mean(0), np.cov(x, rowvar=False)
    assert r["fid"] == pytest.approx(functional.frechet_distance(*stats(fa), *stats(fb)), rel=1e-6)
    assert r["sfid"] == pytest.approx(functional.frechet_distance(*stats(sa), *stats(sb)), rel=1e-6)
    assert r["sfid"] > 0
    # stats --sfid writes sFID's statistics as ADM's mu_s / sigma_s; fid --sfid reads them back.
    out = sets["root"] / "b.npz"
    assert main(["stats", str(sets["b"]), "--out", str(out), "--sfid", "--dims", "64", *w]) == 0
    assert "and sFID's spatial statistics of 3 images" in capsys.readouterr().out
    back = metrics.load_stats(out, spatial=True)
    np.testing.assert_allclose(back.mu, stats(sb)[0], rtol=1e-5, atol=1e-6)
    assert back.meta["tap"] == "mixed_6/conv" and back.dims == SFID_DIMS and back.n == N
    # kid and is share fid's report_metric; stats reports on its own.
    assert main(["stats", str(sets["bad"]), "--out", str(sets["root"] / "bad.npz"), "--dims", "64", *w]) == 1
    assert "1 image(s) could not be read" in capsys.readouterr().err


def test_sfid_tap_is_the_tf_graphs_mixed_6_conv(sets):
    # ADM reads "mixed_6/conv": the TF graph numbers its blocks mixed (5b), mixed_1 (5c), mixed_2 (5d),
    # mixed_3 (6a), mixed_4 (6b), mixed_5 (6c), mixed_6 (6d); "conv" is each block's first op, the 1x1 branch.
    model = InceptionV3(num_classes=1008, init_weights=False, **metrics.FID_NET_CONFIG).eval()
    model.load_state_dict(sets["sd"])
    seen = {}
    model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    x = metrics.prepare(torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8))
    with torch.no_grad():
        model(x)
    want = seen["out"][:, :7].permute(0, 2, 3, 1).reshape(2, -1)     # TF's N x 17 x 17 x 7, flattened
    got = SpatialEngine(model, torch.device("cpu"))(x)
    assert got.shape == (2, SFID_DIMS) == (2, 2023)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_exploding_features_warn_and_nan_features_fail(sets, tmp_path, capsys):
    # Broken batch norm in the stem, read at the 64-d tap just after it: the cheapest pass that shows it.
    huge = {k: v.clone() for k, v in sets["sd"].items()}
    huge["Conv2d_2b_3x3.bn.weight"] *= 1e6
    nan = {k: v.clone() for k, v in sets["sd"].items()}
    nan["Conv2d_2a_3x3.bn.running_var"][0] = -1.0       # finite weights, NaN after the batch norm
    torch.save(huge, tmp_path / "huge.pth")
    torch.save(nan, tmp_path / "nan.pth")
    argv = ["stats", str(sets["a"]), "--dims", "64", "--out", str(tmp_path / "s.npz"), *COMMON]
    assert main([*argv, "--weights", str(tmp_path / "huge.pth")]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "huge.pth: the network's maxpool1 features reach" in err
    assert "weights look broken" in err
    assert main([*argv, "--weights", str(tmp_path / "nan.pth")]) == 2
    err = capsys.readouterr().err
    assert "nan.pth: the network's maxpool1 features hold NaN or Inf" in err and "Traceback" not in err
