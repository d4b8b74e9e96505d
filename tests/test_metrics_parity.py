"""Our modes against clean-fid and torchmetrics, each loading the same random FID-graph weights (no download).

pytorch-fid and torch-fidelity are compared in test_metrics.py. Here the 64-d tap (the first three convs)
keeps the 299 px passes cheap: what these tools add over those two is their decoding and resizing, which
the tap sees in full. benchmarks/bench_metrics_parity.py measures every pair at 2048 dims.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_metrics import _fid_state_dict, _pytorch_fid_model, _u8, _write_images

from inceptionv3 import metrics

N = 4
FEATURE_ATOL = 1e-4
FID_RTOL = 1e-3
pytestmark = [pytest.mark.filterwarnings("ignore::inceptionv3.metrics.functional.MetricWarning"),
              pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated")]


def _fid(a, b, net: metrics.FeatureNet) -> float:
    """metrics.fid's number, on a net already built (building one costs more than these passes)."""
    return metrics.fid(metrics.compute_stats(a, net, workers=0), metrics.compute_stats(b, net, workers=0))["fid"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    sd = _fid_state_dict()
    weights = root / "fid_random.pth"
    torch.save(sd, weights)
    return {"sd": sd, "weights": str(weights), "a": _write_images(root / "a", 0, (96, 80), n=N),
            "b": _write_images(root / "b", 1, (80, 88), n=N, offset=30)}


def test_clean_mode_is_clean_fids(data):
    cleanfid = pytest.importorskip("cleanfid.fid")
    # clean-fid's own data path (PIL bicubic of float channels, 0..255 into the network); its network is
    # the TF graph as TorchScript, a download, so pytorch-fid's port with the same weights stands in.
    net = _pytorch_fid_model(data["sd"], 64)
    net.resize_input = net.normalize_input = False

    def model(x: torch.Tensor) -> torch.Tensor:
        return net((x - 128) / 128)[0].mean(dim=(2, 3))      # spatial taps averaged, as pytorch-fid does
    theirs = {k: cleanfid.get_folder_features(str(data[k]), model, num_workers=0, batch_size=N,
                                              device=torch.device("cpu"), mode="clean", verbose=False)
              for k in ("a", "b")}
    ours = metrics.FeatureNet(data["weights"], "clean", 64, "cpu")
    for k in ("a", "b"):
        got = metrics.compute_features(data[k], ours, workers=0)["features"].numpy()
        assert np.abs(got - theirs[k]).max() < FEATURE_ATOL
    want = cleanfid.fid_from_feats(theirs["a"], theirs["b"])
    assert _fid(data["a"], data["b"], ours) == pytest.approx(want, rel=FID_RTOL)


def test_tf_mode_is_torchmetrics_without_antialias(data):
    fid_module = pytest.importorskip("torchmetrics.image.fid")
    # antialias=False: torch-fidelity's TF1 bilinear resize, which the tf mode reproduces; torchmetrics'
    # default (antialias=True) resizes with F.interpolate and scales by 128, matching none of the modes
    # exactly (docs/metrics.md gives the measured difference).
    tm = fid_module.FrechetInceptionDistance(feature=64, feature_extractor_weights_path=data["weights"],
                                             antialias=False)
    u8 = {k: _u8(data[k]) for k in ("a", "b")}
    net = metrics.FeatureNet(data["weights"], "tf", 64, "cpu")
    for k in ("a", "b"):
        with torch.no_grad():
            theirs = tm.inception(u8[k])
        assert (net(u8[k])[0] - theirs).abs().max() < FEATURE_ATOL
    tm.update(u8["a"], real=False)
    tm.update(u8["b"], real=True)
    want = float(tm.compute())
    assert _fid(u8["a"], u8["b"], net) == pytest.approx(want, rel=FID_RTOL)
