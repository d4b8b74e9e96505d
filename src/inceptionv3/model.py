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

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    "Tap", "TAPS", "InceptionV3", "InceptionMini", "inception_v3", "inception_mini", "ARCHS", "build_model",
    "MIN_INPUT_SIZE", "AUX_MIN_INPUT_SIZE", "MINI_MIN_INPUT_SIZE",
]

MIN_INPUT_SIZE = 75        # smallest side that survives the three stride-2 reductions to a 1x1 Mixed_7c
AUX_MIN_INPUT_SIZE = 299   # the aux head's 5x5 pool + 5x5 conv need Mixed_6e at 17x17
MINI_MIN_INPUT_SIZE = 27   # the mini network has only the stem's two pools


@dataclass(frozen=True)
class Tap:
    """A named point in the network whose output can be read out."""
    name: str
    channels: int      # 0 means "num_classes" (the logits tap)
    reduction: int     # input size / feature-map size, roughly (0 for pooled vectors)


# One table drives feature extraction, intermediate outputs and the metric taps.
TAPS: dict[str, Tap] = {t.name: t for t in (
    Tap("Conv2d_2b_3x3", 64, 2),
    Tap("maxpool1", 64, 4),
    Tap("Conv2d_4a_3x3", 192, 4),
    Tap("maxpool2", 192, 8),
    Tap("Mixed_5d", 288, 8),
    Tap("Mixed_6e", 768, 16),
    Tap("Mixed_7c", 2048, 32),
    Tap("pool", 2048, 0),
    Tap("logits", 0, 0),
)}

# Stages of the trunk in order; forward_intermediates walks them and stops after the last tap asked for.
_STAGES = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
)


class BasicConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_3x3(x: torch.Tensor, count_include_pad: bool) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=count_include_pad)


class InceptionA(nn.Module):
    """35x35 block (Figure 5 with one 5x5 branch kept): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1."""

    def __init__(self, in_channels: int, pool_features: int, count_include_pad: bool = True) -> None:
        super().__init__()
        self.count_include_pad = count_include_pad
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool_3x3(x, self.count_include_pad))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)  # 64 + 64 + 96 + pool


class InceptionB(nn.Module):
    """35x35 -> 17x17 grid reduction (Figure 10): stride-2 3x3 | 1x1-3x3-3x3/2 | max-pool/2."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)  # 384 + 96 + in


class InceptionC(nn.Module):
    """17x17 block (Figure 6): 7x7 convs factorized into 1x7 and 7x1, with c7 channels inside."""

    def __init__(self, in_channels: int, channels_7x7: int, count_include_pad: bool = True) -> None:
        super().__init__()
        c7 = channels_7x7
        self.count_include_pad = count_include_pad
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(branch7x7dbl))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(branch7x7dbl))
        branch_pool = self.branch_pool(_avg_pool_3x3(x, self.count_include_pad))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)  # 4 x 192 = 768


class InceptionD(nn.Module):
    """17x17 -> 8x8 grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max-pool/2."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(branch7x7x3))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)  # 320 + 192 + 768 = 1280


class InceptionE(nn.Module):
    """8x8 block (Figure 7): expanded filter banks with parallel 1x3 and 3x1 convs.

    ``max_pool`` is the FID graph's one structural difference: its last block pools with a max.
    """

    def __init__(self, in_channels: int, count_include_pad: bool = True, max_pool: bool = False) -> None:
        super().__init__()
        self.count_include_pad = count_include_pad
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_3x3(x, self.count_include_pad)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)  # 320 + 768 + 768 + 192


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid (section 4): acts as a regularizer during training."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)   # N x 768 x 5 x 5 (at 299 px)
        x = self.conv1(self.conv0(x))                  # N x 768 x 1 x 1
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)                              # N x num_classes


@contextlib.contextmanager
def _bn_stats_kept(block: nn.Module) -> Iterator[None]:
    """Around a checkpointed block's recomputation: the batch already counted in the BN running
    statistics must not be counted twice, so they are put back as they were."""
    saved = [(b, b.clone()) for m in block.modules() if isinstance(m, nn.BatchNorm2d)
             for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _check_size(x: torch.Tensor, minimum: int, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D input batch (N x C x H x W), got shape {list(x.shape)}")
    h, w = x.shape[-2], x.shape[-1]
    if h < minimum or w < minimum:
        raise ValueError(
            f"input of {h}x{w} pixels is too small for {what}: each side must be at least {minimum} px. "
            f"Resize the images (e.g. --image-size {minimum}) or pick a smaller model.")


@torch.no_grad()
def _trunc_normal(tensor: torch.Tensor, std: float) -> None:
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


class _Classifier(nn.Module):
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


class InceptionV3(_Classifier):
    """InceptionV3 with one forward contract: ``forward(x)`` returns logits in every mode.

    Aux logits only come from ``forward_train``. Variants are arguments:
    ``count_include_pad=False`` gives TF/Keras-exact 3x3 average pools (TF's SAME padding excludes the
    padded zeros); ``last_pool="max"`` gives the FID graph's max-pool in Mixed_7c's pool branch.
    """
    arch = "inception_v3"

    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = True,
        dropout: float = 0.5,
        in_chans: int = 3,
        count_include_pad: bool = True,
        last_pool: str = "avg",
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        if last_pool not in ("avg", "max"):
            raise ValueError(f"last_pool must be 'avg' or 'max', got {last_pool!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.config = dict(num_classes=num_classes, aux_logits=aux_logits, dropout=dropout, in_chans=in_chans,
                           count_include_pad=count_include_pad, last_pool=last_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.aux_logits = aux_logits
        self.num_features = 2048
        self.min_input_size = MIN_INPUT_SIZE
        self.grad_checkpointing = False
        pad = count_include_pad

        self.Conv2d_1a_3x3 = BasicConv2d(in_chans, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32, count_include_pad=pad)
        self.Mixed_5c = InceptionA(256, pool_features=64, count_include_pad=pad)
        self.Mixed_5d = InceptionA(288, pool_features=64, count_include_pad=pad)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, count_include_pad=pad)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, count_include_pad=pad)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, count_include_pad=pad)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, count_include_pad=pad)
        self.AuxLogits: Optional[InceptionAux] = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, count_include_pad=pad)
        self.Mixed_7c = InceptionE(2048, count_include_pad=pad, max_pool=last_pool == "max")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        if init_weights:
            self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _trunc_normal(m.weight, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.AuxLogits is not None:
            _trunc_normal(self.AuxLogits.conv1.conv.weight, 0.01)
            _trunc_normal(self.AuxLogits.fc.weight, 0.001)
            nn.init.zeros_(self.AuxLogits.fc.bias)
        self._init_classifier()

    def _init_classifier(self) -> None:
        # A zero head starts at exactly chance-level loss; a std-0.1 head gives 10-class logits near 23.
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.min_input_size, "InceptionV3")
        x = self._stem_to_6e(x)     # N x 768 x 17 x 17
        return self._7a_to_7c(x)    # N x 2048 x 8 x 8

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each Mixed block's activations in the backward pass instead of keeping them.

        Training then stores only the blocks' outputs: less memory (larger batches fit) for about one
        more forward pass of compute. Loss, gradients and batch-norm statistics are unchanged.
        """
        self.grad_checkpointing = enable

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and torch.is_grad_enabled()

    def _stem_to_6e(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._checkpointing():
            return self._checkpointed(x, 0, 15)
        # N x 3 x 299 x 299
        x = self.Conv2d_1a_3x3(x)   # N x 32 x 149 x 149
        x = self.Conv2d_2a_3x3(x)   # N x 32 x 147 x 147
        x = self.Conv2d_2b_3x3(x)   # N x 64 x 147 x 147
        x = self.maxpool1(x)        # N x 64 x 73 x 73
        x = self.Conv2d_3b_1x1(x)   # N x 80 x 73 x 73
        x = self.Conv2d_4a_3x3(x)   # N x 192 x 71 x 71
        x = self.maxpool2(x)        # N x 192 x 35 x 35
        x = self.Mixed_5b(x)        # N x 256 x 35 x 35
        x = self.Mixed_5c(x)        # N x 288 x 35 x 35
        x = self.Mixed_5d(x)        # N x 288 x 35 x 35
        x = self.Mixed_6a(x)        # N x 768 x 17 x 17
        x = self.Mixed_6b(x)        # N x 768 x 17 x 17
        x = self.Mixed_6c(x)        # N x 768 x 17 x 17
        x = self.Mixed_6d(x)        # N x 768 x 17 x 17
        return self.Mixed_6e(x)     # N x 768 x 17 x 17

    def _7a_to_7c(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._checkpointing():
            return self._checkpointed(x, 15, len(_STAGES))
        x = self.Mixed_7a(x)        # N x 1280 x 8 x 8
        x = self.Mixed_7b(x)        # N x 2048 x 8 x 8
        return self.Mixed_7c(x)     # N x 2048 x 8 x 8

    @torch.jit.unused
    def _checkpointed(self, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """_STAGES[first:last] with every Mixed block under non-reentrant activation checkpointing."""
        for name in _STAGES[first:last]:
            block = getattr(self, name)
            if name.startswith("Mixed_"):
                x = checkpoint(block, x, use_reentrant=False,
                               context_fn=lambda b=block: (contextlib.nullcontext(), _bn_stats_kept(b)))
            else:
                x = block(x)
        return x

    @torch.jit.unused
    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(logits, aux_logits); aux_logits is None when the model has no aux head."""
        if self.AuxLogits is None:
            return self.forward(x), None
        _check_size(x, AUX_MIN_INPUT_SIZE, "the aux head (build with aux_logits=False for smaller inputs)")
        x = self._stem_to_6e(x)
        aux = self.AuxLogits(x)
        return self.forward_head(self._7a_to_7c(x)), aux

    @torch.jit.unused
    def forward_intermediates(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """Outputs of the named taps (see ``TAPS``), computing only as far as the deepest one."""
        taps = _validate_taps(taps)
        _check_size(x, MIN_INPUT_SIZE, "InceptionV3")
        out: dict[str, torch.Tensor] = {}
        wanted = set(taps)
        for name in _STAGES:
            x = getattr(self, name)(x)
            if name in wanted:
                out[name] = x
            if len(out) == len(wanted):
                return out
        pooled = self.forward_head(x, pre_logits=True)
        if "pool" in wanted:
            out["pool"] = pooled
        if "logits" in wanted:
            out["logits"] = self.fc(self.dropout(pooled))
        return out

    def reset_classifier(self, num_classes: int) -> None:
        """A new, zero-initialised head (and aux head) for ``num_classes`` classes."""
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)
        self._init_classifier()
        if self.AuxLogits is not None:
            fc = nn.Linear(768, num_classes).to(self.AuxLogits.fc.weight.device)
            _trunc_normal(fc.weight, 0.001)
            nn.init.zeros_(fc.bias)
            self.AuxLogits.fc = fc


def _validate_taps(taps: Sequence[str]) -> list[str]:
    if isinstance(taps, str):
        taps = [taps]
    unknown = [t for t in taps if t not in TAPS]
    if unknown:
        raise ValueError(f"unknown tap(s) {unknown}; known taps: {', '.join(TAPS)}")
    return list(taps)


class InceptionModule(nn.Module):
    """The seed document's module: 1x1 | 1x1-3x3 | 1x1-5x5 | maxpool-1x1, as printed (no BN, no ReLU)."""

    def __init__(self, in_channels: int, out1x1: int, out3x3red: int, out3x3: int,
                 out5x5red: int, out5x5: int, out_pool: int) -> None:
        super().__init__()
        self.branch1 = nn.Conv2d(in_channels, out1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels, out3x3red, kernel_size=1),
            nn.Conv2d(out3x3red, out3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            nn.Conv2d(in_channels, out5x5red, kernel_size=1),
            nn.Conv2d(out5x5red, out5x5, kernel_size=5, padding=2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(in_channels, out_pool, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionMini(_Classifier):
    """The compact network printed in the project's source document, kept exactly as printed.

    How it differs from InceptionV3: a five-conv stem like InceptionV3's, but with biased convs and no
    batch norm; ReLU after conv2-conv5 only (not after conv1, and nowhere inside the Inception modules,
    whose branches are purely linear); two GoogLeNet-style modules (with a 5x5 branch and a max-pool
    branch) instead of eleven factorized blocks; no aux head; 288 features. 925,912 parameters at 1000
    classes. It is a small, fast model for small images (any side >= 27 px).
    """
    arch = "inception_mini"

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, in_chans: int = 3) -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.config = dict(num_classes=num_classes, dropout=dropout, in_chans=in_chans)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.aux_logits = False
        self.num_features = 288
        self.min_input_size = MINI_MIN_INPUT_SIZE
        self.conv1 = nn.Conv2d(in_chans, 32, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(32, 32, kernel_size=3)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.conv4 = nn.Conv2d(64, 80, kernel_size=1)
        self.conv5 = nn.Conv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.inception1 = InceptionModule(192, 64, 48, 64, 64, 96, 32)
        self.inception2 = InceptionModule(256, 64, 48, 64, 64, 96, 64)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(288, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.min_input_size, "inception_mini")
        # N x 3 x 75 x 75
        x = self.conv1(x)              # N x 32 x 37 x 37 (no ReLU, as printed)
        x = F.relu(self.conv2(x))      # N x 32 x 35 x 35
        x = F.relu(self.conv3(x))      # N x 64 x 35 x 35
        x = self.maxpool1(x)           # N x 64 x 17 x 17
        x = F.relu(self.conv4(x))      # N x 80 x 17 x 17
        x = F.relu(self.conv5(x))      # N x 192 x 15 x 15
        x = self.maxpool2(x)           # N x 192 x 7 x 7
        x = self.inception1(x)         # N x 256 x 7 x 7
        return self.inception2(x)      # N x 288 x 7 x 7

    @torch.jit.unused
    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.forward(x), None

    @torch.jit.unused
    def forward_intermediates(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """Taps ``pool`` (288) and ``logits``; the InceptionV3 trunk taps do not exist here."""
        taps = _validate_taps(taps)
        bad = [t for t in taps if t not in ("pool", "logits")]
        if bad:
            raise ValueError(f"inception_mini has only the taps 'pool' and 'logits', not {bad}")
        pooled = self.forward_head(self.forward_features(x), pre_logits=True)
        out = {"pool": pooled, "logits": self.fc(self.dropout(pooled))}
        return {t: out[t] for t in taps}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)


def inception_v3(num_classes: int = 1000, aux_logits: bool = True, **kwargs) -> InceptionV3:
    """InceptionV3 as released; see ``InceptionV3`` for the variant arguments."""
    return InceptionV3(num_classes=num_classes, aux_logits=aux_logits, **kwargs)


def inception_mini(num_classes: int = 1000, **kwargs) -> InceptionMini:
    """The compact two-module network from the project's source document."""
    return InceptionMini(num_classes=num_classes, **kwargs)


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "inception_v3": inception_v3,
    "inception_mini": inception_mini,
}


def build_model(arch: str, **config) -> nn.Module:
    """Build a network by name with its constructor arguments (as saved in ``model.config``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if arch == "inception_mini":
        # Options that only InceptionV3 has are meaningless here; refuse rather than ignore them silently.
        extra = {k for k in config if k not in ("num_classes", "dropout", "in_chans")}
        if config.get("aux_logits") is False:
            extra.discard("aux_logits")
        if extra:
            raise ValueError(f"inception_mini does not take {sorted(extra)}")
        config = {k: v for k, v in config.items() if k != "aux_logits"}
    return ARCHS[arch](**config)


def min_input_size(model: nn.Module, with_aux: bool = False) -> int:
    """Smallest image side this model accepts."""
    if isinstance(model, InceptionMini):
        return MINI_MIN_INPUT_SIZE
    return AUX_MIN_INPUT_SIZE if with_aux else MIN_INPUT_SIZE
