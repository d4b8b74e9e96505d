"""The choices a metric run is made of, without importing torch (the command line builds its flags from them)."""
from __future__ import annotations

from ..engine.options import EngineOptions
from ..models.taps import TAPS

# The reference tool whose preprocessing is matched: resize filter and the way pixels are quantised.
MODES = ("pytorch-fid", "tf", "clean")

# Feature dims -> tap, pytorch-fid's BLOCK_INDEX_BY_DIM over our TAPS table (spatial taps are averaged).
DIMS: dict[int, str] = {TAPS[name].channels: name for name in ("maxpool1", "maxpool2", "Mixed_6e", "pool")}

# How the metrics run the network unless told otherwise: fp32, 50 images per batch as pytorch-fid; the
# backend is chosen per job (FeatureNet.plan): torch, whose features equal the plain network's, for small
# sets and tensors, the exported fp32 graph for folders large enough to repay its one-time export.
METRIC_OPTIONS = EngineOptions(batch_size=50, backend="auto")

# sFID (Nash et al. 2021, as ADM computes it): the first 7 channels of the TF graph's 17 x 17 "mixed_6/conv"
# output, i.e. the 1x1 branch (after its ReLU) of the third 17 x 17 block, Mixed_6d.branch1x1 here, flattened
# in TF's height, width, channel order: 7 * 17 * 17 = 2,023 dims.
SFID_TAP = "mixed_6/conv"
SFID_MODULE = "Mixed_6d.branch1x1"
SFID_CHANNELS = 7
SFID_DIMS = SFID_CHANNELS * 17 * 17

# The metrics one pass can serve (``scores.score``), in the order they are printed; the last three need
# the images themselves, not statistics.
METRICS = ("fid", "sfid", "kid", "is", "prdc")
NEED_IMAGES = ("kid", "is", "prdc")


def parse_metrics(text: str) -> tuple[str, ...]:
    """'kid,is' -> ("kid", "is"), each checked against ``METRICS`` (the type of ``--also``)."""
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    return names
