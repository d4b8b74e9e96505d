"""What a network costs: parameters, multiply-adds and each block's output shape, from one forward pass
(``summarize``), and its text table (``format_summary``, what ``inceptionv3 info`` prints)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BlockInfo:
    """One top-level block of the network."""
    name: str
    output_shape: tuple[int, ...]     # C x H x W, or D for vectors
    params: int
    macs: int                         # multiply-adds of the convs and linears inside, per image


@dataclass
class ModelSummary:
    """The whole network at one input size."""
    arch: str
    input_size: tuple[int, int]
    params: int
    trainable_params: int
    macs: int
    blocks: list[BlockInfo]


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return out[0].numel() * k
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


@torch.no_grad()
def summarize(model: nn.Module, input_size: int | tuple[int, int] = 299) -> ModelSummary:
    """Count parameters and multiply-adds of one eval-mode forward pass (the aux head is not run)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    macs: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    children = [(n, m) for n, m in model.named_children() if n != "AuxLogits"]
    for top, child in children:
        def count(mod, _inp, out, top=top):
            macs[top] = macs.get(top, 0) + _layer_macs(mod, out)
        for sub in child.modules():
            if isinstance(sub, (nn.Conv2d, nn.Linear)):
                hooks.append(sub.register_forward_hook(count))
        hooks.append(child.register_forward_hook(
            lambda mod, _inp, out, top=top: shapes.__setitem__(top, tuple(out.shape[1:]))))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, getattr(model, "in_chans", 3), h, w))
    finally:
        model.train(was_training)
        for hk in hooks:
            hk.remove()
    blocks = [BlockInfo(n, shapes[n], sum(p.numel() for p in m.parameters()), macs.get(n, 0))
              for n, m in children if n in shapes]
    aux = getattr(model, "AuxLogits", None)
    if aux is not None:
        blocks.append(BlockInfo("AuxLogits (training only)", (model.num_classes,),
                                sum(p.numel() for p in aux.parameters()), 0))
    return ModelSummary(
        arch=getattr(model, "arch", type(model).__name__), input_size=(h, w),
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=sum(macs.values()), blocks=blocks)


def format_summary(s: ModelSummary) -> str:
    """The summary as the text table ``inceptionv3 info`` prints."""
    lines = [
        f"arch              {s.arch}",
        f"input             {s.input_size[0]} x {s.input_size[1]}",
        f"parameters        {s.params:,} ({s.trainable_params:,} trainable)",
        f"multiply-adds     {s.macs / 1e9:.2f} G per image ({2 * s.macs / 1e9:.2f} GFLOP)",
        "",
        f"{'block':<28}{'output':>20}{'params':>14}{'MACs':>12}",
    ]
    for b in s.blocks:
        shape = " x ".join(map(str, b.output_shape))
        lines.append(f"{b.name:<28}{shape:>20}{b.params:>14,}{b.macs / 1e6:>11.1f}M")
    return "\n".join(lines)
