"""Loading weights into a network: a registry name or a file, with one error that lists the missing,
unexpected and mis-shaped keys and hints at the fix (``apply_state_dict``), and the model's ``meta``
(class names, preprocessing, source) from the file, its registry entry, or a logged guess."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.builder import ARCHS, build_model
from .errors import WeightsError
from .hub import fetch_verified, sha256_file, sha_matches
from .io import ModelMeta, read_state_dict
from .preprocess import Preprocess
from .registry import REGISTRY, WeightsEntry, imagenet_class_names

log = logging.getLogger(__name__)

# The first conv, whose input channels say in_chans, and the classifier, whose rows say num_classes.
_FIRST_CONV = {"inception_v3": "Conv2d_1a_3x3.conv.weight", "inception_mini": "conv1.weight"}
_CLASSIFIER = "fc.weight"
_HEADS = ("fc.", "AuxLogits.")   # what differs between files of one arch: the class count, the aux head


@cache
def _signature(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an arch's backbone (heads left out), from a model built on the meta device: what
    identifies a file's network, where a single key name (conv1.weight) is common to many."""
    kwargs = {"aux_logits": False, "init_weights": False} if arch == "inception_v3" else {}
    with torch.device("meta"):
        model = build_model(arch, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(_HEADS)}


def _fit(sd: Mapping[str, torch.Tensor], arch: str) -> float:
    """The share of ``arch``'s backbone tensors the file holds under the same name and shape (the first
    conv's input channels aside), less the share of the file's backbone keys the arch lacks."""
    sig = _signature(arch)
    first = _FIRST_CONV.get(arch)

    def same(key: str) -> bool:
        got = tuple(sd[key].shape)
        want = sig[key]
        if key == first and len(got) == len(want) == 4:
            return got[0] == want[0] and got[2:] == want[2:]
        return got == want

    found = sum(1 for k in sig if k in sd and same(k))
    foreign = sum(1 for k in sd if k not in sig and not k.startswith(_HEADS))
    return found / len(sig) - foreign / max(1, len(sd))


def _resolve(name_or_path: str | os.PathLike, progress: bool = True
             ) -> tuple[Path, WeightsEntry | None, str, str | None]:
    """(local file, registry entry or None, source label, sha256 if already known). Registry names win
    over same-named paths (a dataset folder called 'imagenet' is common); pass a Path to force a file."""
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        entry = REGISTRY[name_or_path]
        path, digest = fetch_verified(entry, progress)
        return path, entry, name_or_path, digest
    path = Path(name_or_path)
    if not path.is_file():
        raise WeightsError(f"{name_or_path}: no such weights file, and not a known weights name "
                           f"(known: {', '.join(REGISTRY)})")
    return path, None, str(path), None


def entry_for_sha(digest: str) -> WeightsEntry | None:
    """The registry entry whose published sha256 (or prefix) this full digest matches, if any."""
    return next((e for e in REGISTRY.values() if sha_matches(e.sha256, digest)), None)


def guess_preprocess(source: str) -> Preprocess:
    """The ImageNet preset for weights that do not say how their inputs were preprocessed, with a
    warning naming ``source``: results may be off, and the user should know why."""
    log.warning("%s does not say how its inputs were preprocessed; guessing the ImageNet preset "
                "(resize 342, crop 299, mean=std=0.5). Results may be off if that is wrong.", source)
    return REGISTRY["imagenet"].preprocess


def first_keys(keys: list[str], n: int = 5) -> str:
    """The first ``n`` keys, comma-separated, and how many more there are: a key list for an error."""
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _adapt_in_chans(sd: dict[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor],
                    arch: str) -> dict[str, torch.Tensor]:
    key = _FIRST_CONV.get(arch)
    if key is None or key not in sd or key not in model_sd:
        return sd
    w, want = sd[key], model_sd[key]
    if w.ndim == 4 and w.shape[1] == 3 and want.shape[1] == 1 and w.shape[0] == want.shape[0]:
        # A gray image fed to an RGB net is the gray plane replicated three times, and a conv is linear in
        # its input channels, so summing the RGB kernels gives a 1-channel net with the same outputs.
        sd = dict(sd)
        sd[key] = w.sum(dim=1, keepdim=True)
        log.info("summed the RGB kernels of %s for a 1-channel model", key)
    return sd


def _mismatch(sd: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor]
              ) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    misshaped = [k for k in sd if k in model_sd and sd[k].shape != model_sd[k].shape]
    return missing, unexpected, misshaped


def _hint(sd: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor], arch: str,
          missing: list[str], unexpected: list[str], misshaped: list[str]) -> str:
    hints = []
    guess = _infer_arch(sd)
    if guess is not None and guess != arch or guess is None and len(missing) > len(model_sd) // 2:
        looks = f", the file looks like {guess}" if guess else ", and the file matches no known network"
        hints.append(f"wrong --arch? the model is {arch}{looks}")
    elif _CLASSIFIER in misshaped:
        file_fc, model_fc = sd[_CLASSIFIER].shape, model_sd[_CLASSIFIER].shape
        if file_fc[0] != model_fc[0]:
            hints.append(f"class count differs (file {file_fc[0]}, model {model_fc[0]}): use --num-classes "
                         f"or reset the classifier")
        if file_fc[1:] != model_fc[1:]:
            hints.append(f"the classifier's input width differs (file {tuple(file_fc[1:])}, model "
                         f"{tuple(model_fc[1:])}): the file is for another network")
    if any(k.startswith("AuxLogits.") for k in unexpected):
        hints.append("the file has an aux head: build with aux_logits=True, or load non-strict to drop it")
    if any(k.startswith("AuxLogits.") for k in missing) and not any(k.startswith("AuxLogits.") for k in sd):
        hints.append("the file has no aux head: build with aux_logits=False")
    conv = _FIRST_CONV.get(arch)
    if conv in misshaped:
        hints.append(f"input channels differ (file {sd[conv].shape[1]}, model {model_sd[conv].shape[1]})")
    return "; ".join(hints)


def key_report(headline: str, missing: list[str], unexpected: list[str], misshaped: list[str],
               unexpected_where: str = "the model") -> list[str]:
    """The lines of a key-mismatch error: the headline, then each non-empty group with a count and the
    first few names (``misshaped`` may carry the shapes already)."""
    lines = [headline]
    for count, what in ((missing, "missing from the file"), (unexpected, f"not in {unexpected_where}"),
                        (misshaped, "mis-shaped")):
        if count:
            lines.append(f"  {what} ({len(count)}): {first_keys(count)}")
    return lines


def apply_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], label: str, strict: bool,
                      skip_prefixes: tuple[str, ...] = ()) -> None:
    """Copy ``sd`` into ``model`` after checking every key and shape.

    strict: any missing, unexpected or mis-shaped key is an error. Non-strict: only matching tensors are
    loaded and the rest is logged (fine-tuning with a new head). ``skip_prefixes`` are keys the caller
    replaces on purpose (a classifier for another class count) and are left out either way.
    """
    arch = getattr(model, "arch", "inception_v3")
    model_sd = model.state_dict()
    sd = _adapt_in_chans(sd, model_sd, arch)
    if skip_prefixes:
        sd = {k: v for k, v in sd.items() if not k.startswith(skip_prefixes)}
        model_sd = {k: v for k, v in model_sd.items() if not k.startswith(skip_prefixes)}
    missing, unexpected, misshaped = _mismatch(sd, model_sd)
    if missing or unexpected or misshaped:
        shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}" for k in misshaped]
        lines = key_report(f"{label}: the weights do not fit this {arch} model", missing, unexpected, shapes)
        hint = _hint(sd, model_sd, arch, missing, unexpected, misshaped)
        if hint:
            lines.append(f"  hint: {hint}")
        if strict:
            raise WeightsError("\n".join(lines))
        log.warning("loading non-strict, left at their initial values or ignored:\n%s", "\n".join(lines[1:]))
        sd = {k: v for k, v in sd.items() if k in model_sd and k not in misshaped}
    model.load_state_dict(sd, strict=False)


def _meta_for(meta: dict, entry: WeightsEntry | None, arch: str, model_config: dict, num_classes: int,
              source: str, digest: str | None, keep_names: bool = True) -> ModelMeta:
    """The file's own metadata first, then its registry entry's, then a logged guess for preprocessing."""
    if meta.get("preprocess") is not None:
        try:
            preprocess = Preprocess.from_dict(meta["preprocess"])
        except (ValueError, TypeError) as e:
            raise WeightsError(f"{source}: unusable preprocess metadata {meta['preprocess']!r}: {e}"
                               ) from None
    elif entry is not None:
        preprocess = entry.preprocess
    else:
        preprocess = guess_preprocess(source)
    names = meta.get("class_names") if keep_names else None
    if names is None and keep_names and entry is not None and entry.num_classes == num_classes:
        names = entry.categories()
    if names is None and keep_names and entry is None and not meta and arch == "inception_v3":
        names = imagenet_class_names(num_classes)   # a bare torchvision/timm state dict
        if names is not None:
            log.info("%s: a bare 1000-class state dict; using the ImageNet class names", source)
    if names is not None and len(names) != num_classes:
        log.warning("%s: %d class names for %d classes; ignoring the names", source, len(names), num_classes)
        names = None
    return ModelMeta(arch=arch, num_classes=num_classes, model_config=dict(model_config),
                     preprocess=preprocess,
                     class_names=list(names) if names is not None else None, source=source, sha256=digest)


def _read(name_or_path: str | os.PathLike, progress: bool = True
          ) -> tuple[dict[str, torch.Tensor], dict, WeightsEntry | None, str, str]:
    """(state dict, metadata, registry entry by name or by hash, source label, sha256)."""
    path, entry, source, digest = _resolve(name_or_path, progress)
    sd, meta = read_state_dict(path)
    if digest is None:
        digest = sha256_file(path)
    if entry is None:
        entry = entry_for_sha(digest)
        if entry is not None:
            log.info("%s is the registry's %r weights (sha256 %s)", path, entry.name, digest[:12])
    return sd, meta, entry, source, digest


def load_weights(model: nn.Module, name_or_path: str | os.PathLike, strict: bool = True) -> ModelMeta:
    """Load a registry name or weights file into ``model``; returns (and sets ``model.meta``) its ModelMeta.

    A 3-channel first conv is summed into a 1-channel model's. Any key or shape mismatch raises one
    WeightsError listing the missing, unexpected and mis-shaped keys; ``strict=False`` loads what fits.
    """
    sd, meta, entry, source, digest = _read(name_or_path)
    apply_state_dict(model, sd, source, strict)
    arch = getattr(model, "arch", "inception_v3")
    config = dict(getattr(model, "config", {}))
    num_classes = int(getattr(model, "num_classes", config.get("num_classes", 0)))
    model.meta = _meta_for(meta, entry, arch, config, num_classes, source, digest)
    return model.meta


def _infer_arch(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The arch whose backbone signature (key names and shapes) the file fits best, if it fits more than
    half of one."""
    score, arch = max((_fit(sd, a), a) for a in ARCHS)
    return arch if score > 0.5 else None


def infer_config(sd: Mapping[str, torch.Tensor], label: str) -> tuple[str, dict]:
    """(arch, constructor kwargs) of a bare torchvision/timm/our state dict, from its keys and shapes."""
    arch = _infer_arch(sd)
    if arch is None or _CLASSIFIER not in sd or _FIRST_CONV[arch] not in sd or sd[_CLASSIFIER].ndim != 2:
        raise WeightsError(f"{label}: does not look like an InceptionV3 state dict (its keys and shapes fit "
                           f"neither {' nor '.join(ARCHS)}, or it has no {_CLASSIFIER!r}; first keys: "
                           f"{list(sd)[:5]})")
    config: dict[str, Any] = {"num_classes": int(sd[_CLASSIFIER].shape[0]),
                              "in_chans": int(sd[_FIRST_CONV[arch]].shape[1])}
    if arch == "inception_v3":
        config["aux_logits"] = any(k.startswith("AuxLogits.") for k in sd)
    return arch, config


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
               progress: bool = True, **overrides: Any) -> nn.Module:
    """Build a model from a registry name or weights file and load it, in eval mode, with ``model.meta``.

    The arch and config come from the registry entry, our .safetensors metadata, or (bare torchvision/timm
    state dicts) the tensor shapes. ``overrides`` are constructor kwargs (and ``arch``); a different
    ``num_classes`` keeps the backbone and starts a fresh classifier, ``aux_logits=False`` drops the aux head.
    """
    sd, meta, entry, source, digest = _read(name_or_path, progress)
    if meta.get("arch") is not None:
        arch, config = str(meta["arch"]), dict(meta.get("model_config") or {})
        if meta.get("num_classes") is not None:
            config["num_classes"] = int(meta["num_classes"])
    elif entry is not None:
        arch, config = entry.arch, entry.config()
    else:
        arch, config = infer_config(sd, source)
    file_arch, file_classes = arch, config.get("num_classes")
    arch = overrides.pop("arch", None) or arch
    if arch != file_arch:
        # The file's other options belong to another network; keep what every arch shares, and let the
        # strict load below report the mismatch with a "wrong --arch?" hint.
        config = {k: v for k, v in config.items() if k in ("num_classes", "in_chans")}
    config.update(overrides)

    skip: tuple[str, ...] = ()
    new_head = file_classes is not None and config.get("num_classes", file_classes) != file_classes
    if new_head:
        skip = ("fc.", "AuxLogits.fc.")
        log.info("%s: fresh %d-class classifier (the file has %d classes)", source, config["num_classes"],
                 file_classes)
    if config.get("aux_logits") is False:
        sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}

    build_kwargs = dict(config)
    if arch == "inception_v3":
        build_kwargs["init_weights"] = False   # every tensor is about to be overwritten
    try:
        model = build_model(arch, **build_kwargs)
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{source}: cannot build {arch} with {config}: {e}") from None
    apply_state_dict(model, sd, source, strict=True, skip_prefixes=skip)
    model.meta = _meta_for(meta, entry, arch, dict(model.config), model.num_classes, source, digest,
                           keep_names=not new_head)
    return model.to(device).eval()
