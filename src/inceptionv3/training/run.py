"""`train`: one training run as a sequence of named steps over one explicit `Run`.

`train` checks the run folder (a folder holding a run needs --resume or --overwrite), resolves the
recipe and the input size, and sets up the process (threads, the torchrun group, signal handlers,
determinism); `run_training` then finds the checkpoint to resume, builds the run (data, network,
loaders, optimizer), restores it from that checkpoint, starts the run folder, and trains epoch by epoch:
train, evaluate held-out in fp32 (`tasks.evaluate.evaluate_model`), record, checkpoint. The checkpoint is
a `state.TrainState`, captured from the run by `capture_state` and put back by `restore`. Only rank 0
writes files, and logs progress.

A run folder holds config.json (the resolved TrainConfig, written first), metrics.jsonl (one line per
finished epoch), last.pt and checkpoints/ (see `state`), best.safetensors (the best held-out top-1 so far,
loadable by `weights.load_model`), confusion.json, bad_images.txt and tensorboard/ (see `records`).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.datasets import LabeledImages
from ..data.loaders import default_workers, labeled_loader
from ..runtime import distributed as dist_mod
from ..runtime.distributed import DistEnv
from ..runtime.files import write_text_atomic
from ..runtime.threads import available_cores, resolve_device, set_compute_threads
from ..tasks.evaluate import evaluate_model
from ..weights.io import save_model
from ..weights.preprocess import Preprocess
from .amp import TIMING, TRIAL_ORDER, AmpChoice, amp_choice
from .config import PAPER_BATCH, PAPER_LR, TrainConfig, resolve_recipe
from .control import (
    PeerLostError,
    StopRequest,
    TrainingFailed,
    TrainingInterrupted,
    determinism,
    first_line,
    lost_peer,
    main_rank_logs,
    stop_on_signals,
)
from .ema import ModelEma
from .loop import EpochState, NonFiniteLossError, SeededSamples, train_one_epoch
from .optim import build_optimizer
from .probe import HeadOnly, backbone_features, caches_features
from .records import (
    BAD_IMAGES_FILE,
    CONFUSION_FILE,
    TB_FOLDER,
    TB_TAGS,
    open_tensorboard,
    read_history,
    recording_bad,
    remove_run_files,
    run_files,
    write_bad_images,
    write_jsonl,
    writing,
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
    resolve_image_size,
    unwrap_compiled,
)
from .state import TrainState, prune_step_weights, step_weights_path

logger = logging.getLogger(__name__)

AMP_NAMES = {"off": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast",
             TIMING: f"bf16 autocast or fp32, the faster over its first {len(TRIAL_ORDER)} steps"}


@dataclass
class Run:
    """One training run: what `build_run` set up, and what changes as the epochs go (below `workers`)."""

    cfg: TrainConfig
    env: DistEnv
    device: torch.device
    out: Path
    pre: Preprocess
    classes: list[str]
    aux: bool
    net: nn.Module                # the network, unwrapped: what checkpoints and best.safetensors hold
    model: nn.Module              # what the step calls: the network (or the probe's head) in DDP / compile
    sampler: dist_mod.ShardedSampler
    train_loader: DataLoader
    val_loader: DataLoader        # this rank's block of the held-out images
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: ModelEma | None
    scaler: torch.amp.GradScaler | None
    amp: AmpChoice                # each step's precision: off, bf16 or fp16, or still timing
    images: tuple[int, int]       # training and held-out images
    workers: int
    best_acc1: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    done_epochs: int = 0
    resume_at: EpochState | None = None   # the mid-epoch position a checkpoint gave
    last_saved: float = field(default_factory=time.monotonic)

    @property
    def steps(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def evaluated(self) -> nn.Module:
        """What the held-out images run through: the EMA's weights, else the network (the probe's head)."""
        return self.ema.module if self.ema is not None else unwrap_compiled(self.model)

    @property
    def evaluated_net(self) -> nn.Module:
        """The whole network whose held-out numbers are reported: the EMA's, else the trained one."""
        return self.ema.module if self.ema is not None else self.net

    @property
    def best_path(self) -> Path:
        return self.out / "best.safetensors"

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def weights_meta(self) -> dict[str, Any]:
        """The network as a weights file describes it (so that `load_model` reads last.pt too)."""
        return {"arch": self.cfg.arch, "model_config": dict(self.net.config), "num_classes": len(self.classes),
                "class_names": self.classes, "preprocess": self.pre.to_dict()}

    def result(self) -> dict[str, Any]:
        return {"best_acc1": self.best_acc1, "history": self.history, "best_path": str(self.best_path),
                "last_path": str(self.last_path), "config": self.cfg.to_dict()}


def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train per `cfg`; returns {"best_acc1", "history", "best_path", "last_path", "config"}.

    Held-out top-1 is measured after every epoch; the best epoch's weights go to best.safetensors.
    Under torchrun this is one rank of a DistributedDataParallel run (only rank 0 writes files).
    SIGTERM/SIGINT end it after the current step with a checkpoint, raising TrainingInterrupted.
    """
    env = dist_mod.env_from_environ()
    check_run_folder(cfg)
    with main_rank_logs(env.is_main):
        return _train(cfg, env, progress)


def _train(cfg: TrainConfig, env: DistEnv, progress: bool) -> dict[str, Any]:
    given, cfg = cfg, resolve_image_size(resolve_recipe(cfg))
    device = resolve_device(cfg.device)
    if cfg.recipe == "paper" and cfg.lr != given.lr and cfg.batch_size < 256 and env.rank == 0:
        # On the digits the scaled rate learns far slower than 0.045 (benchmarks/accuracy_digits.py).
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
                return run_training(cfg, env, device, workers, stop, progress)
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


def run_training(cfg: TrainConfig, env: DistEnv, device: torch.device, workers: int, stop: StopRequest,
                 progress: bool) -> dict[str, Any]:
    """The run's steps, in order, in a process `train` has set up."""
    torch.manual_seed(cfg.seed)
    resumed = find_checkpoint(cfg)
    run = build_run(cfg, env, device, workers, resumed[0] if resumed else None)
    if resumed is not None:
        restore(run, *resumed)
    start_run_folder(run)
    train_epochs(run, stop, progress)
    dist_mod.barrier(env)
    return run.result()


# -- set-up ---------------------------------------------------------------------------------------------

def check_run_folder(cfg: TrainConfig) -> None:
    """Before anything runs: a new run's --out must not hold files, unless --overwrite is given (which
    later removes the old run's files, and only those); --resume must name a folder."""
    out = Path(cfg.resume or cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder; choose another --out")
    if cfg.resume or cfg.overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    what = "a training run" if run_files(out) else "files"
    raise ValueError(f"--out {out} already holds {what}: continue that run with --resume {out}, replace it "
                     "with --overwrite (which removes only a run's files), or choose another --out")


def find_checkpoint(cfg: TrainConfig) -> tuple[TrainState, Path] | None:
    """With --resume: the run's newest good checkpoint, whose config must compute what `cfg` computes."""
    if not cfg.resume:
        return None
    state, path = TrainState.latest(cfg.resume)
    check_resume_config(state.config, cfg)
    if state.epoch >= cfg.epochs:
        more = "finished its" if state.epoch == cfg.epochs and not state.mid_epoch else "has trained"
        epochs = f"{state.epoch} epoch{'s' if state.epoch != 1 else ''}"
        raise ValueError(f"--resume {cfg.resume}: the run {more} {epochs}; pass --epochs N with "
                         f"N > {state.epoch} to train it further")
    return state, path


def build_run(cfg: TrainConfig, env: DistEnv, device: torch.device, workers: int,
              resumed: TrainState | None) -> Run:
    """Data, network, loaders, optimizer and schedule, in the order that draws the seeded RNG as an
    uninterrupted run does."""
    aux = resolve_aux(cfg)
    pre = preprocess_for(cfg)
    train_ds, val_ds, classes = build_datasets(cfg, pre)
    out = Path(cfg.resume or cfg.out)
    if resumed is not None and resumed.class_names != classes:
        raise ValueError(f"--resume {out}: the data's classes changed since the run started "
                         f"({resumed.class_names} -> {classes})")
    sampler = dist_mod.ShardedSampler(len(train_ds), cfg.batch_size, env, seed=cfg.seed,
                                      weights=class_balanced_weights(train_ds) if cfg.balanced else None)
    if sampler.local_batch % cfg.accum_steps:
        raise ValueError(f"each process's batch ({sampler.local_batch}) must be divisible by --accum-steps "
                         f"{cfg.accum_steps}")
    for ds in (train_ds, val_ds):   # bad files come back as BadImage (path, reason), for bad_images.txt
        inner = ds.dataset if isinstance(ds, Subset) else ds
        if isinstance(inner, LabeledImages):
            inner.report_bad = True
    net = build_network(cfg, classes, aux, device, env)
    cached = caches_features(cfg, aux)
    if cached:   # a linear probe: the backbone runs once per image, not once per image and epoch
        train_ds, val_ds = cache_features(net, train_ds, val_ds, cfg, device, workers, env)
        workers = 0   # the features are in memory
    train_loader = labeled_loader(train_ds if cached else SeededSamples(train_ds, cfg.seed),
                                  sampler.local_batch // cfg.accum_steps,
                                  shuffle=False, workers=workers, sampler=sampler)
    val_shard = Subset(val_ds, dist_mod.shard_range(len(val_ds), env)) if env.distributed else val_ds
    val_loader = labeled_loader(val_shard, cfg.batch_size, shuffle=False, workers=workers)
    model = dist_mod.wrap(HeadOnly(net) if cached else net, env, device, cfg.sync_bn)
    if not cached:
        net = dist_mod.unwrap(model)   # SyncBatchNorm made a new module
    model = compile_model(model, cfg)
    optimizer, scheduler = build_optimizer(net, cfg, sampler.steps_per_epoch)
    amp = run_amp(cfg, device, env, timeable=not cached and not cfg.compile, resumed=resumed)
    return Run(cfg=cfg, env=env, device=device, out=out, pre=pre, classes=classes, aux=aux, net=net,
               model=model, sampler=sampler, train_loader=train_loader, val_loader=val_loader,
               optimizer=optimizer, scheduler=scheduler,
               ema=ModelEma(net, cfg.ema_decay) if cfg.ema_decay > 0 else None,
               scaler=torch.amp.GradScaler(device.type) if amp.amp == "fp16" else None,
               amp=amp, images=(len(train_ds), len(val_ds)), workers=workers)


def run_amp(cfg: TrainConfig, device: torch.device, env: DistEnv, timeable: bool,
            resumed: TrainState | None) -> AmpChoice:
    """The run's `AmpChoice`. A resumed run keeps what "auto" decided, or goes on timing where the
    checkpoint was, so that its steps are computed as the uninterrupted run's were; checkpoints that
    predate `TrainState.amp` say the decision in their epochs' records."""
    if resumed is not None and cfg.amp == "auto":
        if resumed.amp is not None:
            return AmpChoice.from_dict(resumed.amp)
        recorded = next((r["amp"] for r in reversed(resumed.history or []) if r.get("amp") in AMP_NAMES
                         and r["amp"] != TIMING), None)
        if recorded is not None:
            return AmpChoice(recorded)
    return amp_choice(cfg.amp, device, env, timeable)


def build_network(cfg: TrainConfig, classes: list[str], aux: bool, device: torch.device,
                  env: DistEnv) -> nn.Module:
    """The network as it trains: initialised (or from --weights), on the device, frozen up to
    --freeze-until."""
    net = prepare_model(init_model(cfg, classes, aux), cfg, device)
    frozen = freeze(net, cfg.freeze_until)
    if frozen and env.is_main:
        logger.info("frozen (no gradients, batch norms in eval mode): %s ... %s", frozen[0], frozen[-1])
    return net


def cache_features(net: nn.Module, train_ds: Dataset, val_ds: Dataset, cfg: TrainConfig,
                   device: torch.device, workers: int, env: DistEnv) -> tuple[Dataset, Dataset]:
    """The linear probe's training and held-out sets as the frozen backbone's features."""
    start = time.perf_counter()
    train_ds = backbone_features(net, train_ds, cfg, device, workers, env)
    val_ds = backbone_features(net, val_ds, cfg, device, workers, env)
    if env.is_main:
        logger.info("linear probe: backbone features of %d + %d images computed once (%.1fs); "
                    "each epoch trains the head on them", len(train_ds), len(val_ds),
                    time.perf_counter() - start)
    return train_ds, val_ds


def restore(run: Run, state: TrainState, source: Path) -> None:
    """Put a checkpoint's state back into the run: weights, optimizer, schedule, EMA, scaler, progress,
    history and this rank's RNG (a mid-epoch checkpoint needs the same number of processes)."""
    run.net.load_state_dict(state.model)
    run.optimizer.load_state_dict(state.optimizer)
    fresh = run.scheduler.state_dict()
    run.scheduler.load_state_dict(state.scheduler)
    if state.config.get("epochs") != run.cfg.epochs:
        # A run extended by --epochs follows the schedule of a run of the new length from the step it
        # reached (one-cycle's phases are stored in its state; the other schedules read cfg.epochs).
        for key in ("total_steps", "_schedule_phases"):
            if key in fresh:
                setattr(run.scheduler, key, fresh[key])
        if run.env.is_main:
            logger.info("--epochs %d (the run had %s): the LR schedule is that of a %d-epoch run from here",
                        run.cfg.epochs, state.config.get("epochs"), run.cfg.epochs)
    if run.ema is not None:
        run.ema.load_state_dict(state.ema)
    if run.scaler is not None:
        run.scaler.load_state_dict(state.scaler)
    run.best_acc1, run.done_epochs = state.best_acc1, state.epoch
    run.history = list(state.history or read_history(run.metrics_path, state.epoch))
    # best_acc1 is the top-1 of the weights in best.safetensors: a folder without that file (copied
    # without it, say) saves the next epoch's as best. Rank 0's folder decides.
    lost = run.env.is_main and state.best_acc1 >= 0 and not run.best_path.is_file()
    if dist_mod.all_reduce([float(lost)], run.env, run.device)[0]:
        if run.env.is_main:
            logger.warning("%s is missing: the next epoch's weights are saved as best", run.best_path)
        run.best_acc1 = -1.0
    rank, world = run.env.rank, run.env.world_size
    same_world = len(state.rng) == world
    if state.epoch_state is not None:
        if not same_world:
            raise ValueError(f"--resume {run.out}: the checkpoint is mid-epoch from {len(state.rng)} "
                             f"processes, now {world}; resume with the same number")
        run.resume_at = EpochState(**{**state.epoch_state[rank], "stopped": False})
    if same_world:
        set_rng_state(state.rng[rank])
    else:
        torch.manual_seed(run.cfg.seed + 7919 * state.epoch + rank)
    if run.env.is_main:
        logger.info("resuming %s from %s: epoch %d, step %d of %d", run.out, source, state.epoch + 1,
                    run.resume_at.step if run.resume_at else 0, run.steps)


def start_run_folder(run: Run) -> None:
    """config.json and metrics.jsonl (afresh, or the epochs the checkpoint knows), and the run's summary."""
    if not run.env.is_main:
        return
    cfg = run.cfg
    with writing(run.out):
        run.out.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite:
        removed = remove_run_files(run.out)
        if removed:
            logger.info("--overwrite: removed the %d files of the run that was in %s", removed, run.out)
    with writing(run.out / "config.json"):
        write_text_atomic(run.out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    write_jsonl(run.metrics_path, run.history)
    logger.info(
        "training %s on %s: %d train / %d held-out images, %d classes, %d px%s, %d epochs x %d steps, "
        "device %s (%s%s%s%s), %d process(es), %d threads, %d workers",
        cfg.arch, cfg.data, *run.images, len(run.classes), cfg.image_size,
        " + aux head" if run.aux else "", cfg.epochs, run.steps, run.device, AMP_NAMES[run.amp.label],
        ", channels_last" if cfg.channels_last else "",
        ", gradient checkpointing" if cfg.grad_checkpointing else "",
        f", torch.compile {cfg.compile_backend}" if cfg.compile else "",
        run.env.world_size, torch.get_num_threads(), run.workers,
    )


# -- checkpoints ----------------------------------------------------------------------------------------

def capture_state(run: Run, epochs_done: int, st: EpochState | None) -> TrainState | None:
    """The run's state after `epochs_done` epochs and, mid-epoch, `st`'s steps of the next. Every rank
    takes part (its RNG state and partial sums are gathered); rank 0 gets the state, the others None."""
    rngs = dist_mod.gather_objects(rng_state(), run.env)
    states = dist_mod.gather_objects(st.to_dict(), run.env) if st is not None else None
    if not run.env.is_main:
        return None
    step = st.step if st is not None else 0
    return TrainState(
        model=model_state_dict(run.net), optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(), ema=run.ema.state_dict() if run.ema is not None else None,
        scaler=run.scaler.state_dict() if run.scaler is not None else None,
        epoch=epochs_done, step=step, global_step=epochs_done * run.steps + step, epoch_state=states,
        amp=run.amp.to_dict(),
        rng=rngs, world_size=run.env.world_size, best_acc1=run.best_acc1, history=run.history,
        config=run.cfg.to_dict(), class_names=run.classes, meta=run.weights_meta())


def checkpoint(run: Run, epochs_done: int, st: EpochState | None) -> None:
    run.last_saved = time.monotonic()
    state = capture_state(run, epochs_done, st)
    if state is None:
        return
    state.save(run.out)
    if run.cfg.keep_last > 0:   # a weights-only snapshot: the one full state is last.pt
        path = step_weights_path(run.out, state.global_step)
        with writing(path):
            save_model(run.evaluated_net, path, class_names=run.classes, preprocess=run.pre,
                       extra={"epoch": epochs_done + (st is not None), "step": state.step,
                              "global_step": state.global_step})
        prune_step_weights(run.out, run.cfg.keep_last)


def on_step(run: Run, st: EpochState) -> None:
    """After each step: a checkpoint every --save-every steps, after --save-minutes, or on a stop."""
    cfg = run.cfg
    due = bool(cfg.save_every and st.step % cfg.save_every == 0)
    if cfg.save_minutes:   # every rank's clock votes, so that all of them save at the same step
        late = time.monotonic() - run.last_saved >= 60 * cfg.save_minutes
        due = due or bool(dist_mod.all_reduce([float(late)], run.env, run.device, op="max")[0])
    if st.stopped or (due and st.step < run.steps):
        checkpoint(run, st.epoch - 1, st)


# -- epochs ---------------------------------------------------------------------------------------------

def train_epochs(run: Run, stop: StopRequest, progress: bool) -> None:
    """Every epoch still to do: train, evaluate, record, checkpoint."""
    tb = open_tensorboard(run.out / TB_FOLDER) if run.env.is_main else None
    try:
        for epoch in range(run.done_epochs + 1, run.cfg.epochs + 1):
            timing = run.amp.amp is None
            tr = train_epoch(run, epoch, stop, progress)
            va, val_bad = evaluate_epoch(run)
            check_images_read(run, epoch, tr, va, val_bad)
            record = {
                "epoch": epoch, "train_loss": tr["loss"], "train_acc1": tr["acc1"], "lr": tr["lr"],
                "val_loss": va["loss"], "val_acc1": va["top1"], "val_acc5": va["top5"],
                "skipped": tr["skipped"] + va["skipped"], "nonfinite_steps": tr["nonfinite"],
                "seconds": tr["seconds"], "amp": run.amp.label,
            }
            if timing and run.amp.timed_ms is not None:   # the epoch in which "auto" decided
                record["amp_ms"] = run.amp.timed_ms
            run.history.append(record)
            improved = va["top1"] > run.best_acc1
            if improved:
                run.best_acc1 = va["top1"]
            if run.env.is_main:
                write_epoch(run, tb, record, tr["bad_images"], val_bad)
                if improved:
                    save_best(run, epoch, va)
            checkpoint(run, epoch, None)
            if run.env.is_main:
                log_epoch(run, record, improved)
    finally:
        if tb is not None:
            tb.close()


def train_epoch(run: Run, epoch: int, stop: StopRequest, progress: bool) -> dict[str, Any]:
    """One epoch's steps, from where a mid-epoch checkpoint left it; TrainingInterrupted on a stop."""
    st = run.resume_at if run.resume_at is not None and run.resume_at.epoch == epoch else EpochState(epoch)
    run.resume_at = None
    run.sampler.set_epoch(epoch, st.step)
    try:
        tr = train_one_epoch(run.model, run.train_loader, run.optimizer, run.scheduler,
                             run.cfg, run.device,
                             epoch, progress and run.env.is_main, state=st, env=run.env,
                             should_stop=lambda: bool(stop), on_step=functools.partial(on_step, run),
                             ema=run.ema, scaler=run.scaler, amp=run.amp)
    except NonFiniteLossError as e:
        kept = (f"the last good state is {run.last_path}" if run.last_path.is_file()
                else "no checkpoint had been written yet")
        raise NonFiniteLossError(f"{e} ({kept})") from None
    if tr["stopped"]:
        name = signal.Signals(stop.signum).name if stop.signum else "a stop request"
        message = (f"{name}: stopped after epoch {epoch} step {st.step} of {run.steps}; checkpoint "
                   f"{run.last_path}. Resume with the same command plus --resume {run.out}")
        if run.env.is_main:
            logger.warning("%s", message)
        raise TrainingInterrupted(message)
    return tr


def check_images_read(run: Run, epoch: int, tr: dict[str, Any], va: dict[str, Any], val_bad: list) -> None:
    """TrainingFailed when no training image or no held-out image of the epoch could be read: the numbers
    would mean nothing, and no such epoch's weights are saved as best. bad_images.txt names each file."""
    if tr["images"] and va["n"]:
        return
    split, bad = ("training", tr["bad_images"]) if not tr["images"] else ("held-out", val_bad)
    if run.env.is_main:
        write_bad_images(run.out / BAD_IMAGES_FILE, epoch, tr["bad_images"], val_bad)
    first = f" (first: {bad[0][0]}: {bad[0][1]})" if bad else ""
    raise TrainingFailed(f"{run.cfg.data}: none of the {split} images could be read{first}; each one is "
                         f"listed in {run.out / BAD_IMAGES_FILE}. Fix or replace the images; nothing was "
                         "saved as best")


def evaluate_epoch(run: Run) -> tuple[dict[str, Any], list[list[str]]]:
    """Held-out metrics over all ranks, in fp32 without autocast (as `inceptionv3 evaluate` computes
    them), and the [path, reason] of every held-out image that failed to decode."""
    val_bad: list[list[str]] = []
    va = evaluate_model(run.evaluated, recording_bad(run.val_loader, val_bad), len(run.classes), run.device,
                        run.env)
    return va, [b for rank in dist_mod.gather_objects(val_bad, run.env) for b in rank]


def write_epoch(run: Run, tb, record: dict[str, Any], train_bad: list, val_bad: list) -> None:
    """The epoch's line in metrics.jsonl, its skipped images and its TensorBoard scalars (rank 0)."""
    write_jsonl(run.metrics_path, run.history)
    write_bad_images(run.out / BAD_IMAGES_FILE, record["epoch"], train_bad, val_bad)
    if tb is not None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):   # scalars (not the precision's name)
                tb.add_scalar(TB_TAGS.get(key, key), value, record["epoch"])
        tb.flush()


def save_best(run: Run, epoch: int, va: dict[str, Any]) -> None:
    """best.safetensors (the evaluated weights) and its held-out confusion matrix (rank 0)."""
    with writing(run.best_path):
        save_model(run.evaluated_net, run.best_path, class_names=run.classes, preprocess=run.pre,
                   extra={"epoch": epoch, "acc1": va["top1"], "acc5": va["top5"]})
    with writing(run.out / CONFUSION_FILE):
        write_text_atomic(run.out / CONFUSION_FILE, json.dumps(
            {"epoch": epoch, "class_names": run.classes, "top1": va["top1"],
             "matrix": va["confusion"].tolist()}) + "\n")


def log_epoch(run: Run, record: dict[str, Any], improved: bool) -> None:
    logger.info(
        "epoch %d/%d  loss %.4f  train top-1 %.2f%%  held-out top-1 (fp32) %.2f%% top-5 %.2f%%  lr %.2e  %.1fs%s%s%s",
        record["epoch"], run.cfg.epochs, record["train_loss"], record["train_acc1"], record["val_acc1"],
        record["val_acc5"], record["lr"], record["seconds"],
        f"  skipped {record['skipped']} bad images ({BAD_IMAGES_FILE})" if record["skipped"] else "",
        f"  skipped {record['nonfinite_steps']} non-finite steps" if record["nonfinite_steps"] else "",
        "  (best)" if improved else "",
    )
