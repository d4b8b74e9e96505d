"""One epoch of training: the optimizer step (micro-batches, autocast, clipping, the fp16 scaler, the
EMA), the per-sample seeding of augmentation, and where an epoch is (`EpochState`, saved mid-epoch).

`train_one_epoch` runs the steps; each decision that must be the same on every rank (skip a too-small
batch, drop a non-finite step, stop) is agreed through an all-reduce, so DDP never waits on a rank that
went another way. The held-out evaluation after the epoch is `tasks.evaluate.evaluate_model`, in fp32.
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
from tqdm.auto import tqdm

from ..runtime import distributed as dist_mod
from ..runtime.distributed import DistEnv
from .amp import AmpChoice, autocast, resolve_amp
from .config import TrainConfig
from .control import TrainingFailed
from .ema import ModelEma
from .setup import set_train_mode, unwrap_compiled

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError, TrainingFailed):
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


@dataclass
class Stepper:
    """What an optimizer step works on: `model` is what the step calls (the network, or its DDP / compile
    wrapper, whose forward gives (logits, aux)); `net` the network inside, whose weights are clipped."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: TrainConfig
    device: torch.device
    env: DistEnv = dist_mod.SINGLE_PROCESS
    ema: ModelEma | None = None
    scaler: torch.amp.GradScaler | None = None
    amp: AmpChoice | None = None   # the precision of each step; None: the static rule for cfg.amp

    def __post_init__(self) -> None:
        if self.amp is None:
            self.amp = AmpChoice(resolve_amp(self.cfg.amp, self.device))


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
    amp: AmpChoice | None = None,
) -> dict[str, Any]:
    """One pass over `loader`; returns mean loss, train top-1 (%), last lr, images, skipped and time.

    Raises NonFiniteLossError (step, loss, lr) before a diverged step touches the weights, unless
    `cfg.skip_nonfinite`, which skips the step and counts it. `state` continues a resumed epoch;
    `on_step` runs after every batch (checkpoints); `should_stop()` true ends the epoch after the
    current step with `stopped` set. `amp` gives each step's precision and is told each step's time
    (without it, the static rule for `cfg.amp`). Under torchrun every decision to skip or stop is
    agreed by all ranks, and the returned sums are over all ranks.
    """
    set_train_mode(model, cfg)
    step = Stepper(model, unwrap_compiled(model), optimizer, scheduler, cfg, device, env, ema, scaler, amp)
    st = state if state is not None else EpochState(epoch=epoch)
    start = time.perf_counter() - st.seconds
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False, unit="batch")
    for group in _chunks(bar, cfg.accum_steps):   # accum_steps loader batches make one optimizer step
        st.skipped += sum(int(bad) for _, _, bad in group)
        st.bad_images += [[b.path, b.reason] for _, _, bad in group for b in getattr(bad, "images", ())]
        st.step += 1
        if _too_small(group, env, device):
            st.stopped = bool(should_stop and should_stop())
        else:
            t0 = time.perf_counter()
            loss_value = optimizer_step(step, group, st, should_stop)
            step.amp.observe(time.perf_counter() - t0, env, device)
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
    return epoch_totals(st, optimizer, env, device)


def _too_small(group: list, env: DistEnv, device: torch.device) -> bool:
    """BN needs 2+ samples in train mode (Mixed_7c is 1x1 at 75 px); a batch that lost images to decode
    failures can fall below that and is skipped (by every rank, or DDP would hang)."""
    small = any(labels.numel() < 2 for _, labels, _ in group)
    (too_small,) = dist_mod.all_reduce([float(small)], env, device, op="max")
    return bool(too_small)


def optimizer_step(step: Stepper, group: list, st: EpochState,
                   should_stop: Callable[[], bool] | None = None) -> float:
    """One optimizer step over the micro-batches `group`, counted into `st`; returns the step's loss.

    A non-finite loss (on any rank) drops the gradients: NonFiniteLossError, or with `skip_nonfinite`
    a counted skip. `st.stopped` is set when any rank's `should_stop()` is true."""
    cfg, optimizer = step.cfg, step.optimizer
    total = sum(labels.numel() for _, labels, _ in group)
    optimizer.zero_grad(set_to_none=True)
    loss_value, correct = forward_backward(step, group, total)
    st.lr = optimizer.param_groups[0]["lr"]
    nonfinite, stop = dist_mod.all_reduce(
        [float(not math.isfinite(loss_value)), float(bool(should_stop and should_stop()))],
        step.env, step.device, op="max")
    st.stopped = bool(stop)
    if nonfinite:
        optimizer.zero_grad(set_to_none=True)
        where = f"epoch {st.epoch}, step {st.step} (lr {st.lr:.3g})"
        if not cfg.skip_nonfinite:
            raise NonFiniteLossError(
                f"loss is {loss_value} at {where}: the run diverged and stopped before that step "
                f"changed the weights. Lower --lr (now {cfg.lr:g}) or clip harder with --clip-grad (now "
                f"{cfg.clip_grad:g}), check the data, or pass --skip-nonfinite to skip such steps."
            )
        st.nonfinite += 1
        logger.warning("loss is %s at %s: step skipped (%d so far)", loss_value, where, st.nonfinite)
        return loss_value
    apply_gradients(step)
    st.updates += 1
    st.loss_sum += loss_value * total
    st.correct += correct
    st.n += total
    return loss_value


def forward_backward(step: Stepper, group: list, total: int) -> tuple[float, int]:
    """Forward and backward of each micro-batch, its loss weighted by its share of the `total` images;
    returns the summed loss and the correct top-1 count. Under DDP the gradients are all-reduced once, in
    the last micro-batch's backward."""
    model, net, cfg, device = step.model, step.net, step.cfg, step.device
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    loss_value, correct = 0.0, 0
    for j, (images, labels, _) in enumerate(group):
        # (a cached linear probe's batches are N x features: no layout to choose)
        images = images.to(device, non_blocking=True,
                           memory_format=layout if images.dim() == 4 else torch.contiguous_format)
        labels = labels.to(device, non_blocking=True)
        sync = j == len(group) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast(device, step.amp.current):
                # DDP and compiled models wrap forward_train: calling them gives the tuple too.
                logits, aux = net.forward_train(images) if model is net else model(images)
                loss = compute_loss(logits, aux, labels, cfg) * (labels.numel() / total)
            # A non-finite loss only makes gradients that are dropped before they are applied.
            (step.scaler.scale(loss) if step.scaler is not None else loss).backward()
        loss_value += loss.item()
        correct += int((logits.detach().argmax(1) == labels).sum())
    return loss_value, correct


def apply_gradients(step: Stepper) -> None:
    """Clip and apply the gradients; then the LR schedule and the EMA advance, unless fp16's scaler
    skipped the step (its gradients overflowed; it lowers its scale)."""
    optimizer, scaler = step.optimizer, step.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)   # clip the true gradients
    if step.cfg.clip_grad > 0:
        nn.utils.clip_grad_norm_(step.net.parameters(), step.cfg.clip_grad)
    stepped = True
    if scaler is None:
        optimizer.step()
    else:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= scale
    if stepped:
        step.scheduler.step()
        if step.ema is not None:
            step.ema.update(step.net)


def epoch_totals(st: EpochState, optimizer: torch.optim.Optimizer, env: DistEnv,
                 device: torch.device) -> dict[str, Any]:
    """The epoch's numbers over all ranks: what `train_one_epoch` returns."""
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


def _chunks(items, k: int) -> Iterator[list]:
    """`items` in lists of `k` (the last one shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group
