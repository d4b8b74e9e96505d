"""Graph rewrites for inference: batch norm folded into the convs, sibling 1x1 convs merged, average pools
moved after their branch's 1x1 conv.

``fuse_for_inference`` rewrites a trained model for inference only: batch norm folded into the convs,
and in every Mixed block the 1x1 convs that read the block input fused into one wider conv whose output
is split (Mixed_5b: 64 + 48 + 64 + 32 channels in one GEMM instead of four). The average-pool branch's
1x1 conv joins that GEMM too: a bias-free 1x1 conv commutes with a 3x3 average pool (both are linear
and a zero pad stays zero), so we pool its narrow output instead of the wide input, then add the bias
and the ReLU. The result equals the model within float rounding (tested at 1e-4 relative). ReLUs and
bias additions run in place on the tensors the rewrite makes (one pass over memory fewer each).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..models.inception import (
    BasicConv2d,
    InceptionA,
    InceptionC,
    InceptionD,
    InceptionE,
)
from ..models.mini import InceptionModule


def _frozen_conv(shell: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """``shell`` (a conv built on the meta device) holding copies of ``weight`` and ``bias``, frozen.

    Built on the meta device, the conv initialises nothing: building an engine draws nothing from torch's
    RNG, and allocates each weight once, on the device of ``weight``.
    """
    shell.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    shell.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
    return shell


class _Siblings(nn.Module):
    """Several 1x1 convs on the same input as one conv; returns the branch outputs, split.

    ``pooled`` trailing channels belong to an average-pool branch: they are computed without bias,
    pooled, then biased (and ReLU'd), which equals conv(avg_pool(x)) exactly in both pad modes.
    """

    def __init__(self, convs: Sequence[nn.Conv2d], relu: bool, pool_conv: nn.Conv2d | None = None,
                 count_include_pad: bool = True) -> None:
        super().__init__()
        self.sizes = [c.out_channels for c in convs]
        dev = convs[0].weight.device
        weights = [c.weight for c in convs]
        biases = [c.bias if c.bias is not None else torch.zeros(c.out_channels, device=dev) for c in convs]
        self.pooled = 0
        if pool_conv is not None:
            self.pooled = pool_conv.out_channels
            weights.append(pool_conv.weight)
            biases.append(torch.zeros(self.pooled, device=dev))
            pool_bias = pool_conv.bias if pool_conv.bias is not None else torch.zeros(self.pooled, device=dev)
            self.register_buffer("pool_bias", pool_bias.detach().clone().view(1, -1, 1, 1))
        w = torch.cat([t.detach() for t in weights], 0)
        self.conv = _frozen_conv(nn.Conv2d(w.shape[1], w.shape[0], 1, device="meta"), w,
                                 torch.cat([t.detach() for t in biases], 0))
        self.relu = relu
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.conv(x)
        if not self.pooled:
            return list(torch.split(F.relu(y, inplace=True) if self.relu else y, self.sizes, 1))
        head, pool = y[:, :-self.pooled], y[:, -self.pooled:]
        pool = F.avg_pool2d(pool, 3, stride=1, padding=1, count_include_pad=self.count_include_pad)
        pool = pool.add_(self.pool_bias)
        parts = list(torch.split(F.relu(head, inplace=True) if self.relu else head, self.sizes, 1))
        return parts + [F.relu(pool, inplace=True) if self.relu else pool]


class _Fork(nn.Module):
    """E blocks' parallel 1x3 | 3x1 pair on one input, concatenated."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


class _FusedBlock(nn.Module):
    """A Mixed block rewritten as: fused siblings -> one tail per branch -> (extra pool branch) -> concat."""

    def __init__(self, siblings: _Siblings, tails: Sequence[nn.Module], extra: Callable | None = None) -> None:
        super().__init__()
        self.siblings = siblings
        self.tails = nn.ModuleList(tails)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.siblings(x)
        out = [tail(p) for tail, p in zip(self.tails, parts)] + parts[len(self.tails):]
        if self.extra is not None:
            out.append(self.extra(x))
        return torch.cat(out, 1)


class _MaxPoolBranch(nn.Module):
    """max-pool then conv: the pool branch that cannot join the siblings (a max is not linear)."""

    def __init__(self, conv: nn.Module, stride: int, padding: int) -> None:
        super().__init__()
        self.conv, self.stride, self.padding = conv, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(x, kernel_size=3, stride=self.stride, padding=self.padding)
        return self.conv(x) if self.conv is not None else x


class PooledConv(nn.Module):
    """An average-pool branch as conv -> pool -> bias -> ReLU: the 3x3 pool runs on the conv's narrow output
    (Mixed_7c: 192 channels instead of 2048); exact, as in ``_Siblings``."""

    def __init__(self, conv: nn.Conv2d, count_include_pad: bool) -> None:
        super().__init__()
        self.conv = _frozen_conv(nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False, device="meta"),
                                 conv.weight, None)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=conv.weight.device)
        self.register_buffer("bias", bias.detach().clone().view(1, -1, 1, 1))
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(self.conv(x), 3, stride=1, padding=1, count_include_pad=self.count_include_pad)
        return F.relu(y.add_(self.bias), inplace=True)


class _Branches(nn.Module):
    """The convs that read a block's input, each on its own, and the pooled-after-conv branch."""

    def __init__(self, convs: Sequence[nn.Module], pooled: PooledConv) -> None:
        super().__init__()
        self.convs, self.pooled = nn.ModuleList(convs), pooled

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [conv(x) for conv in self.convs] + [self.pooled(x)]


def _conv(m: nn.Module) -> nn.Conv2d:
    return m.conv if isinstance(m, BasicConv2d) else m


def _heads(convs: Sequence[nn.Module], pool: nn.Module | None, count_include_pad: bool, merge: bool) -> nn.Module:
    """A block's first convs: merged into one (``merge``) or kept apart; the avg-pool branch pooled after."""
    if merge:
        return _Siblings([_conv(c) for c in convs], True, _conv(pool) if pool is not None else None,
                         count_include_pad)
    return _Branches(convs, PooledConv(_conv(pool), count_include_pad))


def _fuse_block(block: nn.Module, merge: bool = True) -> nn.Module:
    """One Mixed block rewritten (see the module docstring). ``merge=False`` only moves the average pool
    after its branch's 1x1 conv; blocks without an average-pool branch are then returned as they are."""
    seq = nn.Sequential
    if isinstance(block, InceptionA):
        heads = _heads([block.branch1x1, block.branch5x5_1, block.branch3x3dbl_1], block.branch_pool,
                       block.count_include_pad, merge)
        return _FusedBlock(heads, [nn.Identity(), block.branch5x5_2, seq(block.branch3x3dbl_2, block.branch3x3dbl_3)])
    if isinstance(block, InceptionC):
        heads = _heads([block.branch1x1, block.branch7x7_1, block.branch7x7dbl_1], block.branch_pool,
                       block.count_include_pad, merge)
        return _FusedBlock(heads, [nn.Identity(), seq(block.branch7x7_2, block.branch7x7_3),
                                   seq(block.branch7x7dbl_2, block.branch7x7dbl_3, block.branch7x7dbl_4,
                                       block.branch7x7dbl_5)])
    if isinstance(block, InceptionE) and (merge or not block.max_pool):
        convs = [block.branch1x1, block.branch3x3_1, block.branch3x3dbl_1]
        tails = [nn.Identity(), _Fork(block.branch3x3_2a, block.branch3x3_2b),
                 seq(block.branch3x3dbl_2, _Fork(block.branch3x3dbl_3a, block.branch3x3dbl_3b))]
        if block.max_pool:   # the FID graph's last block
            return _FusedBlock(_heads(convs, None, True, True), tails, _MaxPoolBranch(block.branch_pool, 1, 1))
        return _FusedBlock(_heads(convs, block.branch_pool, block.count_include_pad, merge), tails)
    if not merge:
        return block
    if isinstance(block, InceptionD):
        sib = _Siblings([_conv(block.branch3x3_1), _conv(block.branch7x7x3_1)], True)
        return _FusedBlock(sib, [block.branch3x3_2, seq(block.branch7x7x3_2, block.branch7x7x3_3,
                                                        block.branch7x7x3_4)],
                           _MaxPoolBranch(None, stride=2, padding=0))
    if isinstance(block, InceptionModule):   # inception_mini: purely linear branches, no ReLU
        sib = _Siblings([block.branch1, block.branch2[0], block.branch3[0]], False)
        return _FusedBlock(sib, [nn.Identity(), block.branch2[1], block.branch3[1]],
                           _MaxPoolBranch(block.branch4[1], stride=1, padding=1))
    return block


@torch.no_grad()
def fuse_for_inference(model: nn.Module, siblings: bool = True, pool_after_conv: bool = True) -> nn.Module:
    """An eval-mode, channels-last copy with batch norm folded and (``siblings``) sibling 1x1 convs fused.

    Without ``siblings``, ``pool_after_conv`` still moves each 3x3 average pool after its branch's 1x1
    conv; fused siblings always do.

    The copy keeps the forward contract (``forward``, ``forward_features``, ``forward_head``,
    ``forward_intermediates``), so any code that runs the model runs the copy; only its state-dict keys
    differ. Works for every arch in ``models.builder.ARCHS``. The caller's model is untouched.
    """
    fused = copy.deepcopy(model).eval().requires_grad_(False)
    if getattr(fused, "AuxLogits", None) is not None:
        fused.AuxLogits = None      # inference never reads the aux head
    fold_batch_norm(fused)
    if siblings or pool_after_conv:
        for name, child in list(fused.named_children()):
            setattr(fused, name, _fuse_block(child, merge=siblings))
    return fused.to(memory_format=torch.channels_last)


def has_fused_siblings(module: nn.Module) -> bool:
    """Whether ``fuse_for_inference`` merged sibling 1x1 convs somewhere in ``module``."""
    return any(isinstance(m, _FusedBlock) for m in module.modules())


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` has batch norm layers (that ``fold_batch_norm`` folds into their convs)."""
    return any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in module.modules())


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold each Conv+BN pair into one biased conv, in place (eval-mode arithmetic; about 1e-6 relative)."""
    for m in model.modules():
        if isinstance(m, BasicConv2d) and isinstance(m.bn, nn.BatchNorm2d):
            bn, conv = m.bn, m.conv
            weight, bias = fuse_conv_bn_weights(conv.weight, None, bn.running_mean, bn.running_var, bn.eps,
                                                bn.weight, bn.bias)
            shell = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              device="meta")
            m.conv, m.bn = _frozen_conv(shell, weight, bias), nn.Identity()
    return model
