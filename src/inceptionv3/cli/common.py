"""What the commands share: exit codes, the one-line error, and the flags several commands take.

Nothing here imports torch: every parser is built from torch-free constants, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..engine.options import (
    BACKENDS,
    CALIBRATION_LIMIT,
    FIELDS,
    MIN_CALIBRATION_IMAGES,
    PRECISIONS,
    EngineOptions,
)
from ..metrics.modes import DIMS, METRIC_OPTIONS, MODES
from ..runtime.files import WriteError, os_error_reason, quote_path, temp_name

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def check_output(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as an output the command can write, checked before any work starts.

    A missing folder is fine when it can be created (the write creates it); a folder that is a file, or
    that refuses a file (read-only, no permission), is a ``CommandError`` naming the flag, the folder and
    the fix. The check writes and removes a probe file, since permission bits do not tell for every user
    and file system.
    """
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{flag} {quote_path(path)}: is a folder; give a file name")
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CommandError(f"{flag} {quote_path(path)}: {quote_path(existing)} is not a folder; "
                           "choose another path")
    try:   # a temporary name of ours: should the process die right here, the next write cleans it up
        probe = temp_name(existing / path.name)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError as e:
        what = "write into" if existing == folder else "create a folder in"
        raise CommandError(f"{flag} {quote_path(path)}: cannot {what} {quote_path(existing)} "
                           f"({os_error_reason(e)}); choose a folder you can write to") from None
    return path


@contextmanager
def output_errors(path: str | os.PathLike, flag: str) -> Iterator[None]:
    """An ``OSError`` while writing ``path`` (a full disk, a folder gone) as one line naming ``path`` and the
    fix, rather than the temporary file the atomic write was filling."""
    try:
        yield
    except WriteError:
        raise                 # it names the file it could not write
    except OSError as e:
        raise WriteError(path, f"{os_error_reason(e)} (writing {flag})", e.errno) from None


def add_image_args(p: argparse.ArgumentParser) -> None:
    """The image paths, --weights and --arch: what every command that reads images with a model takes."""
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files, folders (searched recursively), glob patterns, or @list.txt")
    p.add_argument("--weights", default="imagenet",
                   help="registry name (see 'inceptionv3 weights') or a weights file (default: imagenet)")
    p.add_argument("--arch", default=None, choices=("inception_v3", "inception_mini"),
                   help="network for a bare state-dict file (saved models and registry entries know it)")


def add_inference_args(p: argparse.ArgumentParser, default_batch: int = EngineOptions.batch_size,
                       default_precision: str = EngineOptions.precision) -> None:
    """Inputs, weights and engine flags of the commands that run the network over image files."""
    add_image_args(p)
    p.add_argument("--batch-size", type=int, default=default_batch,
                   help=f"images per batch (default {default_batch})")
    p.add_argument("--workers", type=int, default=None,
                   help="decode worker processes (default: chosen for the core count; 0 decodes in-process)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_engine_args(p, default_precision)


def add_engine_args(p: argparse.ArgumentParser, default_precision: str = EngineOptions.precision) -> None:
    """--precision, --backend, --calibration and --threads: how the engine runs the network.

    Each flag's destination is the name of an ``EngineOptions`` field, so ``engine_options`` reads it.
    """
    p.add_argument("--precision", default=default_precision, choices=("auto", *PRECISIONS),
                   help="arithmetic: fp32 (exact), bf16 (where the CPU/GPU has it natively), int8 (CPU, needs "
                        f"--calibration); auto = bf16 where native, else fp32 (default {default_precision})")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="runtime; onnxruntime/openvino export the fused graph once to the cache "
                        "(default auto: the fastest installed one for the precision)")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help=f"images like the inputs, to calibrate --precision int8 (at least "
                        f"{MIN_CALIBRATION_IMAGES}; up to {CALIBRATION_LIMIT} used)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch compute threads (default: the cores the decode workers leave free)")


def engine_options(args: argparse.Namespace, base: EngineOptions | None = None) -> EngineOptions:
    """The ``EngineOptions`` of a command's flags: each field from the flag of the same name that the
    command has (``--batch-size`` -> ``batch_size``), the others from ``base`` (default ``EngineOptions()``);
    ``progress`` from ``--no-progress`` and whether stderr is a terminal."""
    values = {name: getattr(args, name) for name in FIELDS
              if name != "progress" and getattr(args, name, None) is not None}
    if hasattr(args, "no_progress"):
        values["progress"] = show_progress(args)
    return dataclasses.replace(base or EngineOptions(), **values)


def show_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def add_dataclass_args(p: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per config field (``--batch-size`` <-> ``batch_size``), help from the field's metadata."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        args = typing.get_args(kind)
        if type(None) in args:                       # Optional[X]
            kind = next(a for a in args if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        helptext = f.metadata.get("help", "").replace("%", "%%")   # argparse formats help with %
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                           help=f"{helptext} (default {default})")
        else:
            choices = f.metadata.get("choices")
            p.add_argument(flag, type=kind, default=default, choices=choices,
                           help=f"{helptext} (default {default})")


def config_from(cls: type, args: argparse.Namespace, **extra):
    """The dataclass ``cls`` from the flags ``add_dataclass_args`` made (plus ``extra``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(extra)
    return cls(**values)


def csv_of(kind: type) -> Callable[[str], tuple]:
    """'1,16' -> (1, 16): comma-separated flag values."""
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


_METRIC_INPUT = ("image folder (or glob, @list.txt), sample set (.zip, .npy / .npz images, "
                 "shards-{000..009}.tar) or .npz statistics file")


def add_metric_parser(sub: argparse._SubParsersAction, name: str, helptext: str, inputs: int,
                      description: str) -> argparse.ArgumentParser:
    """The flags fid, kid, is and stats share: inputs, weights, mode, tap, batching and output."""
    p = sub.add_parser(name, help=helptext, description=description)
    p.add_argument("a", metavar="A", help=_METRIC_INPUT)
    if inputs == 2:
        p.add_argument("b", metavar="B", help=_METRIC_INPUT)
    p.add_argument("--weights", default="fid", help="registry name or weights file (default fid)")
    # fid scores images the way a given statistics file was made unless told otherwise.
    from_stats = " (default: a statistics input's, else {})" if name == "fid" else " (default {})"
    p.add_argument("--mode", default=None if name == "fid" else "pytorch-fid", choices=MODES,
                   help="preprocessing of the reference tool to match" + from_stats.format("pytorch-fid"))
    if name != "is":   # the Inception Score reads the logits
        p.add_argument("--dims", type=int, default=None if name == "fid" else 2048, choices=sorted(DIMS),
                       help="feature tap" + from_stats.format(2048))
    p.add_argument("--batch-size", type=int, default=METRIC_OPTIONS.batch_size,
                   help=f"images per batch (default {METRIC_OPTIONS.batch_size})")
    p.add_argument("--workers", type=int, default=None, help="decode worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def metric_kwargs(args: argparse.Namespace) -> dict:
    """The keywords every metric function takes from the shared flags: weights, mode and the engine options."""
    return {"weights": args.weights, "mode": args.mode, "options": engine_options(args, METRIC_OPTIONS)}


def with_warnings(fn: Callable[..., dict], *a, **kw) -> dict:
    """``fn(*a, **kw)`` with the MetricWarnings it raised gathered into its result's "warnings" list."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*a, **kw)
    extra = [str(w.message) for w in caught if str(w.message) not in result.get("warnings", [])]
    result["warnings"] = list(dict.fromkeys(result.get("warnings", []) + extra))
    return result


def is_main_rank() -> bool:
    """Whether this process prints a metric's result: global rank 0 under torchrun, or a process of its own.

    Every rank holds the same result, so one prints it; the rank is torchrun's ``RANK``, so no process
    group is needed to know it.
    """
    from ..runtime.distributed import env_from_environ  # imports torch, which the metric has loaded
    return env_from_environ().is_main


def report_metric(args: argparse.Namespace, result: dict, line: str, failed: int = 0) -> int:
    """The warnings once each, then the result as one line or as JSON; exit code 1 when ``failed``
    images could not be read (the result, over the rest, is still printed), as predict and features.

    Under torchrun only global rank 0 prints (``is_main_rank``); every rank returns the same exit code.
    """
    if is_main_rank():
        for w in result.get("warnings", []):
            print(f"inceptionv3 {args.command}: warning: {w}", file=sys.stderr)
        print(json.dumps(result, indent=2) if args.format == "json" else line)
        if failed:
            print(f"inceptionv3 {args.command}: {failed} image(s) could not be read (see the lines above); the "
                  f"result is over the rest", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK
