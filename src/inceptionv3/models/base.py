"""What both networks share: the input-size limits and their check, TF's truncated-normal
initialisation, and ``Classifier``, the head (global average pool, dropout, fc) with the one forward
contract: ``forward(x) -> logits``, ``forward_features``, ``forward_head(x, pre_logits)``."""
from __future__ import annotations

import torch
from torch import nn

MIN_INPUT_SIZE = 75        # smallest side that survives the three stride-2 reductions to a 1x1 Mixed_7c
AUX_MIN_INPUT_SIZE = 299   # the aux head's 5x5 pool + 5x5 conv need Mixed_6e at 17x17


def check_input_size(x: torch.Tensor, minimum: int, what: str) -> None:
    """Refuse a batch that is not N x C x H x W or whose sides are below ``minimum``, naming the fix."""
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D input batch (N x C x H x W), got shape {list(x.shape)}")
    h, w = x.shape[-2], x.shape[-1]
    if h < minimum or w < minimum:
        raise ValueError(
            f"input of {h}x{w} pixels is too small for {what}: each side must be at least {minimum} px. "
            f"Resize the images (e.g. --image-size {minimum}) or pick a smaller model.")


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float) -> None:
    """Fill ``tensor`` in place from a normal(0, std) truncated at two standard deviations."""
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
