"""The ``inceptionv3`` command: argument parsing only; each command is a few lines over the Python API."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Sequence

from . import __version__

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


# Helpers ---------------------------------------------------------------------------------------------

def _common_inference_args(p: argparse.ArgumentParser, default_batch: int = 32,
                           default_precision: str = "fp32") -> None:
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files, folders (searched recursively), glob patterns, or @list.txt")
    p.add_argument("--weights", default="imagenet",
                   help="registry name (see 'inceptionv3 weights') or a weights file (default: imagenet)")
    p.add_argument("--arch", default=None, choices=("inception_v3", "inception_mini"),
                   help="network for a bare state-dict file (saved models and registry entries know it)")
    p.add_argument("--batch-size", type=int, default=default_batch, help=f"images per batch (default {default_batch})")
    p.add_argument("--workers", type=int, default=None,
                   help="decode worker processes (default: chosen for the core count; 0 decodes in-process)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _engine_args(p, default_precision)


def _engine_args(p: argparse.ArgumentParser, default_precision: str = "fp32") -> None:
    p.add_argument("--precision", default=default_precision, choices=("auto", "fp32", "bf16", "int8"),
                   help="arithmetic: fp32 (exact), bf16 (where the CPU/GPU has it natively), int8 (CPU, needs "
                        f"--calibration); auto = bf16 where native, else fp32 (default {default_precision})")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "openvino"),
                   help="runtime; onnxruntime/openvino export the fused graph once to the cache "
                        "(default auto: the fastest installed one for the precision)")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="images like the inputs, to calibrate --precision int8 (at least 32; up to 256 used)")


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _dataclass_args(p: argparse.ArgumentParser, cls, skip: Sequence[str] = ()) -> None:
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
        helptext = f.metadata.get("help", "")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                           help=f"{helptext} (default {default})")
        else:
            choices = f.metadata.get("choices")
            p.add_argument(flag, type=kind, default=default, choices=choices,
                           help=f"{helptext} (default {default})")


def _config_from(cls, args: argparse.Namespace, **extra):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(extra)
    return cls(**values)


# Commands ------------------------------------------------------------------------------------------

def cmd_predict(args) -> int:
    from .predict import ImageFailure, predict
    try:
        results = predict(args.paths, weights=args.weights, top_k=args.top_k, batch_size=args.batch_size,
                          workers=args.workers, device=args.device, strict=args.strict,
                          progress=_progress(args), arch=args.arch, precision=args.precision,
                          backend=args.backend, calibration=args.calibration)
    except ImageFailure as e:
        print(f"inceptionv3 predict: {e} (stopped: --strict)", file=sys.stderr)
        return EXIT_SOME_FAILED
    if args.format == "json":
        print(json.dumps(results, indent=2))
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "rank", "index", "label", "probability", "error"])
        for r in results:
            if "error" in r:
                w.writerow([r["path"], "", "", "", "", r["error"]])
            for rank, p in enumerate(r.get("predictions", []), 1):
                w.writerow([r["path"], rank, p["index"], p["label"], f"{p['probability']:.6f}", ""])
        print(buf.getvalue(), end="")
    else:
        for r in results:
            print(r["path"])
            if "error" in r:
                print(f"    error: {r['error']}")
            for p in r.get("predictions", []):
                print(f"    {p['probability']:7.2%}  {p['label']}  [{p['index']}]")
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"inceptionv3 predict: {len(failed)} of {len(results)} images failed (listed above)",
              file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def cmd_features(args) -> int:
    import signal

    from .distributed import env_from_environ, teardown
    from .features import FEATURE_FORMATS, discard_partial, extract_features, partial_folder, save_features

    if Path(args.out).suffix.lower() not in FEATURE_FORMATS:    # before the run, not after it
        raise CommandError(f"--out {args.out}: unknown format {Path(args.out).suffix!r}; "
                           f"use one of {', '.join(FEATURE_FORMATS)}")
    partial = partial_folder(args.out)

    def stop(signum: int, frame) -> None:    # SIGTERM as Ctrl-C: the finished rows are saved on the way out
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        result = extract_features(args.paths, weights=args.weights, layer=args.layer, batch_size=args.batch_size,
                                  workers=args.workers, device=args.device, progress=_progress(args),
                                  arch=args.arch, precision=args.precision, backend=args.backend,
                                  calibration=args.calibration, resume=partial, restart=args.restart)
    except KeyboardInterrupt:
        print(f"inceptionv3 features: stopped; the finished images are kept in {partial}: run the same "
              "command again to continue (--restart to start over)", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    teardown()
    if not env_from_environ().is_main:   # under torchrun rank 0 holds the merged result and writes it
        return EXIT_OK
    out = save_features(result, args.out)
    discard_partial(partial)
    n, d = result.features.shape
    print(f"wrote {n} x {d} features ({args.layer}) to {out}")
    for path, why in result.failures:
        print(f"failed: {path}: {why}", file=sys.stderr)
    if result.failures:
        print(f"inceptionv3 features: {len(result.failures)} images failed (listed above)", file=sys.stderr)
    return EXIT_SOME_FAILED if result.failures else EXIT_OK


def cmd_info(args) -> int:
    from .info import format_summary, summarize
    from .model import build_model
    if args.weights:
        from .weights import load_model
        model = load_model(args.weights)
    else:
        config = {"num_classes": args.num_classes}
        if args.arch == "inception_v3":
            config.update(aux_logits=not args.no_aux, init_weights=False)
        model = build_model(args.arch, **config)
    print(format_summary(summarize(model, args.input_size)))
    return EXIT_OK


def cmd_weights(args) -> int:
    from .weights import REGISTRY, fetch, get_entry
    if args.action == "download":
        if not args.name:
            raise CommandError("weights download needs a NAME; see 'inceptionv3 weights list'")
        print(fetch(get_entry(args.name), progress=True, trust_on_first_use=args.trust_on_first_use))
        return EXIT_OK
    width = max(len(n) for n in REGISTRY) + 2

    def acc(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(f"{'name':<{width}}{'arch':<15}{'classes':>8}{'input':>7}{'acc@1':>8}{'acc@5':>8}  "
          f"{'sha256':<15}source")
    for e in REGISTRY.values():
        m = e.metrics
        sha = "none published" if not e.sha256 else e.sha256[:8]
        print(f"{e.name:<{width}}{e.arch:<15}{e.num_classes:>8}{e.preprocess.input_size:>7}"
              f"{acc(m.get('acc@1')):>8}{acc(m.get('acc@5')):>8}  {sha:<15}{e.source}")
    return EXIT_OK


def cmd_train(args) -> int:
    from .train import TrainConfig, train
    cfg = _config_from(TrainConfig, args)
    result = train(cfg, progress=_progress(args))
    if os.environ.get("RANK", "0") == "0":   # under torchrun, one summary line, from rank 0
        print(f"best held-out top-1 {result['best_acc1']:.2f}%  ->  {result['best_path']}")
    return EXIT_OK


def cmd_plot(args) -> int:
    from .plot import plot_run
    for path in plot_run(args.run, args.out):
        print(path)
    return EXIT_OK


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate, format_report, plot_confusion
    from .distributed import env_from_environ, teardown
    result = evaluate(args.data, args.weights, split=args.split, batch_size=args.batch_size,
                      workers=args.workers, device=args.device, crops=args.crops,
                      val_fraction=args.val_fraction, seed=args.seed, precision=args.precision,
                      backend=args.backend, calibration=args.calibration)
    teardown()
    if not env_from_environ().is_main:   # under torchrun every rank has the summed result; rank 0 reports
        return EXIT_OK
    if args.format == "json":
        print(json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.items()}, indent=2))
    else:
        print(format_report(result, result["class_names"]))
    if args.plot:
        plot_confusion(result["confusion"], result["class_names"], args.plot)
        print(f"confusion matrix drawn to {args.plot}", file=sys.stderr)
    return EXIT_OK


# Generator metrics (fid, kid, is, stats) -----------------------------------------------------------

def _metric_kwargs(args) -> dict:
    return {"weights": args.weights, "mode": args.mode, "device": args.device, "batch_size": args.batch_size,
            "workers": args.workers, "progress": _progress(args)}


def _report(args, result: dict, line: str) -> int:
    for w in result.get("warnings", []):
        print(f"inceptionv3 {args.command}: warning: {w}", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.format == "json" else line)
    return EXIT_OK


def _quiet_warnings(fn, *a, **kw) -> dict:
    # The API warns (MetricWarning); the CLI lists those once, as lines, in _report.
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*a, **kw)
    extra = [str(w.message) for w in caught if str(w.message) not in result.get("warnings", [])]
    result["warnings"] = list(dict.fromkeys(result.get("warnings", []) + extra))
    return result


def cmd_fid(args) -> int:
    from .metrics import fid
    r = _quiet_warnings(fid, args.a, args.b, dims=args.dims, legacy_sqrtm=args.legacy_sqrtm,
                        strict=args.strict, **_metric_kwargs(args))
    d = r["diagnostics"]
    mode = r["meta"][0].get("mode", "mode unknown")
    detail = (f"smallest eigenvalue {d['min_eigenvalue']:.3g}" if r["method"] == "eigh"
              else f"largest imaginary part dropped {d['max_imag']:.3g}")
    return _report(args, r, f"FID: {r['fid']:.6f}  (n={r['n'][0]}, {r['n'][1]}; {mode}, {r['dims']}-d, "
                            f"{r['method']}; {detail})")


def cmd_kid(args) -> int:
    from .metrics import kid
    r = _quiet_warnings(kid, args.a, args.b, dims=args.dims, subsets=args.kid_subsets,
                        subset_size=args.kid_subset_size, **_metric_kwargs(args))
    return _report(args, r, f"KID: {r['kid']:.6g} +- {r['kid_std']:.6g}  (n={r['n'][0]}, {r['n'][1]}; "
                            f"{r['subsets']} subsets of {r['subset_size']}; {args.mode}, {args.dims}-d)")


def cmd_is(args) -> int:
    from .metrics import inception_score
    r = _quiet_warnings(inception_score, args.a, splits=args.splits, **_metric_kwargs(args))
    return _report(args, r, f"IS: {r['is']:.6g} +- {r['is_std']:.6g}  (n={r['n']}; {r['splits']} splits; "
                            f"{args.mode}; {r['logits']})")


def cmd_stats(args) -> int:
    from .metrics import compute_stats, save_stats
    stats = compute_stats(args.a, dims=args.dims, **_metric_kwargs(args))
    out = save_stats(stats, args.out)
    print(f"wrote {args.dims}-d statistics of {stats.n} images ({args.mode}) to {out}")
    return EXIT_OK


# Export and convert (issue 4) ----------------------------------------------------------------------

def cmd_export(args) -> int:
    from .export import export_model
    from .weights import load_model
    model = load_model(args.weights, aux_logits=False)   # forward never uses the aux head
    r = export_model(model, args.out, args.format, input_size=args.input_size, check=args.check)
    shape = "x".join(map(str, r.input_shape[1:]))
    checked = f"; checked: max abs diff {r.max_abs_diff:.2g}" if r.max_abs_diff is not None else ""
    print(f"wrote {r.format} model to {r.path} (input N x {shape}, N dynamic{checked})")
    return EXIT_OK


def cmd_convert(args) -> int:
    from .convert import convert
    r = convert(args.src, args.source, args.out, num_classes=args.num_classes,
                keep_background=args.keep_background, ema=args.ema)
    print(f"converted {args.source} weights {args.src} ({r['tensors']} tensors checked) to {r['path']}")
    return EXIT_OK
# -------------------------------------------------------------------------------------------------------


# Benchmark (issue 5) -------------------------------------------------------------------------------

def _csv(kind: type) -> typing.Callable[[str], tuple]:
    """'1,16' -> (1, 16): comma-separated flag values."""
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


def cmd_bench(args) -> int:
    from .bench import BenchConfig, format_report, run_bench, write_json
    cfg = _config_from(BenchConfig, args)
    result = run_bench(cfg)
    print(format_report(result))
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return EXIT_OK
# -------------------------------------------------------------------------------------------------------


# Parser ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inceptionv3",
        description="InceptionV3: classify images, extract features, train and evaluate.",
        epilog="Run 'inceptionv3 COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"inceptionv3 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("predict", help="top-k classes of images",
                       description="Classify images and print the top-k labels with probabilities. "
                                   "Exit code 0: all images classified; 1: some failed; 2: usage error.")
    _common_inference_args(p)
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument("--strict", action="store_true", help="stop at the first image that fails")
    p.set_defaults(func=cmd_predict)

    from .model import TAPS
    p = sub.add_parser("features", help="extract image features to a file",
                       description="Write an N x D float32 feature matrix and the ordered image paths "
                                   "to .npy (paths in FILE.paths.txt), .npz or .safetensors.")
    _common_inference_args(p)
    p.add_argument("--out", required=True, help="output file: .npy, .npz or .safetensors")
    p.add_argument("--layer", default="pool", choices=list(TAPS),
                   help="tap to read (spatial taps are averaged over space; default pool, 2048-d)")
    p.add_argument("--restart", action="store_true",
                   help="discard the finished images an interrupted run kept in OUT.partial and start over")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("info", help="parameters, multiply-adds and block shapes",
                       description="Summarise a network: parameters, multiply-adds, each block's output.")
    p.add_argument("--arch", default="inception_v3", choices=("inception_v3", "inception_mini"))
    p.add_argument("--input-size", type=int, default=299, help="square input side in pixels (default 299)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--no-aux", action="store_true", help="leave out the aux head (inception_v3)")
    p.add_argument("--weights", default=None, help="summarise the network a weights file or entry builds")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("weights", help="list or download registered weights",
                       description="List the weights registry, or download an entry into the cache "
                                   "($INCEPTIONV3_HOME, default ~/.cache/inceptionv3).")
    p.add_argument("action", nargs="?", choices=("list", "download"), default="list")
    p.add_argument("name", nargs="?", help="entry to download")
    p.add_argument("--trust-on-first-use", action="store_true",
                   help="for an entry published without a sha256: accept the download and pin its hash")
    p.set_defaults(func=cmd_weights)

    from .train import TrainConfig
    p = sub.add_parser("train", help="train or fine-tune on an image folder or the embedded digits",
                       description="Train on DATA: 'digits' (scikit-learn's handwritten digits, offline), "
                                   "an image folder with one sub-folder per class (or train/ and val/), or a "
                                   ".csv/.jsonl list of path,label (or a folder with train.csv and val.csv).")
    p.add_argument("data", help="'digits', an image folder or a .csv/.jsonl list")
    _dataclass_args(p, TrainConfig, skip=("data",))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("plot", help="PNG curves and confusion matrix of a training run",
                       description="Draw loss, top-1/top-5 and learning-rate curves (from RUN_DIR/metrics.jsonl) "
                                   "and the best epoch's held-out confusion matrix as PNG files.")
    p.add_argument("run", metavar="RUN_DIR", help="the --out folder of 'inceptionv3 train'")
    p.add_argument("--out", default=None, help="folder for the PNG files (default RUN_DIR/plots)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("evaluate", help="top-1/top-5, per-class precision/recall, confusion matrix",
                       description="Evaluate a saved model on labelled data ('digits' uses its held-out split).")
    p.add_argument("data", help="'digits' or an image folder")
    p.add_argument("--weights", required=True, help="model file (e.g. runs/demo/best.safetensors) or entry")
    p.add_argument("--split", default="val", choices=("train", "val"), help="which split (default val)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="draw the confusion matrix")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="for a single folder or list: the held-out share used in training (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="for a single folder or list: the training seed")
    p.add_argument("--crops", type=int, default=1, choices=(1, 10, 12, 144),
                   help="average the softmax over 10 (ten-crop), 12 or 144 crops per image (the paper's "
                        "multi-crop evaluation; see the README); --batch-size then counts crops")
    _engine_args(p)
    p.set_defaults(func=cmd_evaluate)

    # Generator metrics (fid, kid, is, stats) -------------------------------------------------------
    from .metrics import DIMS, MODES

    def metric_parser(name: str, helptext: str, inputs: int, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=description)
        p.add_argument("a", metavar="A", help="image folder (or glob, @list.txt) or .npz statistics file")
        if inputs == 2:
            p.add_argument("b", metavar="B", help="image folder (or glob, @list.txt) or .npz statistics file")
        p.add_argument("--weights", default="fid", help="registry name or weights file (default fid)")
        # fid scores images the way a given statistics file was made unless told otherwise.
        from_stats = " (default: a statistics input's, else {})" if name == "fid" else " (default {})"
        p.add_argument("--mode", default=None if name == "fid" else "pytorch-fid", choices=MODES,
                       help="preprocessing of the reference tool to match" + from_stats.format("pytorch-fid"))
        if name != "is":   # the Inception Score reads the logits
            p.add_argument("--dims", type=int, default=None if name == "fid" else 2048, choices=sorted(DIMS),
                           help="feature tap" + from_stats.format(2048))
        p.add_argument("--batch-size", type=int, default=50, help="images per batch (default 50)")
        p.add_argument("--workers", type=int, default=None, help="decode worker processes")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
        p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        return p

    p = metric_parser("fid", "Fréchet Inception Distance of two image sets", 2,
                      "FID between A and B (folders, statistics files, or one of each).")
    p.add_argument("--legacy-sqrtm", action="store_true",
                   help="pytorch-fid's scipy sqrtm route instead of the symmetric eigh route")
    p.add_argument("--strict", action="store_true",
                   help="error (not warning) when the statistics differ in weights, tap or mode")
    p.set_defaults(func=cmd_fid)
    p = metric_parser("kid", "Kernel Inception Distance of two image sets", 2,
                      "KID between image folders A and B (cubic polynomial kernel, random subsets).")
    p.add_argument("--kid-subsets", type=int, default=100, help="number of subsets (default 100)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="images per subset (default 1000)")
    p.set_defaults(func=cmd_kid)
    p = metric_parser("is", "Inception Score of an image set", 1,
                      "Inception Score of image folder A (softmax over the FID net's 1008 logits).")
    p.add_argument("--splits", type=int, default=10, help="splits (default 10)")
    p.set_defaults(func=cmd_is)
    p = metric_parser("stats", "FID statistics of an image set to a .npz file", 1,
                      "Write mean and covariance (pytorch-fid's mu/sigma) plus metadata to a .npz file.")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="output statistics file")
    p.set_defaults(func=cmd_stats)
    # --------------------------------------------------------------------------------------------------
    # Export and convert (issue 4) --------------------------------------------------------------------
    from .convert import SOURCES
    from .export import FORMATS
    p = sub.add_parser("export", help="export to ONNX, TorchScript or torch.export (.pt2)",
                       description="Export a model for another runtime; the batch axis is dynamic and the "
                                   "preprocessing and class names travel in the file's metadata.")
    p.add_argument("--weights", required=True, help="registry name or weights file")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx (onnxruntime, OpenVINO, TensorRT), torchscript (.pt) or pt2 (torch.export)")
    p.add_argument("--out", required=True, help="output file (.onnx, .pt, .pt2)")
    p.add_argument("--input-size", type=int, default=None,
                   help="square input side the file accepts (default: the weights' input size)")
    p.add_argument("--check", action="store_true",
                   help="rerun the file (onnxruntime for ONNX) and compare with PyTorch "
                        "(max abs diff <= 1e-4)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="convert Keras / TF-slim / torchvision / timm / pytorch-fid files",
                       description="Convert a weights file from another framework into a self-describing "
                                   ".safetensors file, checking every tensor's shape.")
    p.add_argument("src", help="source weights file (TF-slim: a .ckpt file, or a checkpoint prefix or its "
                               ".index)")
    p.add_argument("--from", dest="source", required=True, choices=SOURCES, help="where the file comes from")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--num-classes", type=int, default=None,
                   help="Keras no-top file: add a fresh zero classifier with this many classes")
    p.add_argument("--keep-background", action="store_true",
                   help="TF-slim: keep the background class (index 0): 1001 outputs instead of 1000")
    p.add_argument("--ema", action="store_true",
                   help="TF-slim: use the weights' ExponentialMovingAverage copies saved during training")
    p.set_defaults(func=cmd_convert)
    # --------------------------------------------------------------------------------------------------
    # Benchmark (issue 5) -----------------------------------------------------------------------------
    from .bench import COMPARE
    p = sub.add_parser("bench", help="inference speed next to torchvision, ONNX Runtime and OpenVINO",
                       description="Time our inference engines and the comparisons in one process, in "
                                   "alternation: img/s, ms per batch, p50/p99, GFLOP/s and % of a matmul "
                                   "peak, peak memory, agreement with the plain model, ratios; random weights.")
    p.add_argument("--arch", default="inception_v3", choices=("inception_v3", "inception_mini"))
    p.add_argument("--batch-size", dest="batch_sizes", type=_csv(int), default=(1, 16),
                   help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--image-size", type=int, default=299, help="square input side (default 299)")
    p.add_argument("--precision", dest="precisions", type=_csv(str), default=("fp32", "bf16", "int8"),
                   help="comma-separated: fp32, bf16, int8 (default all; pairs a backend lacks are noted)")
    p.add_argument("--backend", dest="backends", type=_csv(str), default=None,
                   help="comma-separated: torch, onnxruntime, openvino (default: every installed one)")
    p.add_argument("--compare", type=_csv(str), default=COMPARE,
                   help=f"comma-separated comparisons, or '' for none (default {','.join(COMPARE)}; "
                        "a missing package is skipped with a note)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per row (default 10)")
    p.add_argument("--latency-repeats", type=int, default=100,
                   help="timed calls at batch 1 at least, for p99 (default 100)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per row first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write everything as JSON")
    p.set_defaults(func=cmd_bench)
    # --------------------------------------------------------------------------------------------------
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Progress lines (training epochs, downloads) are INFO; -v adds DEBUG detail and tracebacks.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s")
    from .weights import WeightsError
    try:
        return args.func(args)
    except (CommandError, WeightsError, ValueError, OSError, ImportError) as e:
        # Our errors name the thing and the fix; a traceback would bury that. -v shows it anyway.
        if args.verbose:
            raise
        print(f"inceptionv3 {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"inceptionv3 {args.command}: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    sys.exit(main())



