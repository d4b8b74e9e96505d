"""The parity matrix: each of our modes against pytorch-fid, torch-fidelity, clean-fid and torchmetrics.

Writes two folders of generated images and one random FID-graph state dict, loads every tool with those
weights (their downloads patched out or their weights-path arguments used), and prints for each pair the
relative difference in features (max |ours - theirs| / max |theirs|), in the statistics (mu and sigma, the
same measure) and in FID (|ours - theirs| / theirs). Feeds the table in docs/metrics.md.

FID is the Fréchet distance of each side's features by our float64 eigh route, so the column measures the
features and statistics, not the tools' matrix square roots (those agree with ours to 1e-9 relative on
well-conditioned statistics, tests/test_fid.py); --tool-frechet uses each tool's own Fréchet function
instead, which on a few dozen images (singular 2048 x 2048 covariances) takes minutes.

clean-fid's legacy_tensorflow and clean modes run the TF graph as a TorchScript file (a download), so its
clean mode is measured with clean-fid's data path (decoding, PIL bicubic of float channels) in front of
pytorch-fid's port of the same weights, and legacy_tensorflow is not measured.
Usage: python benchmarks/bench_metrics_parity.py [--images 12] [--json FILE] [--tool-frechet]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fid import random_fid_state_dict, write_images

from inceptionv3 import metrics
from inceptionv3.metrics.functional import frechet_distance


def _rel(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-300))


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.png"))


def _u8(folder: Path) -> torch.Tensor:
    from PIL import Image
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()).permute(2, 0, 1)
                        for f in _files(folder)])


def _pytorch_fid_net(sd: dict):
    from pytorch_fid import inception
    real = inception.load_state_dict_from_url
    inception.load_state_dict_from_url = lambda *a, **k: sd
    try:
        return inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    finally:
        inception.load_state_dict_from_url = real


def references(sd: dict, weights: str, sets: dict[str, Path]) -> dict[str, tuple[str, Callable]]:
    """Tool name -> (our mode it reproduces, folder -> (N x 2048 features, the tool's own FID function))."""
    out: dict[str, tuple[str, Callable]] = {}
    cpu = torch.device("cpu")
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance, get_activations
        net = _pytorch_fid_net(sd)
        out["pytorch-fid"] = ("pytorch-fid", lambda f: get_activations(_files(f), net, 25, 2048, "cpu", 0),
                              calculate_frechet_distance)
    except ImportError as e:
        print(f"pytorch-fid: not measured ({e})")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        from torch_fidelity.metric_fid import fid_statistics_to_metric
        ext = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)

        def tfid_frechet(m1, s1, m2, s2):
            return fid_statistics_to_metric({"mu": m1, "sigma": s1}, {"mu": m2, "sigma": s2}, False)[
                "frechet_inception_distance"]
        out["torch-fidelity"] = ("tf", lambda f: ext(_u8(f))[0].numpy(), tfid_frechet)
    except ImportError as e:
        print(f"torch-fidelity: not measured ({e})")
    try:
        import cleanfid.fid as cfid
        import cleanfid.inception_pytorch as cinc
        port = _pytorch_fid_net(sd)
        port.resize_input = port.normalize_input = False

        def clean_model(x):
            return port((x - 128) / 128)[0].squeeze(-1).squeeze(-1)
        out["clean-fid clean"] = ("clean", lambda f: cfid.get_folder_features(
            str(f), clean_model, num_workers=0, batch_size=25, device=cpu, mode="clean", verbose=False),
            cfid.frechet_distance)
        real = cinc.load_state_dict_from_url
        cinc.load_state_dict_from_url = lambda *a, **k: sd
        try:
            from cleanfid.features import build_feature_extractor
            legacy = build_feature_extractor("legacy_pytorch", cpu, use_dataparallel=False)
        finally:
            cinc.load_state_dict_from_url = real
        out["clean-fid legacy_pytorch"] = ("pytorch-fid", lambda f: cfid.get_folder_features(
            str(f), legacy, num_workers=0, batch_size=25, device=cpu, mode="legacy_pytorch", verbose=False),
            cfid.frechet_distance)
    except ImportError as e:
        print(f"clean-fid: not measured ({e})")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid

        def tm_frechet(m1, s1, m2, s2):
            t = (torch.from_numpy(a) for a in (m1, s1, m2, s2))
            return float(_compute_fid(*t))
        # antialias=True (its default) resizes 0..255 floats with F.interpolate and scales by 128: no mode
        # reproduces it.
        for antialias, mode in ((False, "tf"), (True, "none")):
            tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights,
                                          antialias=antialias)

            def feats(f, tm=tm):
                with torch.no_grad():
                    return tm.inception(_u8(f)).double().numpy()
            out[f"torchmetrics antialias={antialias}"] = (mode, feats, tm_frechet)
    except ImportError as e:
        print(f"torchmetrics: not measured ({e})")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=12, help="images per set (default 12)")
    p.add_argument("--tool-frechet", action="store_true", help="each tool's own Fréchet function (slow)")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_grad_enabled(False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_parity_") as tmp:
        root = Path(tmp)
        sd = random_fid_state_dict()
        weights = str(root / "fid_random.pth")
        torch.save(sd, weights)
        sets = {"a": root / "a", "b": root / "b"}
        write_images(sets["a"], args.images, 96, seed=1)      # up- and down-scaling both occur in practice;
        write_images(sets["b"], args.images, 512, seed=2)     # 512 px is resized down to 299
        ours = {}
        for mode in metrics.MODES:
            net = metrics.FeatureNet(weights, mode, 2048, "cpu")
            ours[mode] = {k: metrics.compute_features(f, net, workers=0)["features"].double().numpy()
                          for k, f in sets.items()}
        for tool, (mode, extract, tool_frechet) in references(sd, weights, sets).items():
            theirs = {k: np.asarray(extract(f), np.float64) for k, f in sets.items()}
            for our_mode in metrics.MODES:
                mine = ours[our_mode]
                sm, st = ({k: _stats(v[k]) for k in sets} for v in (mine, theirs))
                fid_ours = frechet_distance(*sm["a"], *sm["b"])
                fid_theirs = (tool_frechet if args.tool_frechet else frechet_distance)(*st["a"], *st["b"])
                rows.append({"tool": tool, "matches": mode, "ours": our_mode,
                             "features": max(_rel(mine[k], theirs[k]) for k in sets),
                             "mu": max(_rel(sm[k][0], st[k][0]) for k in sets),
                             "sigma": max(_rel(sm[k][1], st[k][1]) for k in sets),
                             "fid_ours": fid_ours, "fid_theirs": float(fid_theirs),
                             "fid": abs(fid_ours - fid_theirs) / abs(fid_theirs)})
    print(f"{args.images} + {args.images} images (96 px and 512 px), 2048-d, random FID-graph weights, "
          f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}; FID by "
          f"{'each tool' if args.tool_frechet else 'our eigh route on both sides'}")
    print(f"| {'tool':28} | {'our mode':13} | features | mu       | sigma    | FID      |")
    print(f"|{'-' * 30}|{'-' * 15}|----------|----------|----------|----------|")
    for r in rows:
        mark = " *" if r["ours"] == r["matches"] else ""
        print(f"| {r['tool']:28} | {r['ours'] + mark:13} | {r['features']:.1e}  | {r['mu']:.1e}  | "
              f"{r['sigma']:.1e}  | {r['fid']:.1e}  |")
    print("* the mode that reproduces the tool")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": args.images, "torch": torch.__version__, "tool_frechet": args.tool_frechet,
                       "machine": platform.processor() or platform.machine(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
