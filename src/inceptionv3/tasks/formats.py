"""File formats the tasks write, without importing torch (the command line checks them before a run)."""
from __future__ import annotations

# `features --out`: an N x D float32 matrix; .npy keeps the ordered paths beside it in FILE.paths.txt.
FEATURE_FORMATS = (".npy", ".npz", ".safetensors")
