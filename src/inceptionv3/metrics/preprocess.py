"""The metric modes' preprocessing: raw images -> the FID network's 299 px input, as each reference tool
prepares it.

* ``pytorch-fid``: pixels / 255, ``F.interpolate`` bilinear to 299 (align_corners=False, no antialias),
  then 2x - 1 (pytorch-fid);
* ``tf``: pixels in 0..255, TF1 ``resize_bilinear`` to 299 (align_corners=False, no half-pixel centres),
  then (x - 128) / 128 (TTUR, torch-fidelity);
* ``clean``: pixels in 0..255, PIL bicubic resize of each channel as a float image, clipped to 0..255,
  then (x - 128) / 128 (clean-fid's "clean" mode).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .modes import MODES

INPUT_SIZE = 299


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of: {', '.join(MODES)}")


def _tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, half_pixel_centers=False), torch-fidelity's
    bit-exact arithmetic: source = destination * (in / out), no centring, edges clamped."""
    h, w = x.shape[-2:]

    def grid(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / size, dtype=torch.float32)
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * scale
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.to(pos.dtype)

    x_lo, x_hi, dx = grid(w)
    y_lo, y_hi, dy = grid(h)
    top, bottom = x.index_select(-2, y_lo), x.index_select(-2, y_hi)
    in_00, in_01 = top.index_select(-1, x_lo), top.index_select(-1, x_hi)
    in_10, in_11 = bottom.index_select(-1, x_lo), bottom.index_select(-1, x_hi)
    in_0 = in_00 + (in_01 - in_00) * dx.view(1, 1, 1, size)
    in_1 = in_10 + (in_11 - in_10) * dx.view(1, 1, 1, size)
    return in_0 + (in_1 - in_0) * dy.view(1, 1, size, 1)


def _clean_resize(pixels: torch.Tensor) -> torch.Tensor:
    """clean-fid's resize: each channel as a float32 PIL image, bicubic to 299, clipped to 0..255."""
    out = []
    for img in pixels.detach().cpu().to(torch.float32).numpy():      # C x H x W, values 0..255
        chans = [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize(
            (INPUT_SIZE, INPUT_SIZE), resample=Image.BICUBIC)).clip(0, 255) for c in img]
        out.append(np.stack(chans))
    return torch.from_numpy(np.stack(out)).to(pixels.device)


def prepare(images: torch.Tensor, mode: str = "pytorch-fid") -> torch.Tensor:
    """N x 3 x H x W images -> the network's N x 3 x 299 x 299 input in ``mode``.

    ``images``: uint8 in 0..255, or floating point in [0, 1] (pytorch-fid's convention). One channel
    is repeated to three. Runs on the images' device (``clean`` resizes on the CPU with PIL).
    """
    check_mode(mode)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected N x 3 x H x W (or N x 1 x H x W) images, got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    is_u8 = images.dtype == torch.uint8
    if not is_u8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
    if not is_u8 and images.numel():
        lo, hi = (float(v) for v in torch.aminmax(images))
        if lo < -1e-3 or hi > 1 + 1e-3:   # the classic mistake: a generator's [-1, 1] or 0..255 floats
            raise ValueError(f"float images must be in [0, 1], got values from {lo:.3g} to {hi:.3g}; map "
                             f"[-1, 1] outputs with (x + 1) / 2, or pass uint8 images")
    if mode == "pytorch-fid":
        x = images.to(torch.float32).div(255) if is_u8 else images.to(torch.float32)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1
    pixels = images.to(torch.float32) if is_u8 else images.to(torch.float32) * 255
    if mode == "tf":
        x = _tf1_bilinear(pixels, INPUT_SIZE)
    else:
        x = _clean_resize(pixels)
    return (x - 128) / 128


class ImageTransform:
    """PIL image -> prepared 3 x 299 x 299 tensor; picklable, so decode workers run it."""

    def __init__(self, mode: str) -> None:
        check_mode(mode)
        self.mode = mode

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        u8 = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return prepare(u8[None], self.mode)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"
