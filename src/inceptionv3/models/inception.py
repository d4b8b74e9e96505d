"""InceptionV3 as released, written block by block like the paper: ``InceptionA``-``E``, ``InceptionAux``.

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
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import (
    AUX_MIN_INPUT_SIZE,
    MIN_INPUT_SIZE,
    Classifier,
    check_input_size,
    trunc_normal_,
)
from .taps import validate_taps

# Stages of the trunk in order; forward_intermediates walks them and stops after the last tap asked for.
_STAGES = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
)


class BasicConv2d(nn.Module):
    """Every conv of the network: Conv2d without bias, BatchNorm (TF's eps=0.001), ReLU."""

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


class InceptionV3(Classifier):
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
        self.config = {"num_classes": num_classes, "aux_logits": aux_logits, "dropout": dropout,
                       "in_chans": in_chans, "count_include_pad": count_include_pad, "last_pool": last_pool}
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
        self.AuxLogits: InceptionAux | None = InceptionAux(768, num_classes) if aux_logits else None
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
                trunc_normal_(m.weight, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.AuxLogits is not None:
            trunc_normal_(self.AuxLogits.conv1.conv.weight, 0.01)
            trunc_normal_(self.AuxLogits.fc.weight, 0.001)
            nn.init.zeros_(self.AuxLogits.fc.bias)
        self._init_classifier()

    def _init_classifier(self) -> None:
        # A zero head starts at exactly chance-level loss; a std-0.1 head gives 10-class logits near 23.
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.min_input_size, "InceptionV3")
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
    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, aux_logits); aux_logits is None when the model has no aux head."""
        if self.AuxLogits is None:
            return self.forward(x), None
        check_input_size(x, AUX_MIN_INPUT_SIZE,
                         "the aux head (build with aux_logits=False for smaller inputs)")
        x = self._stem_to_6e(x)
        aux = self.AuxLogits(x)
        return self.forward_head(self._7a_to_7c(x)), aux

    @torch.jit.unused
    def forward_intermediates(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """Outputs of the named taps (see ``TAPS``), computing only as far as the deepest one."""
        taps = validate_taps(taps)
        check_input_size(x, MIN_INPUT_SIZE, "InceptionV3")
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
            trunc_normal_(fc.weight, 0.001)
            nn.init.zeros_(fc.bias)
            self.AuxLogits.fc = fc


def inception_v3(num_classes: int = 1000, aux_logits: bool = True, **kwargs) -> InceptionV3:
    """InceptionV3 as released; see ``InceptionV3`` for the variant arguments."""
    return InceptionV3(num_classes=num_classes, aux_logits=aux_logits, **kwargs)
