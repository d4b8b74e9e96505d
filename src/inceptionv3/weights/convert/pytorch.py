"""torchvision, timm and pytorch-fid InceptionV3 files.

Their keys are already ours (torchvision's), so there is no key map: a file is read without running
pickled code, its model config is inferred from its tensors, and the strict loader checks every tensor.
pytorch-fid's file is the FID graph (``FID_GRAPH``: 1008 classes, no aux head, TF-style pooling, a
max-pool in Mixed_7c's pool branch).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...models.builder import FID_GRAPH
from ..errors import WeightsError
from ..io import read_state_dict
from ..load import guess_preprocess, infer_config
from ..preprocess import Preprocess
from ..registry import REGISTRY, TIMM_PREPROCESS


def torch_state_dict(path: Path, source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, model config) of a torchvision, timm or pytorch-fid (``source`` "fid") file."""
    label = str(path)
    sd, _ = read_state_dict(path)   # refuses pickled code, NaN/Inf, truncated files
    arch, config = infer_config(sd, label)
    if arch != "inception_v3":
        raise WeightsError(f"{label}: an {arch} state dict, not InceptionV3; --from {source} expects "
                           f"InceptionV3 weights")
    if source == "fid":
        if config["num_classes"] != FID_GRAPH["num_classes"] or config["aux_logits"]:
            raise WeightsError(f"{label}: pytorch-fid's FID network has {FID_GRAPH['num_classes']} classes "
                               f"and no aux head; this file has {config['num_classes']} classes"
                               f"{' and an aux head' if config['aux_logits'] else ''}. "
                               f"Use --from torchvision")
        config.update(FID_GRAPH)
    return sd, config


def torch_preprocess(source: str, label: str) -> Preprocess:
    """What a ``source`` file's weights expect of their inputs when no registry entry matches its hash."""
    if source == "timm":
        return TIMM_PREPROCESS
    if source == "fid":
        return REGISTRY["fid"].preprocess
    return guess_preprocess(label)
