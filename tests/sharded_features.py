"""Helper for test_distributed: `features` sharded over torchrun's ranks, merged in input order on rank 0.

    torchrun --nproc_per_node=N tests/sharded_features.py IMAGE_FOLDER WEIGHTS OUT.npz
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from inceptionv3 import distributed as dist_mod
from inceptionv3.features import extract_features
from inceptionv3.transforms import expand_paths

torch.set_num_threads(1)


def main() -> int:
    folder, weights, out = sys.argv[1:4]
    env = dist_mod.setup(torch.device("cpu"))
    paths = expand_paths([folder])
    mine = [paths[i] for i in dist_mod.shard_range(len(paths), env)]
    result = extract_features(mine, weights=weights, batch_size=4, workers=0, device="cpu")
    parts = dist_mod.gather_to_main(result, env)
    if env.is_main:
        np.savez(out, features=np.concatenate([p.features for p in parts]),
                 paths=np.array([q for p in parts for q in p.paths]),
                 failures=np.array([f[0] for p in parts for f in p.failures]))
    dist_mod.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
