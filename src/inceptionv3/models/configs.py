"""Named configurations of the networks, as constructor arguments. Torch-free, so the weights registry
and the command line read them without loading torch; ``builder`` exports them with the networks."""
from __future__ import annotations

from typing import Any

# The TF "2015-12-05" graph that FID, KID and the Inception Score are defined on (pytorch-fid's port):
# 1008 classes, no aux head, TF's padding-excluded average pools, a max-pool in Mixed_7c's pool branch.
FID_GRAPH: dict[str, Any] = {"num_classes": 1008, "aux_logits": False, "count_include_pad": False,
                             "last_pool": "max"}
