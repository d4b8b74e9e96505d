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
