"""Metric features and statistics against pytorch-fid and torch-fidelity, on a generated state dict.

The reference tools load the same random-weight FID state dict the test writes (pytorch-fid's download
function is monkeypatched, torch-fidelity takes a path), so nothing touches the network. A handful of
small images per side keeps the 299 px forward passes cheap on two shared cores.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from inceptionv3 import metrics
from inceptionv3.cli.main import main
from inceptionv3.metrics.functional import MetricWarning
from inceptionv3.models.inception import InceptionV3

N_IMAGES = 6
FEATURE_ATOL = 1e-4
FID_RTOL = 1e-3
# pytorch-fid's own calculate_frechet_distance warns about SciPy's deprecated disp= and singular products.
_PYTORCH_FID_NOISE = (pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated"),
                      pytest.mark.filterwarnings("ignore:Matrix is singular"))


def _fid_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random FID-graph state dict whose activations stay O(1): He-scaled convs, random BN stats."""
    model = InceptionV3(num_classes=1008, aux_logits=False, count_include_pad=False, last_pool="max",
                        init_weights=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.state_dict()


def _write_images(folder, seed: int, size: tuple[int, int], n: int = N_IMAGES, offset: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        # Smooth blobs plus noise: varied enough that the features differ between images.
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        arr = np.clip(np.asarray(img, np.int16) + rng.integers(-20, 21, (h, w, 3)) + offset, 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    sd = _fid_state_dict()
    weights = root / "fid_random.pth"
    torch.save(sd, weights)
    a = _write_images(root / "a", 0, (96, 80))
    b = _write_images(root / "b", 1, (80, 88), offset=30)
    return {"sd": sd, "weights": str(weights), "a": a, "b": b, "root": root}


def _files(folder):
    return sorted(str(p) for p in folder.glob("*.png"))


def _u8(folder) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()).permute(2, 0, 1)
                        for f in _files(folder)])


def _pytorch_fid_model(sd, dims: int):
    inception = pytest.importorskip("pytorch_fid.inception")
    mp = pytest.MonkeyPatch()
    mp.setattr(inception, "load_state_dict_from_url", lambda *a, **k: sd)   # no download
    try:
        return inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).eval()
    finally:
        mp.undo()


def test_fid_net_config_is_pytorch_fids_graph(data):
    # Same keys and shapes: the 'fid' registry config builds pytorch-fid's network exactly.
    from inceptionv3.weights.registry import REGISTRY
    ours = InceptionV3(**REGISTRY["fid"].config())
    assert metrics.FID_NET_CONFIG == REGISTRY["fid"].model_config
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in data["sd"].items()}


# FID itself is compared at 192 dims: scipy's sqrtm (pytorch-fid) and np.linalg.eigvals (torch-fidelity) of
# a singular 2048 x 2048 product take about a minute each on this machine; the Fréchet math at any size is
# compared with both tools in test_fid.py.

@_PYTORCH_FID_NOISE[0]
@_PYTORCH_FID_NOISE[1]
def test_pytorch_fid_parity(data):
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    for dims in (2048, 192):
        model = _pytorch_fid_model(data["sd"], dims)
        ref = {k: fid_score.get_activations(_files(data[k]), model, batch_size=N_IMAGES, dims=dims,
                                            device="cpu", num_workers=0) for k in ("a", "b")}
        net = metrics.FeatureNet(data["weights"], "pytorch-fid", dims, "cpu")
        for k in ("a", "b"):
            ours = metrics.compute_features(data[k], net, workers=0)["features"].numpy()
            assert np.abs(ours - ref[k]).max() < FEATURE_ATOL
    want = fid_score.calculate_frechet_distance(*(v for k in ("a", "b") for v in
                                                  (ref[k].mean(0), np.cov(ref[k], rowvar=False))))
    with pytest.warns(MetricWarning, match="covariance is singular"):
        got = metrics.fid(data["a"], data["b"], weights=data["weights"], dims=192, device="cpu", workers=0)
    assert got["fid"] == pytest.approx(want, rel=FID_RTOL)
    assert got["n"] == [N_IMAGES, N_IMAGES] and got["meta"][0]["mode"] == "pytorch-fid"


def test_torch_fidelity_parity_tf_mode(data):
    tfe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    from inceptionv3.metrics import functional

    ext = tfe.FeatureExtractorInceptionV3("inception-v3-compat", ["192", "2048", "logits_unbiased"],
                                          feature_extractor_weights_path=data["weights"])
    ref = {k: ext(_u8(data[k])) for k in ("a", "b")}
    net = metrics.FeatureNet(data["weights"], "tf", 2048, "cpu")
    ours = {k: metrics.compute_features(data[k], net, logits=True, workers=0) for k in ("a", "b")}
    for k in ("a", "b"):
        assert (ours[k]["features"] - ref[k][1]).abs().max() < FEATURE_ATOL
        assert (ours[k]["logits"] - ref[k][2]).abs().max() < FEATURE_ATOL * 10   # sums of 2048 products
    want = fid_statistics_to_metric(fid_features_to_statistics(ref["a"][0]),
                                    fid_features_to_statistics(ref["b"][0]), False)
    want = want["frechet_inception_distance"]
    with pytest.warns(MetricWarning):
        got = metrics.fid(data["a"], data["b"], weights=data["weights"], mode="tf", dims=192, device="cpu",
                          workers=0)
    assert got["fid"] == pytest.approx(want, rel=FID_RTOL)
    kid_ref = kid_features_to_metric(ref["a"][1], ref["b"][1], kid_subsets=5, kid_subset_size=4,
                                     verbose=False, rng_seed=2020)
    kid = functional.kid(ours["a"]["features"], ours["b"]["features"], subsets=5, subset_size=4)
    assert kid.mean == pytest.approx(kid_ref["kernel_inception_distance_mean"], rel=1e-3)
    isc_ref = isc_features_to_metric(ref["a"][2], splits=2, shuffle=True, rng_seed=2020)
    isc = functional.inception_score(ours["a"]["logits"], splits=2)
    assert isc.mean == pytest.approx(isc_ref["inception_score_mean"], rel=1e-4)


def test_tf_resize_is_torch_fidelitys():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x as ref
    u8 = (torch.rand(2, 3, 40, 30) * 255).to(torch.uint8)
    want = (ref(u8.float(), size=(299, 299), align_corners=False) - 128) / 128
    assert torch.equal(metrics.prepare(u8, "tf"), want)
    assert torch.allclose(metrics.prepare(u8.float() / 255, "tf"), want, atol=1e-5)   # float [0, 1] input


def test_clean_mode_is_pil_bicubic_on_float_channels():
    u8 = (torch.rand(1, 3, 33, 47) * 255).to(torch.uint8)
    chans = [np.asarray(Image.fromarray(c.astype(np.float32)).resize((299, 299), Image.BICUBIC)).clip(0, 255)
             for c in u8[0].numpy()]
    want = (torch.from_numpy(np.stack(chans)) - 128) / 128
    assert torch.equal(metrics.prepare(u8, "clean")[0], want)
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        metrics.prepare(u8, "tensorflow")
    with pytest.raises(ValueError, match=r"map \[-1, 1\] outputs"):
        metrics.prepare(u8.float() / 127.5 - 1, "pytorch-fid")


def test_tensor_iterator_and_folder_sources_agree(data):
    net = metrics.FeatureNet(data["weights"], "pytorch-fid", 64, "cpu")
    u8 = _u8(data["a"])
    from_folder = metrics.compute_stats(data["a"], net, workers=0)
    from_u8 = metrics.compute_stats(u8, net, batch_size=4)
    from_float = metrics.compute_stats(iter([u8[:2].float() / 255, u8[2:].float() / 255]), net)
    for s in (from_u8, from_float):
        assert s.n == N_IMAGES
        np.testing.assert_allclose(s.mu, from_folder.mu, atol=1e-5)
        np.testing.assert_allclose(s.sigma, from_folder.sigma, atol=1e-5)
    assert from_folder.meta["tap"] == "maxpool1" and from_folder.meta["dims"] == 64
    # FID of an iterator of batches against statistics of the same images: zero, and no mismatch warning.
    with pytest.warns(MetricWarning, match="covariance is singular") as caught:
        same = metrics.fid(iter([u8[:3], u8[3:]]), from_folder, weights=data["weights"], dims=64, device="cpu")
    assert abs(same["fid"]) < 1e-6 and not any("differ" in str(w.message) for w in caught)
    # A model object works too, is left as it was (batch norm is folded in a copy), and gives the same.
    model = InceptionV3(num_classes=1008, init_weights=False, **metrics.FID_NET_CONFIG)
    model.load_state_dict(data["sd"])
    from_module = metrics.compute_stats(u8, metrics.FeatureNet(model, "pytorch-fid", 64, "cpu"))
    np.testing.assert_allclose(from_module.mu, from_folder.mu, atol=1e-5)
    assert isinstance(model.Conv2d_1a_3x3.bn, nn.BatchNorm2d)
    assert from_module.meta["weights_sha256"].startswith("state_dict:")


def test_awkward_files_and_too_few_images(data, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (90, 70), (200, 10, 10)).save(folder / "rgb.png")
    Image.new("L", (75, 120), 90).save(folder / "gray.png")
    Image.new("RGBA", (100, 100), (0, 0, 255, 128)).save(folder / "rgba.png")
    Image.fromarray(np.arange(80 * 80, dtype=np.uint16).reshape(80, 80) * 10).save(folder / "deep.png")
    (folder / "broken.png").write_bytes(b"not a png")
    net = metrics.FeatureNet(data["weights"], "clean", 64, "cpu")
    stats = metrics.compute_stats(folder, net, workers=0)
    assert stats.n == 4 and stats.meta["failed"] == 1
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (80, 80)).save(one / "x.png")
    with pytest.raises(ValueError, match="1 usable image"):
        metrics.compute_stats(one, net, workers=0)


def test_stats_accumulator_streams_and_merges():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5)) * [1, 2, 3, 4, 5] + 1e6   # a huge mean must not cost precision
    acc, parts = metrics.StatsAccumulator(5), [metrics.StatsAccumulator(5) for _ in range(3)]
    for i, chunk in enumerate(np.array_split(x, 7)):
        acc.update(chunk)
        parts[i % 3].update(chunk)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for a in (acc, merged):
        mu, sigma = a.compute()
        np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    assert merged.n == 300


def _all_reduce_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x = torch.arange(40, dtype=torch.float64).reshape(10, 4) ** 1.5
    acc = metrics.StatsAccumulator(4)
    acc.update(x[rank::world])
    mu, sigma = acc.all_reduce().compute()
    np.savez(f"{out}.{rank}.npz", mu=mu, sigma=sigma, n=acc.n)
    dist.destroy_process_group()


def test_accumulator_all_reduce_across_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "r")
    mp.spawn(_all_reduce_worker, args=(2, port, out), nprocs=2)
    x = (torch.arange(40, dtype=torch.float64).reshape(10, 4) ** 1.5).numpy()
    for rank in range(2):
        with np.load(f"{out}.{rank}.npz") as f:
            assert int(f["n"]) == 10
            np.testing.assert_allclose(f["mu"], x.mean(0), rtol=1e-12)
            np.testing.assert_allclose(f["sigma"], np.cov(x, rowvar=False), rtol=1e-10)


def _stats(meta: dict, seed: int = 0, d: int = 4) -> metrics.Stats:
    x = np.random.default_rng(seed).standard_normal((50, d))
    return metrics.Stats(x.mean(0), np.cov(x, rowvar=False), 50, meta, f"s{seed}")


def test_stats_files_round_trip_and_interoperate(tmp_path):
    meta = {"weights_sha256": "abc", "tap": "pool", "dims": 4, "mode": "tf"}
    s = _stats(meta)
    path = metrics.save_stats(s, tmp_path / "s.npz")
    back = metrics.load_stats(path)
    assert back.n == 50 and back.meta["mode"] == "tf" and back.meta["format"] == metrics.STATS_FORMAT
    np.testing.assert_array_equal(back.sigma, s.sigma)
    # pytorch-fid reads ours ...
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    mu, _sigma = fid_score.compute_statistics_of_path(str(path), None, 1, 4, "cpu")
    np.testing.assert_array_equal(mu, s.mu)
    # ... and we read pytorch-fid's / TTUR's (float32 there), with a loud warning about provenance.
    np.savez_compressed(tmp_path / "theirs.npz", mu=s.mu.astype(np.float32), sigma=s.sigma.astype(np.float32))
    theirs = metrics.load_stats(tmp_path / "theirs.npz")
    assert theirs.meta == {"tool": "pytorch-fid / TTUR / EDM"} and theirs.n is None
    assert theirs.mu.dtype == np.float64
    with pytest.warns(MetricWarning, match="no metadata"):
        metrics.check_compatible(back, theirs)
    with pytest.raises(metrics.StatsMismatchError, match="no metadata"):
        metrics.check_compatible(back, theirs, strict=True)
    np.savez(tmp_path / "other.npz", features=np.zeros(3))
    with pytest.raises(ValueError, match="not a statistics file"):
        metrics.load_stats(tmp_path / "other.npz")


def test_mismatched_metadata_warns_or_raises():
    a = _stats({"weights_sha256": "abc", "tap": "pool", "dims": 4, "mode": "tf"})
    b = _stats({"weights_sha256": "abc", "tap": "pool", "dims": 4, "mode": "clean"}, seed=1)
    with pytest.warns(MetricWarning, match="differ in mode"):
        assert len(metrics.check_compatible(a, b)) == 1
    with pytest.raises(metrics.StatsMismatchError):
        metrics.check_compatible(a, b, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.check_compatible(a, _stats(dict(a.meta), seed=2)) == []
    with pytest.raises(metrics.StatsMismatchError, match="--dims"):
        metrics.check_compatible(a, _stats(a.meta, d=3))


def test_cli_stats_fid_kid_is(data, tmp_path, capsys):
    common = ["--weights", data["weights"], "--device", "cpu", "--workers", "0", "--no-progress"]
    out = tmp_path / "a.npz"
    assert main(["stats", str(data["a"]), "--out", str(out), "--dims", "64", "--mode", "tf", *common]) == 0
    assert "64-d statistics of 6 images (tf)" in capsys.readouterr().out
    # No --mode / --dims: B is scored the way the statistics file was made.
    assert main(["fid", str(out), str(data["b"]), "--format", "json", *common]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["dims"] == 64 and [m["mode"] for m in result["meta"]] == ["tf", "tf"]
    with pytest.warns(MetricWarning):
        direct = metrics.fid(data["a"], data["b"], weights=data["weights"], mode="tf", dims=64, device="cpu",
                             workers=0)
    assert result["fid"] == pytest.approx(direct["fid"], rel=1e-9) and result["method"] == "eigh"
    assert "64-d features" in captured.err          # N < dims warning, as a line
    assert main(["fid", str(out), str(out), "--legacy-sqrtm", "--strict", *common]) == 0
    assert "FID: " in capsys.readouterr().out
    assert main(["kid", str(data["a"]), str(data["b"]), "--dims", "64", "--kid-subset-size", "4",
                 "--kid-subsets", "3", *common]) == 0
    assert capsys.readouterr().out.startswith("KID: ")
    assert main(["kid", str(data["a"]), str(data["b"]), "--dims", "64", *common]) == 2
    assert "subset size 1000 is larger than the number of images" in capsys.readouterr().err
    assert main(["kid", str(out), str(data["b"]), "--dims", "64", "--kid-subset-size", "4", *common]) == 2
    assert "need the images themselves" in capsys.readouterr().err
    assert main(["is", str(data["a"]), "--splits", "2", "--format", "json", *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["is"] >= 1.0 and "1008 logits" in result["logits"]
