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

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..data.datasets import LabeledImages
from ..data.loaders import default_workers, labeled_loader
from ..runtime import distributed as dist_mod
from ..runtime.distributed import DistEnv
from ..runtime.files import write_text_atomic
from ..runtime.threads import available_cores, resolve_device, set_compute_threads
from .config import PAPER_BATCH, PAPER_LR, TrainConfig, resolve_recipe
from .control import (
    PeerLostError,
    StopRequest,
    TrainingInterrupted,
    determinism,
    first_line,
    lost_peer,
    stop_on_signals,
)
from .ema import ModelEma
from .loop import EpochState, SeededSamples, evaluate, resolve_amp, train_one_epoch
from .optim import build_optimizer
from .probe import HeadOnly, backbone_features, caches_features
from .records import (
    BAD_IMAGES_FILE,
    CONFUSION_FILE,
    TB_FOLDER,
    TB_TAGS,
    append_jsonl,
    open_tensorboard,
    read_history,
    recording_bad,
    write_bad_images,
)
from .resume import check_resume_config, model_state_dict, rng_state, set_rng_state
from .setup import (
    build_datasets,
    class_balanced_weights,
    compile_model,
    freeze,
    init_model,
    prepare_model,
    preprocess_for,
    resolve_aux,
)
from .state import (
    CHECKPOINT_FORMAT,
    latest_good_checkpoint,
    write_checkpoint,
)

logger = logging.getLogger(__name__)


def shard(dataset: Dataset, env: DistEnv) -> Dataset:
    """This rank's share of an evaluation set: items rank, rank + N, ... (all of it for one process)."""
    if not env.distributed:
        return dataset
    return Subset(dataset, range(env.rank, len(dataset), env.world_size))


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train per `cfg`; returns {"best_acc1", "history", "best_path", "last_path", "config"}.

    Held-out top-1 is measured after every epoch; the best epoch's weights go to best.safetensors.
    Under torchrun this is one rank of a DistributedDataParallel run (only rank 0 writes files).
    SIGTERM/SIGINT end it after the current step with a checkpoint, raising TrainingInterrupted.
    """
    given, cfg = cfg, resolve_recipe(cfg)
    device = resolve_device(cfg.device)
    env = dist_mod.env_from_environ()
    if cfg.recipe == "paper" and cfg.lr != given.lr and cfg.batch_size < 256 and env.rank == 0:
        # Measured on the digits: 9e-4 (batch 32) reaches 57% in 30 epochs, 0.045 reaches 99% in 8.
        logger.info("recipe paper: lr %g x %d / %d = %.2g (scaled to the global batch); on a small "
                    "dataset this learns slowly: --lr %g is the paper's rate for a batch of 32",
                    PAPER_LR, cfg.batch_size, PAPER_BATCH, cfg.lr, PAPER_LR)
    device = dist_mod.local_device(device, env)
    owns_group = env.distributed and not (
        torch.distributed.is_available() and torch.distributed.is_initialized())
    workers = cfg.workers if cfg.workers is not None else default_workers()
    threads = cfg.threads
    if threads is None and env.distributed and not os.environ.get("INCEPTIONV3_NUM_THREADS"):
        threads = max(1, available_cores() - workers)  # torchrun's local processes share the cores
    previous_threads = torch.get_num_threads()
    set_compute_threads(workers, threads)
    try:
        env = dist_mod.setup(device)
        with determinism(cfg.deterministic), stop_on_signals() as stop:
            try:
                return _train(cfg, env, device, workers, stop, progress)
            except Exception as e:
                if not (env.distributed and lost_peer(e)):
                    raise
                out = cfg.resume or cfg.out
                raise PeerLostError(
                    f"rank {env.rank}: another process of this torchrun run stopped ({first_line(e)}); "
                    f"this one stops too. The checkpoints in {out} are intact: once the cause is fixed, "
                    f"run the same command plus --resume {out}") from None
    finally:
        if owns_group:
            dist_mod.teardown()
        torch.set_num_threads(previous_threads)


def _train(cfg: TrainConfig, env: DistEnv, device: torch.device, workers: int, stop: StopRequest,
           progress: bool) -> dict[str, Any]:
    from ..weights.io import save_model

    out = Path(cfg.resume if cfg.resume else cfg.out)
    main = env.is_main
    aux = resolve_aux(cfg)
    torch.manual_seed(cfg.seed)
    resumed, resumed_from = None, None
    if cfg.resume:
        resumed, resumed_from = latest_good_checkpoint(out)
        check_resume_config(resumed["config"], cfg)
    pre = preprocess_for(cfg)
    train_ds, val_ds, classes = build_datasets(cfg, pre)
    if resumed is not None and resumed["class_names"] != classes:
        raise ValueError(f"--resume {out}: the data's classes changed since the run started "
                         f"({resumed['class_names']} -> {classes})")

    sampler = dist_mod.ShardedSampler(len(train_ds), cfg.batch_size, env, seed=cfg.seed,
                                      weights=class_balanced_weights(train_ds) if cfg.balanced else None)
    steps = sampler.steps_per_epoch
    if sampler.local_batch % cfg.accum_steps:
        raise ValueError(f"each process's batch ({sampler.local_batch}) must be divisible by --accum-steps "
                         f"{cfg.accum_steps}")
    for ds in (train_ds, val_ds):   # bad files come back as BadImage (path, reason), for bad_images.txt
        inner = ds.dataset if isinstance(ds, Subset) else ds
        if isinstance(inner, LabeledImages):
            inner.report_bad = True
    net = prepare_model(init_model(cfg, classes, aux), cfg, device)
    frozen = freeze(net, cfg.freeze_until)
    if frozen and main:
        logger.info("frozen (no gradients, batch norms in eval mode): %s ... %s", frozen[0], frozen[-1])
    cached = caches_features(cfg, aux)
    if cached:   # a linear probe: the backbone runs once per image, not once per image and epoch
        start = time.perf_counter()
        train_ds = backbone_features(net, train_ds, cfg, device, workers, env)
        val_ds = backbone_features(net, val_ds, cfg, device, workers, env)
        workers = 0   # the features are in memory
        if main:
            logger.info("linear probe: backbone features of %d + %d images computed once (%.1fs); "
                        "each epoch trains the head on them", len(train_ds), len(val_ds),
                        time.perf_counter() - start)
    train_loader = labeled_loader(train_ds if cached else SeededSamples(train_ds, cfg.seed),
                                           sampler.local_batch // cfg.accum_steps,
                                           shuffle=False, workers=workers, sampler=sampler)
    val_loader = labeled_loader(shard(val_ds, env), cfg.batch_size, shuffle=False, workers=workers)
    model = dist_mod.wrap(HeadOnly(net) if cached else net, env, device, cfg.sync_bn)
    if not cached:
        net = dist_mod.unwrap(model)   # SyncBatchNorm made a new module
    model = compile_model(model, cfg)
    optimizer, scheduler = build_optimizer(net, cfg, steps)
    ema = ModelEma(net, cfg.ema_decay) if cfg.ema_decay > 0 else None
    amp = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    meta = {"arch": cfg.arch, "model_config": dict(net.config), "num_classes": len(classes),
            "class_names": classes, "preprocess": pre.to_dict()}
    best_path, last_path, metrics_path = out / "best.safetensors", out / "last.pt", out / "metrics.jsonl"
    best_acc1, history, done_epochs, epoch_state = -1.0, [], 0, None
    if resumed is not None:
        net.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        if ema is not None:
            ema.load_state_dict(resumed["ema"])
        if scaler is not None:
            scaler.load_state_dict(resumed["scaler"])
        best_acc1, done_epochs = resumed["best_acc1"], resumed["epoch"]
        history = list(resumed.get("history") or read_history(metrics_path, done_epochs))
        same_world = len(resumed.get("rng") or []) == env.world_size
        if resumed.get("epoch_state") is not None:
            if not same_world:
                raise ValueError(f"--resume {out}: the checkpoint is mid-epoch from {len(resumed['rng'])} "
                                 f"processes, now {env.world_size}; resume with the same number")
            epoch_state = EpochState(**{**resumed["epoch_state"][env.rank], "stopped": False})
        if same_world:
            set_rng_state(resumed["rng"][env.rank])
        else:
            torch.manual_seed(cfg.seed + 7919 * done_epochs + env.rank)
        if main:
            logger.info("resuming %s from %s: epoch %d, step %d of %d", out, resumed_from,
                        done_epochs + 1, epoch_state.step if epoch_state else 0, steps)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        # A new run starts the metrics afresh; a resumed one keeps the epochs its checkpoint knows.
        write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
        logger.info(
            "training %s on %s: %d train / %d held-out images, %d classes, %d px%s, %d epochs x %d steps, "
            "device %s (%s%s%s%s), %d process(es), %d threads, %d workers",
            cfg.arch, cfg.data, len(train_ds), len(val_ds), len(classes), cfg.image_size,
            " + aux head" if aux else "", cfg.epochs, steps, device,
            {"off": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[amp],
            ", channels_last" if cfg.channels_last else "",
            ", gradient checkpointing" if cfg.grad_checkpointing else "",
            f", torch.compile {cfg.compile_backend}" if cfg.compile else "",
            env.world_size, torch.get_num_threads(), workers,
        )

    last_saved = [time.monotonic()]

    def checkpoint(epochs_done: int, st: EpochState | None) -> None:
        # Every rank takes part (its RNG state and partial sums are gathered); rank 0 writes.
        last_saved[0] = time.monotonic()
        rngs = dist_mod.gather_objects(rng_state(), env)
        states = dist_mod.gather_objects(st.to_dict(), env) if st is not None else None
        if not main:
            return
        write_checkpoint(out, {
            "format": CHECKPOINT_FORMAT, "model": model_state_dict(net), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epochs_done,
            "step": st.step if st is not None else 0,
            "global_step": epochs_done * steps + (st.step if st is not None else 0),
            "epoch_state": states, "rng": rngs, "world_size": env.world_size, "best_acc1": best_acc1,
            "history": history, "config": cfg.to_dict(), "class_names": classes, "meta": meta,
        }, cfg.keep_last)

    def on_step(st: EpochState) -> None:
        due = bool(cfg.save_every and st.step % cfg.save_every == 0)
        if cfg.save_minutes:   # every rank's clock votes, so that all of them save at the same step
            late = time.monotonic() - last_saved[0] >= 60 * cfg.save_minutes
            due = due or bool(dist_mod.all_reduce([float(late)], env, device, op="max")[0])
        if st.stopped or (due and st.step < steps):
            checkpoint(st.epoch - 1, st)

    tb = open_tensorboard(out / TB_FOLDER) if main else None
    try:
        for epoch in range(done_epochs + 1, cfg.epochs + 1):
            st = epoch_state if epoch_state is not None and epoch_state.epoch == epoch else EpochState(epoch)
            epoch_state = None
            sampler.set_epoch(epoch, st.step)
            tr = train_one_epoch(model, train_loader, optimizer, scheduler, cfg, device, epoch,
                                 progress and main, state=st, env=env, should_stop=lambda: bool(stop),
                                 on_step=on_step, ema=ema, scaler=scaler)
            if tr["stopped"]:
                name = signal.Signals(stop.signum).name if stop.signum else "a stop request"
                message = (f"{name}: stopped after epoch {epoch} step {st.step} of {steps}; checkpoint "
                           f"{last_path}. Resume with the same command plus --resume {out}")
                if main:
                    logger.warning("%s", message)
                raise TrainingInterrupted(message)
            val_bad: list[list[str]] = []
            va = evaluate(ema.module if ema is not None else model, recording_bad(val_loader, val_bad),
                          len(classes), device, cfg.amp, env)
            val_bad = [b for rank in dist_mod.gather_objects(val_bad, env) for b in rank]
            record = {
                "epoch": epoch, "train_loss": tr["loss"], "train_acc1": tr["acc1"], "lr": tr["lr"],
                "val_loss": va["loss"], "val_acc1": va["top1"], "val_acc5": va["top5"],
                "skipped": tr["skipped"] + va["skipped"], "nonfinite_steps": tr["nonfinite"],
                "seconds": tr["seconds"],
            }
            history.append(record)
            improved = va["top1"] > best_acc1
            if improved:
                best_acc1 = va["top1"]
            if main:
                append_jsonl(metrics_path, record)
                write_bad_images(out / BAD_IMAGES_FILE, epoch, tr["bad_images"], val_bad)
                if tb is not None:
                    for key, value in record.items():
                        if key != "epoch":
                            tb.add_scalar(TB_TAGS.get(key, key), value, epoch)
                    tb.flush()
                if improved:
                    save_model(ema.module if ema is not None else net, best_path, class_names=classes,
                               preprocess=pre, extra={"epoch": epoch, "acc1": va["top1"], "acc5": va["top5"]})
                    write_text_atomic(out / CONFUSION_FILE, json.dumps(
                        {"epoch": epoch, "class_names": classes, "top1": va["top1"],
                         "matrix": va["confusion"]}) + "\n")
            checkpoint(epoch, None)
            if main:
                logger.info(
                    "epoch %d/%d  loss %.4f  train top-1 %.2f%%  held-out top-1 %.2f%% top-5 %.2f%%  lr %.2e  "
                    "%.1fs%s%s%s",
                    epoch, cfg.epochs, tr["loss"], tr["acc1"], va["top1"], va["top5"], tr["lr"], tr["seconds"],
                    f"  skipped {record['skipped']} bad images ({BAD_IMAGES_FILE})" if record["skipped"] else "",
                    f"  skipped {tr['nonfinite']} non-finite steps" if tr["nonfinite"] else "",
                    "  (best)" if improved else "",
                )
    finally:
        if tb is not None:
            tb.close()
    dist_mod.barrier(env)
    return {"best_acc1": best_acc1, "history": history, "best_path": str(best_path),
            "last_path": str(last_path), "config": cfg.to_dict()}
