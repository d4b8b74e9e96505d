"""Training: the small-data recipe as small functions, on one process or many (torchrun), crash-safe.

Recipe (works from scratch on a few thousand images, e.g. the embedded digits): AdamW without weight
decay on BN and bias parameters, a one-cycle LR schedule stepped per optimizer step, label smoothing 0.1,
gradient clipping at 2.0, aux loss weighted 0.4 when the aux head is on (only possible at >= 299 px).

A run folder holds: config.json (the TrainConfig, written first), metrics.jsonl (one JSON line per
epoch), last.pt (the newest checkpoint: model, optimizer, scheduler, every rank's RNG states, epoch and
step within it, partial epoch sums, history, config, class names, and a digest of it all), checkpoints/
(the last `keep_last` checkpoints, hard links named by global step), best.safetensors (the best
held-out top-1 so far, with class names and preprocessing, loadable by `weights.load_model`),
confusion.json (that epoch's held-out confusion matrix), bad_images.txt (images skipped, when any) and
tensorboard/ (event files, when tensorboard is installed). Checkpoint files are handled by `checkpoint.py`.

By default the step runs in bf16 autocast where the hardware has native bf16 (`--amp auto`) on
channels-last tensors; `--grad-checkpointing` trades compute for memory and `--compile` runs the forward
through torch.compile. A linear probe computes the frozen backbone's features once (`cache_features`).

Checkpoints are written atomically every epoch and every `save_every` steps; `resume` continues from the
newest one that loads and matches its digest. The data order is a pure function of (seed, epoch) and each
sample's augmentation of (seed, epoch, index), so a resumed or multi-process run sees exactly the batches
an uninterrupted single-process run sees.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..runtime import distributed as dist_mod
from ..runtime.distributed import DistEnv
from ..tasks.evaluate import evaluate_model
from .config import TrainConfig
from .ema import ModelEma
from .setup import set_train_mode, unwrap_compiled

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf: the run diverged (usually the learning rate is too high)."""


def compute_loss(logits: torch.Tensor, aux: torch.Tensor | None, labels: torch.Tensor,
                 cfg: TrainConfig) -> torch.Tensor:
    """Label-smoothed cross-entropy, plus the aux head's weighted by cfg.aux_weight."""
    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    if aux is not None:
        loss = loss + cfg.aux_weight * F.cross_entropy(aux, labels, label_smoothing=cfg.label_smoothing)
    return loss


@dataclass
class EpochState:
    """Where an epoch is and what it has summed so far (this rank's share); saved in mid-epoch checkpoints.

    `step` counts batches taken from the sampler (its position), including skipped ones.
    """

    epoch: int = 1
    step: int = 0
    updates: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    n: int = 0
    skipped: int = 0
    nonfinite: int = 0
    bad_images: list[list[str]] = field(default_factory=list)   # [path, reason] of each skipped image
    lr: float = float("nan")
    seconds: float = 0.0
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SeededSamples(Dataset):
    """Items `(epoch, index)` -> `dataset[index]` with torch's RNG seeded from (seed, epoch, index).

    Each sample's augmentation then depends on nothing but the run seed, the epoch and the sample: not
    on the worker that decodes it, the rank that trains on it, or whether the run was resumed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        epoch, i = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF_FFFF_FFFF)
            return self.dataset[i]


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    cfg: TrainConfig,
    device: torch.device,
    epoch: int = 1,
    progress: bool = True,
    *,
    state: EpochState | None = None,
    env: DistEnv = dist_mod.SINGLE_PROCESS,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[EpochState], None] | None = None,
    ema: ModelEma | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """One pass over `loader`; returns mean loss, train top-1 (%), last lr, images, skipped and time.

    Raises NonFiniteLossError (step, loss, lr) before a diverged step touches the weights, unless
    `cfg.skip_nonfinite`, which skips the step and counts it. `state` continues a resumed epoch;
    `on_step` runs after every batch (checkpoints); `should_stop()` true ends the epoch after the
    current step with `stopped` set. Under torchrun every decision to skip or stop is agreed by all
    ranks, and the returned sums are over all ranks.
    """
    from tqdm.auto import tqdm

    set_train_mode(model, cfg)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    st = state if state is not None else EpochState(epoch=epoch)
    start = time.perf_counter() - st.seconds
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False, unit="batch")
    net = unwrap_compiled(model)
    for group in _chunks(bar, cfg.accum_steps):   # accum_steps loader batches make one optimizer step
        st.skipped += sum(int(bad) for _, _, bad in group)
        st.bad_images += [[b.path, b.reason] for _, _, bad in group for b in getattr(bad, "images", ())]
        st.step += 1
        # BN needs 2+ samples in train mode (Mixed_7c is 1x1 at 75 px); a batch that lost images to
        # decode failures can fall below that and is skipped (by every rank, or DDP would hang).
        small = any(labels.numel() < 2 for _, labels, _ in group)
        (too_small,) = dist_mod.all_reduce([float(small)], env, device, op="max")
        if too_small:
            st.stopped = bool(should_stop and should_stop())
            if on_step:
                on_step(st)
            if st.stopped:
                break
            continue
        total = sum(labels.numel() for _, labels, _ in group)
        optimizer.zero_grad(set_to_none=True)
        loss_value, correct = 0.0, 0
        for j, (images, labels, _) in enumerate(group):
            # (a cached linear probe's batches are N x features: no layout to choose)
            images = images.to(device, non_blocking=True,
                               memory_format=layout if images.dim() == 4 else torch.contiguous_format)
            labels = labels.to(device, non_blocking=True)
            # Under DDP the gradients are all-reduced once, in the last micro-batch's backward.
            last = j == len(group) - 1
            sync = last or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync():
                with autocast(device, cfg.amp):
                    # DDP and compiled models wrap forward_train: calling them gives the tuple too.
                    logits, aux = net.forward_train(images) if model is net else model(images)
                    loss = compute_loss(logits, aux, labels, cfg) * (labels.numel() / total)
                # A non-finite loss only makes gradients that are dropped below.
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_value += loss.item()
            correct += int((logits.detach().argmax(1) == labels).sum())
        st.lr = optimizer.param_groups[0]["lr"]
        nonfinite, stop = dist_mod.all_reduce(
            [float(not math.isfinite(loss_value)), float(bool(should_stop and should_stop()))],
            env, device, op="max")
        st.stopped = bool(stop)
        if nonfinite:
            optimizer.zero_grad(set_to_none=True)
            where = f"epoch {epoch}, step {st.step} (lr {st.lr:.3g})"
            if not cfg.skip_nonfinite:
                raise NonFiniteLossError(
                    f"loss is {loss_value} at {where}; training stopped and the checkpoints of earlier "
                    f"steps are kept. Lower --lr (now {cfg.lr:g}), check the data, or pass "
                    "--skip-nonfinite to skip such steps."
                )
            st.nonfinite += 1
            logger.warning("loss is %s at %s: step skipped (%d so far)", loss_value, where, st.nonfinite)
        else:
            if scaler is not None:
                scaler.unscale_(optimizer)   # clip the true gradients
            if cfg.clip_grad > 0:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
            stepped = True
            if scaler is None:
                optimizer.step()
            else:   # fp16: the scaler skips steps whose gradients overflowed, and lowers its scale
                scale = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                stepped = scaler.get_scale() >= scale
            if stepped:
                scheduler.step()
                if ema is not None:
                    ema.update(net)
            st.updates += 1
            st.loss_sum += loss_value * total
            st.correct += correct
            st.n += total
        st.seconds = time.perf_counter() - start
        images_per_s = st.n * env.world_size / st.seconds if st.seconds > 0 else 0.0   # ranks: about equal
        bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{st.lr:.2e}", img_s=f"{images_per_s:.1f}",
                        refresh=False)
        if on_step:
            on_step(st)
        if st.stopped:
            break
    bar.close()
    st.seconds = time.perf_counter() - start
    bad_images = [b for rank in dist_mod.gather_objects(st.bad_images, env) for b in rank]
    loss_sum, correct, n, skipped = dist_mod.all_reduce(
        [st.loss_sum, float(st.correct), float(st.n), float(st.skipped)], env, device)
    return {
        "loss": loss_sum / n if n else float("nan"),
        "acc1": 100.0 * correct / n if n else 0.0,
        "lr": st.lr if math.isfinite(st.lr) else optimizer.param_groups[0]["lr"],
        "images": int(n),
        "skipped": int(skipped),
        "bad_images": bad_images,
        "steps": st.updates,
        "nonfinite": st.nonfinite,
        "seconds": st.seconds,
        "stopped": st.stopped,
    }


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: CUDA GPUs with bf16 (Ampere on), CPUs with AMX or
    AVX512-BF16 instructions. Elsewhere bf16 is emulated and no faster than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)   # cpuinfo's answers (torch >= 2.8)
    if capabilities is not None:
        caps = capabilities()
        return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def resolve_amp(amp: str, device: torch.device) -> str:
    """`--amp auto` -> "bf16" where the device has native bf16, else "off"; other values as given.

    bf16 keeps fp32's exponent range, so it needs no loss scaling; on the digits it keeps the accuracy
    target (within 3 of 450 held-out images of fp32; see the README). fp16 is never chosen automatically."""
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(device) else "off"


def autocast(device: torch.device, amp: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_amp(amp, device))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _chunks(items, k: int) -> Iterator[list]:
    group = []
    for item in items:
        group.append(item)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device, amp: str = "off",
             env: DistEnv = dist_mod.SINGLE_PROCESS) -> dict[str, Any]:
    """Held-out metrics for the epoch line (top-1/top-5 in %, loss, skipped images, confusion matrix as
    nested lists: rows true class, columns predicted).

    Under torchrun each rank passes a loader over its shard (`shard`) and gets the totals over all."""
    net = unwrap_compiled(model)
    with autocast(device, amp):
        r = evaluate_model(net, loader, num_classes, device)
    if not env.distributed:
        return {**{k: r[k] for k in ("top1", "top5", "loss", "n", "skipped")},
                "confusion": r["confusion"].tolist()}
    n = r["n"]
    top1, top5, loss, n, skipped = dist_mod.all_reduce(
        [round(r["top1"] * n / 100), round(r["top5"] * n / 100), r["loss"] * n if n else 0.0, n,
         r["skipped"]], env, device)
    confusion = dist_mod.all_reduce(r["confusion"].reshape(-1).tolist(), env, device)
    k = num_classes
    return {"top1": 100.0 * top1 / n if n else 0.0, "top5": 100.0 * top5 / n if n else 0.0,
            "loss": loss / n if n else float("nan"), "n": int(n), "skipped": int(skipped),
            "confusion": [[int(v) for v in confusion[i * k: (i + 1) * k]] for i in range(k)]}
