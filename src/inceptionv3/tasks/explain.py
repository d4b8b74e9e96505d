"""Explanations: where in an image the network found the evidence for a class, through Captum.

``explain`` gives one map per image (N x H x W in [0, 1], at the input's size) for the top class or a given
one; ``overlay`` colours a map onto the image the network saw; ``explain_files`` does both for image files
and writes a ``.png`` overlay and a ``.npy`` map per image. The methods are Captum's (the ``explain`` extra),
imported on first use; this module imports neither torch nor Captum when it is loaded, so the command's
parser reads ``METHODS`` at no cost.
"""
from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

    from ..weights.preprocess import Preprocess

log = logging.getLogger(__name__)

# The Captum methods that fit these networks. Guided backprop, guided Grad-CAM and DeepLift are left out:
# they replace the backward pass of nn.ReLU modules, and our convs apply ReLU functionally, so they would
# silently reduce to plain gradients.
METHODS: tuple[str, ...] = ("gradcam", "integrated_gradients", "saliency", "occlusion")

# The last block of each network: the coarsest grid that still has positions (8 x 8 at 299 px for
# InceptionV3, 7 x 7 at 75 px for the mini network), where Grad-CAM's class evidence is most specific.
DEFAULT_LAYERS: dict[str, str] = {"inception_v3": "Mixed_7c", "inception_mini": "inception2"}

_IG_STEPS = 32          # integral steps of integrated gradients: maps stop changing visibly beyond ~30
_IG_CHUNK = 32          # inputs per forward/backward inside integrated gradients (bounds its memory)
_OCCLUSION_EVALS = 16   # occluded copies per forward
_PIXEL_PERCENTILE = 99  # pixel-level maps are scaled to this percentile: a few extreme gradients would
                        # otherwise leave the rest of the map black

_INSTALL_HINT = "pip install 'inceptionv3[explain]'"


@dataclass
class Explanation:
    """One map per image and the class each explains.

    ``maps`` is N x H x W float32 in [0, 1] at the input's H x W (1 = the strongest evidence for the class);
    ``targets[i]`` the class index explained for image i, ``scores[i]`` its probability.
    """
    maps: np.ndarray
    targets: list[int]
    scores: list[float]


def _captum_attr() -> Any:
    try:
        import captum.attr
    except ImportError:
        raise ImportError(f"explanations need Captum, which is not installed: {_INSTALL_HINT}") from None
    return captum.attr


def check_method(method: str) -> str:
    """``method`` if it is one of ``METHODS``; else a ValueError naming them."""
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def resolve_target(target: int | str | None, class_names: Sequence[str] | None, num_classes: int) -> int | None:
    """A class given as an index or a class name -> its index (None stays None: the top class).

    A text that equals a class name is that class, even when it is also a number (folder-named classes
    "0", "1", "10" sort as names, not as numbers); otherwise a number is an index.
    """
    if target is None:
        return None
    if isinstance(target, str):
        text = target.strip()
        names = list(class_names or [])
        if text in names:
            return names.index(text)
        folded = [n.casefold() for n in names]
        if text.casefold() in folded:
            return folded.index(text.casefold())
        try:
            index = int(text)
        except ValueError:
            known = f" (e.g. {', '.join(repr(n) for n in names[:3])})" if names else " (it has no class names)"
            raise ValueError(f"--target {target!r}: not a class index or a class name of this model"
                             f"{known}; run 'inceptionv3 info' to list them") from None
    else:
        index = int(target)
    if not 0 <= index < num_classes:
        raise ValueError(f"--target {target!r}: class index out of range; this model has {num_classes} classes "
                         f"(0-{num_classes - 1})")
    return index


def _layer(model: nn.Module, layer: str | None) -> nn.Module:
    """The module Grad-CAM reads: ``layer`` by name, or the network's last block."""
    if layer is None:
        arch = getattr(model, "arch", None)
        if arch not in DEFAULT_LAYERS:
            raise ValueError(f"no default Grad-CAM layer for {type(model).__name__}; pass layer= (a module name)")
        layer = DEFAULT_LAYERS[arch]
    try:
        return model.get_submodule(layer)
    except AttributeError:
        blocks = [name for name, _ in model.named_children()]
        raise ValueError(f"layer {layer!r} is not a module of {type(model).__name__}; "
                         f"its blocks: {', '.join(blocks)}") from None


@contextmanager
def _attribution_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (batch norm from its running statistics) and no activation checkpointing, with gradients,
    restored on exit; outside any caller's ``inference_mode``, whose tensors cannot carry gradients."""
    import torch

    training = model.training
    checkpointing = getattr(model, "grad_checkpointing", None)
    model.eval()
    if checkpointing:
        model.grad_checkpointing = False   # a recomputed forward would fire Captum's hooks twice
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        model.train(training)
        if checkpointing:
            model.grad_checkpointing = checkpointing


def _check_model(model: nn.Module) -> torch.device:
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"explain needs the torch model (weights.load.load_model), not {type(model).__name__}: "
                         "attributions need its gradients")
    params = list(model.parameters())
    if not params:
        raise ValueError("explain needs a model with parameters")
    low = sorted({str(p.dtype) for p in params if p.is_floating_point() and p.dtype != torch.float32})
    if low:
        raise ValueError(f"explain needs the fp32 model, this one holds {', '.join(low)} tensors: "
                         "load it with load_model and do not convert it (gradients in low precision mislead)")
    return params[0].device


def _targets(target: int | Sequence[int] | None, top: list[int], num_classes: int) -> list[int]:
    n = len(top)
    if target is None:
        return top
    targets = [int(target)] * n if isinstance(target, numbers.Integral) else [int(t) for t in target]
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} images; give one class, one per image, or None")
    bad = sorted({t for t in targets if not 0 <= t < num_classes})
    if bad:
        raise ValueError(f"target class {bad[0]} is out of range; the model has {num_classes} classes "
                         f"(0-{num_classes - 1})")
    return targets


def _scale_max(m: torch.Tensor) -> torch.Tensor:
    """N x H x W >= 0 -> each map divided by its maximum (an all-zero map stays zero)."""
    peak = m.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (m / peak).clamp(0, 1)


def _scale_percentile(m: torch.Tensor) -> torch.Tensor:
    """N x H x W >= 0 -> each map divided by its high percentile, clipped to 1."""
    import torch

    top = torch.quantile(m.flatten(1), _PIXEL_PERCENTILE / 100, dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (m / top).clamp(0, 1)


def _fit_window(n: int, side: int, stride: int) -> int:
    """The window side nearest ``side`` whose strided positions end exactly at ``n``: a window that stops
    short of the edge would leave the last rows or columns never occluded, and blank in the map."""
    rest = (n - side) % stride
    return side + rest if rest <= stride // 2 else side - (stride - rest)


def _attribute(model: nn.Module, x: torch.Tensor, targets: list[int], method: str,
               layer: str | None) -> torch.Tensor:
    """N x H x W maps in [0, 1] for ``targets`` (x: N x C x H x W)."""
    import torch

    attr = _captum_attr()
    h, w = x.shape[-2:]
    if method == "gradcam":
        module = _layer(model, layer)
        cam = attr.LayerGradCam(model, module).attribute(x, target=targets, relu_attributions=True)
        if cam.shape[-2:] == (1, 1):
            log.warning("Grad-CAM on a 1 x 1 grid gives a uniform map: at %d x %d px the layer has one "
                        "position; pick an earlier layer (e.g. Mixed_6e) or larger images", h, w)
        cam = attr.LayerAttribution.interpolate(cam, (h, w), interpolate_mode="bilinear")
        return _scale_max(cam[:, 0].clamp_min(0))
    if layer is not None:
        raise ValueError(f"layer applies to gradcam only, not to {method}")
    if method == "integrated_gradients":
        # Baseline 0 in normalised space: every pixel at the preprocessing mean, an image with no content.
        a = attr.IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=targets,
                                                      n_steps=_IG_STEPS, internal_batch_size=_IG_CHUNK)
        return _scale_percentile(a.sum(dim=1).abs())
    if method == "saliency":
        a = attr.Saliency(model).attribute(x, target=targets, abs=True)
        return _scale_percentile(a.amax(dim=1))
    # occlusion: how much the class score drops when a patch is set to the mean colour
    side = max(2, round(min(h, w) / 6))
    stride = max(1, side // 2)
    windows = (x.shape[1], _fit_window(h, side, stride), _fit_window(w, side, stride))
    a = attr.Occlusion(model).attribute(x, sliding_window_shapes=windows, strides=(x.shape[1], stride, stride),
                                        baselines=0.0, target=targets, perturbations_per_eval=_OCCLUSION_EVALS)
    return _scale_max(a.sum(dim=1).clamp_min(0))


def explain(model: nn.Module, images: torch.Tensor, target: int | Sequence[int] | None = None,
            method: str = "gradcam", layer: str | None = None) -> Explanation:
    """Maps of the evidence for a class in each image, by a Captum method (``METHODS``).

    ``images`` are N x C x H x W, preprocessed as the weights' entry says (``data.transforms.eval_transform``).
    ``target`` is one class for all images, one per image, or None for each image's top class. ``layer``
    names the module Grad-CAM reads (default: the network's last block, ``DEFAULT_LAYERS``). ``model`` is
    the fp32 torch model; it runs in eval mode with gradients here and is restored after. Captum hooks the
    model while this runs, so do not run the same model object from another thread meanwhile.
    """
    import torch

    check_method(method)
    device = _check_model(model)
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty N x C x H x W batch, got shape {list(images.shape)}")
    with _attribution_mode(model):
        x = images.detach().to(device=device, dtype=torch.float32).clone()
        with torch.no_grad():
            probs = model(x).float().softmax(dim=1)
        targets = _targets(target, probs.argmax(dim=1).tolist(), probs.shape[1])
        x.requires_grad_(method != "occlusion")   # occlusion only runs forwards
        maps = _attribute(model, x, targets, method, layer)
    scores = probs[torch.arange(len(targets), device=probs.device), torch.tensor(targets, device=probs.device)]
    return Explanation(maps=maps.detach().float().cpu().numpy(), targets=targets, scores=scores.tolist())


# Colour map anchors, low to high: dark blue, blue, cyan, green, yellow, red (the usual Grad-CAM look:
# red is the strongest evidence).
_ANCHORS = ((0.0, (0, 0, 128)), (0.125, (0, 0, 255)), (0.375, (0, 255, 255)), (0.5, (0, 255, 0)),
            (0.625, (255, 255, 0)), (0.875, (255, 0, 0)), (1.0, (128, 0, 0)))


def colorize(heat: np.ndarray) -> np.ndarray:
    """H x W values in [0, 1] -> H x W x 3 uint8 colours (dark blue = none, red = the most)."""
    import numpy as np

    v = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0, 1)
    stops = np.array([s for s, _ in _ANCHORS], dtype=np.float32)
    rgb = np.array([c for _, c in _ANCHORS], dtype=np.float32)
    out = np.stack([np.interp(v, stops, rgb[:, k]) for k in range(3)], axis=-1)
    return np.rint(out).astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The coloured heat map over ``image`` (an RGB image of what the network saw, see ``input_view``).

    The map is resized (bilinear) to the image's size when they differ; ``alpha`` is the map's weight,
    0 = the image alone, 1 = the map alone.
    """
    import numpy as np
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {alpha}")
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"expected an H x W heat map, got shape {list(heat.shape)}")
    base = image.convert("RGB")
    if heat.shape != (base.height, base.width):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(base.size, Image.Resampling.BILINEAR))
    colour = Image.fromarray(colorize(heat), mode="RGB")
    return Image.blend(base, colour, alpha)


def input_view(x: torch.Tensor, preprocess: Preprocess) -> Image.Image:
    """The image a preprocessed C x H x W tensor shows (the resized, cropped input), as 8-bit RGB.

    Undoes the normalisation of ``data.transforms``: per-channel mean/std for RGB, their averages for a
    one-channel input.
    """
    import numpy as np
    import torch
    from PIL import Image

    c = x.shape[0]
    mean, std = (list(preprocess.mean), list(preprocess.std)) if c == 3 else \
        ([sum(preprocess.mean) / 3], [sum(preprocess.std) / 3])
    if c != len(mean):
        raise ValueError(f"expected a 1- or 3-channel image tensor, got shape {list(x.shape)}")
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    pixels = ((x.detach().float().cpu() * s + m) * 255).round().clamp(0, 255).to(torch.uint8)
    hwc = pixels.permute(1, 2, 0).numpy()
    img = Image.fromarray(hwc[:, :, 0], mode="L") if c == 1 else Image.fromarray(np.ascontiguousarray(hwc), "RGB")
    return img.convert("RGB")


def output_names(paths: Sequence[Path]) -> list[str]:
    """One output name per input: its stem, with -2, -3, ... for the second and later inputs of a stem."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = p.stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _save_png(img: Image.Image, dest: Path) -> None:
    from ..runtime.files import atomic_path

    with atomic_path(dest) as tmp:
        img.save(tmp, format="PNG")


def _save_npy(a: np.ndarray, dest: Path) -> None:
    import numpy as np

    from ..runtime.files import atomic_path

    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        np.save(f, a)


def explain_files(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | nn.Module = "imagenet",
    target: int | str | None = None,
    method: str = "gradcam",
    layer: str | None = None,
    alpha: float = 0.5,
    device: str = "auto",
    batch_size: int = 8,
    arch: str | None = None,
) -> list[dict]:
    """Explain image files: ``<name>.png`` (overlay) and ``<name>.npy`` (map, H x W float32) in ``out_dir``.

    One result per input, in order: ``{"path", "index", "label", "probability", "png", "npy"}`` or
    ``{"path", "error"}`` for an image that cannot be read (the others go on). The method, alpha, outputs
    and target are checked before any image is decoded; ``target`` is an index or a class name.
    """
    import torch

    from ..data.loaders import image_batches
    from ..data.paths import expand_paths
    from ..data.transforms import eval_transform
    from ..runtime.threads import resolve_device
    from ..weights.load import load_model

    check_method(method)
    _captum_attr()   # a missing extra is named before the model loads
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {alpha}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    paths = expand_paths(inputs)
    out = Path(out_dir)
    names = output_names(paths)
    sources = {p.resolve() for p in paths}
    for name in names:
        for dest in (out / f"{name}.png", out / f"{name}.npy"):
            if dest.resolve() in sources:
                raise ValueError(f"{dest}: would overwrite an input image; choose another --out folder")
    dev = resolve_device(device)
    if isinstance(weights, torch.nn.Module):
        model = weights.to(dev)
    else:
        model = load_model(weights, device=dev, **({"arch": arch} if arch else {}))
    meta = model.meta
    class_index = resolve_target(target, meta.class_names, model.num_classes)
    in_chans = getattr(model, "in_chans", 3)
    transform = eval_transform(meta.preprocess, in_chans)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict | None] = [None] * len(paths)
    # Decoding in-process: explaining costs several forward and backward passes per batch, so worker
    # processes would only compete for the cores.
    for batch in image_batches(paths, transform, mode="L" if in_chans == 1 else "RGB", batch_size=batch_size,
                               workers=0, pin_memory=False):
        for i, reason in batch.failures:
            results[i] = {"path": str(paths[i]), "error": reason}
        if not batch.indices:
            continue
        ex = explain(model, batch.images, target=class_index, method=method, layer=layer)
        for k, i in enumerate(batch.indices):
            png, npy = out / f"{names[i]}.png", out / f"{names[i]}.npy"
            _save_npy(ex.maps[k], npy)
            _save_png(overlay(input_view(batch.images[k], meta.preprocess), ex.maps[k], alpha), png)
            c = ex.targets[k]
            results[i] = {"path": str(paths[i]), "index": c,
                          "label": meta.class_names[c] if meta.class_names else str(c),
                          "probability": ex.scores[k], "png": str(png), "npy": str(npy)}
    return results  # type: ignore[return-value]  (every slot is filled: a result or an error)
