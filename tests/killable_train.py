"""Helper for the resume tests: train per a JSON TrainConfig, and at the Nth loss computation either hang
(the parent then SIGKILLs this process) or send this process SIGTERM (`term0`: only on torchrun's rank 0;
the other ranks must stop at the same step all the same), or (`die1`) SIGKILL torchrun's rank 1. N = 0:
never.

    python tests/killable_train.py CONFIG_JSON N hang|term|term0|die1 MARKER_FILE
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import torch

torch.set_num_threads(1)


from inceptionv3.training import config, loop, run


def main() -> int:
    cfg = config.TrainConfig.from_dict(json.loads(sys.argv[1]))
    at, action, marker = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    real = loop.compute_loss
    calls = {"n": 0}

    def compute_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            open(marker, "w").close()
            if action == "hang":
                time.sleep(600)   # mid-step, after the earlier steps' checkpoints: the parent kills us here
            elif action == "die1":   # torchrun's rank 1 dies as if the machine had crashed
                if os.environ.get("RANK") == "1":
                    os.kill(os.getpid(), signal.SIGKILL)
            elif action == "term" or os.environ.get("RANK", "0") == "0":
                os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    loop.compute_loss = compute_loss
    try:
        run.train(cfg, progress=False)
    except KeyboardInterrupt as e:
        print(e, file=sys.stderr)
        return 130
    except ConnectionError as e:   # another rank died (PeerLostError)
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
