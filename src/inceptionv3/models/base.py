"""InceptionV3 as released, and the compact two-module network from the project's source document.

The network follows the graph that torchvision, timm, Keras and TF-slim all ship (Szegedy et al.,
"Rethinking the Inception Architecture for Computer Vision", 2015). It differs from the paper's Table 1:

- stem: Table 1 lists conv 3x3/2, conv 3x3, conv padded 3x3, pool, then three 3x3 convs (80, 192, 288
  channels). The released graph uses pool -> 1x1 conv (80) -> 3x3 conv (192) -> pool, and the first
  Inception blocks take 192 channels at 35x35;
- Table 1 has 3 / 5 / 2 modules per grid size; the released graph has 3 (Mixed_5b-5d), 4 (Mixed_6b-6e)
  and 2 (Mixed_7b-7c), with the grid reductions Mixed_6a and Mixed_7a written as their own blocks;
- the 35x35 blocks keep one 5x5 conv branch (Figure 5 replaces every 5x5 by two 3x3s);
- batch norm follows every conv (the paper's "BN-auxiliary" applies it to the aux head only),
  and the aux head sits on Mixed_6e (17x17).

Every conv is Conv(bias=False) + BatchNorm(eps=0.001) + ReLU. State-dict keys equal torchvision's, so
torchvision and timm checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

MIN_INPUT_SIZE = 75        # smallest side that survives the three stride-2 reductions to a 1x1 Mixed_7c


AUX_MIN_INPUT_SIZE = 299   # the aux head's 5x5 pool + 5x5 conv need Mixed_6e at 17x17


def check_input_size(x: torch.Tensor, minimum: int, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D input batch (N x C x H x W), got shape {list(x.shape)}")
    h, w = x.shape[-2], x.shape[-1]
    if h < minimum or w < minimum:
        raise ValueError(
            f"input of {h}x{w} pixels is too small for {what}: each side must be at least {minimum} px. "
            f"Resize the images (e.g. --image-size {minimum}) or pick a smaller model.")


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float) -> None:
    # TF's truncated normal: values beyond two standard deviations are redrawn. Redrawing only the ~4.6%
    # that fall outside is exact and several times faster than nn.init.trunc_normal_'s inverse-CDF route,
    # which keeps constructing the 27M-parameter network quick.
    flat = tensor.view(-1)
    flat.normal_(0.0, std)
    idx = (flat.abs() > 2 * std).nonzero().squeeze(1)
    values = torch.randn(len(idx), dtype=tensor.dtype, device=tensor.device) * std
    while True:
        bad = values.abs() > 2 * std
        if not bad.any():
            break
        values[bad] = torch.randn(int(bad.sum()), dtype=tensor.dtype, device=tensor.device) * std
    flat[idx] = values


class Classifier(nn.Module):
    """The head and forward contract both networks share: global average pool, dropout, fc."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)   # N x num_features
        if pre_logits:
            return x
        return self.fc(self.dropout(x))         # N x num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc
