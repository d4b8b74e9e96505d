"""Named pretrained weights, and reading and writing weights files.

A registry of frozen entries says where each set of weights lives, its hash, and everything a caller needs
to use it right: class names, model arguments and, above all, the preprocessing the weights expect.
Downloads are verified against the entry's hash and cached; files are read without running pickled code
(``weights_only=True`` or safetensors); our own saved models carry their arch, config, class names and
preprocessing as safetensors metadata, so one file is enough to rebuild the model.
"""
from __future__ import annotations

import hashlib
import http.client
import importlib.resources
import json
import logging
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from .fileio import atomic_path
from .transforms import Preprocess

__all__ = [
    "WeightsEntry", "REGISTRY", "get_entry", "WeightsError", "cache_dir", "download", "fetch", "sha256_file",
    "read_state_dict", "ModelMeta", "load_weights", "load_model", "save_model", "FORMAT",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

FORMAT = "inceptionv3/1"     # the "format" metadata value of the .safetensors files save_model writes
TIMEOUT_S = 30.0             # socket timeout for connecting and for each read while downloading
_CHUNK = 1 << 20
# Metadata values that are JSON structures (safetensors metadata is str -> str).
_JSON_FIELDS = ("model_config", "num_classes", "class_names", "preprocess", "extra", "metrics")
# Wrapper keys of training checkpoints, in order of preference: the live weights before an EMA copy.
_EMA_KEYS = ("ema", "model_ema", "state_dict_ema")
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", *_EMA_KEYS)
_PREFIXES = ("module.", "_orig_mod.")   # DataParallel/DDP and torch.compile wrappers
# The first conv, whose input channels say in_chans, and the classifier, whose rows say num_classes.
_FIRST_CONV = {"inception_v3": "Conv2d_1a_3x3.conv.weight", "inception_mini": "conv1.weight"}
_CLASSIFIER = "fc.weight"


class WeightsError(RuntimeError):
    """A weights file or download is unusable; the message names the file or URL and the fix."""


@dataclass(frozen=True)
class WeightsEntry:
    """One set of published weights and everything needed to use them correctly."""
    name: str
    url: str
    sha256: str                        # full hex digest, the prefix a publisher put in the file name, or
                                       # "" when none is published (then fetch needs trust_on_first_use)
    arch: str
    num_classes: int
    categories_file: Optional[str]     # package resource, one class name per line in index order
    preprocess: Preprocess
    model_config: dict = field(default_factory=dict, hash=False)   # constructor kwargs besides num_classes
    source: str = ""
    license: str = ""
    metrics: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.sha256:
            _check_sha(self.sha256, f"weights entry {self.name!r}")
        url = urllib.parse.urlparse(self.url)
        # Plain http only for a mirror on this machine (tests serve files from 127.0.0.1).
        local = url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost")
        if url.scheme != "https" and not local:
            raise ValueError(f"weights entry {self.name!r}: url must be https, got {self.url!r}")
        if self.num_classes < 1:
            raise ValueError(f"weights entry {self.name!r}: num_classes must be positive")

    @property
    def file_name(self) -> str:
        """The cached file's name: the URL's last path segment."""
        return Path(urllib.parse.urlparse(self.url).path).name

    def categories(self) -> Optional[list[str]]:
        """Class names in index order, or None if the entry has none."""
        return None if self.categories_file is None else list(_read_categories(self.categories_file))

    def config(self) -> dict:
        """Constructor kwargs for ``build_model(self.arch, **config)``."""
        return {"num_classes": self.num_classes, **self.model_config}


@lru_cache(maxsize=None)
def _read_categories(resource: str) -> tuple[str, ...]:
    text = importlib.resources.files("inceptionv3").joinpath(resource).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def _check_sha(sha: str, what: str) -> None:
    if not (8 <= len(sha) <= 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"{what}: sha256 must be 8 to 64 lowercase hex characters, got {sha!r}")


_HALF = (0.5, 0.5, 0.5)   # mean = std = 0.5: inputs in [-1, 1], the TF convention


# One row per published set of weights; timm / FID variants are further rows with their own
# preprocess and model_config (e.g. count_include_pad=False, last_pool="max", 1008 classes).
_ENTRIES = (
    WeightsEntry(
        name="imagenet",
        url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        # torchvision publishes only this 8-hex prefix of the sha256, in the file name.
        sha256="0cc3c7bd",
        arch="inception_v3",
        num_classes=1000,
        categories_file="imagenet_classes.txt",
        # These weights were ported from TensorFlow and expect inputs in [-1, 1]; torchvision hides that
        # behind transform_input=True. Here it is simply this entry's mean/std.
        preprocess=Preprocess(input_size=299, resize_size=342, interpolation="bilinear",
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        model_config={"aux_logits": True, "count_include_pad": True, "last_pool": "avg"},
        source="torchvision IMAGENET1K_V1",
        license="BSD-3-Clause (torchvision); weights ported from TensorFlow (Apache-2.0)",
        metrics={"acc@1": 77.294, "acc@5": 93.450},
    ),
    WeightsEntry(
        name="fid",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
        # pytorch-fid publishes only this 8-hex prefix of the sha256, in the file name (torch.hub style).
        sha256="6726825d",
        arch="inception_v3",
        num_classes=1008,
        categories_file=None,
        # The FID metric modes (pytorch-fid / tf / clean, in metrics.py) squash to 299x299 without a crop;
        # this is the closest classification preset: inputs in [-1, 1] at 299 px.
        preprocess=Preprocess(input_size=299, resize_size=299, interpolation="bilinear",
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        # The TF 2015-12-05 graph as pytorch-fid ports it; its state dict has no aux head.
        model_config={"aux_logits": False, "count_include_pad": False, "last_pool": "max"},
        source="pytorch-fid (TF inception-2015-12-05, the FID network)",
        license="Apache-2.0 (pytorch-fid; weights ported from TensorFlow)",
    ),
    # timm's four InceptionV3 weight sets, as timm evaluates them: 299 px, crop 0.875 (timm resizes to
    # floor(299 / 0.875) = 341), bicubic, 1000 classes, torchvision's pooling (timm's InceptionV3 has no
    # TF-style pooling option, even for the TF ports). timm publishes no sha256 for these files (only
    # Hugging Face's LFS pointer records one): "" = none published, so the first download needs
    # --trust-on-first-use. Pin the LFS sha256 here once it has been checked.
    *(WeightsEntry(
        name=f"inception_v3.{tag}",
        url=f"https://huggingface.co/timm/inception_v3.{tag}/resolve/main/model.safetensors",
        sha256="",
        arch="inception_v3",
        num_classes=1000,
        categories_file="imagenet_classes.txt",
        preprocess=Preprocess(input_size=299, resize_size=341, interpolation="bicubic", mean=mean, std=std),
        # Only the torchvision port keeps the aux head in its file.
        model_config={"aux_logits": tag == "tv_in1k", "count_include_pad": True, "last_pool": "avg"},
        source=f"timm inception_v3.{tag}: {origin}",
        license="Apache-2.0 (timm model card)",
        metrics={"acc@1": top1, "acc@5": top5},
    # top-1 as the issue quotes timm's reports; top-5 from timm's results/results-imagenet.csv
    # (huggingface/pytorch-image-models @ 0173a139), whose rows read top-1 77.434 / 77.862 / 77.592 /
    # 78.806 for tv / tf / tf_adv / gluon: another evaluation run, within 0.04 points of these.
    ) for tag, origin, mean, std, top1, top5 in (
        ("tv_in1k", "torchvision's inception_v3_google-1a9a5a14.pth", _HALF, _HALF, 77.472, 93.474),
        ("tf_in1k", "TF-slim inception_v3_2016_08_28", _HALF, _HALF, 77.866, 93.644),
        ("tf_adv_in1k", "TF adv_inception_v3_2017_08_18 (adversarially trained)", _HALF, _HALF, 77.598,
         93.730),
        ("gluon_in1k", "Gluon CV model zoo", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 78.806, 94.374),
    )),
)
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in _ENTRIES}


def get_entry(name: str) -> WeightsEntry:
    """The registry entry called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}") from None


def cache_dir() -> Path:
    """Where downloads are kept: $INCEPTIONV3_HOME, else ~/.cache/inceptionv3 (created on use)."""
    path = Path(os.environ.get("INCEPTIONV3_HOME") or "~/.cache/inceptionv3").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _weights_dir() -> Path:
    path = cache_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: PathLike) -> str:
    """Full hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_digest(model: nn.Module) -> str:
    """sha256 of a model's state dict (names and values, sorted by name): the identity of weights held in
    memory, for caches and saved results that must not be mixed across weights."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(key.encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())   # numpy has no bf16
    return h.hexdigest()


def _sha_matches(expected: str, digest: str) -> bool:
    # A published prefix (e.g. the 8 hex digits in torchvision's file names) verifies only that prefix.
    return bool(expected) and digest.startswith(expected.lower())


def _unreachable(url: str, dest: Path, reason: str) -> WeightsError:
    return WeightsError(
        f"cannot download {url}: {reason}.\n"
        f"If this machine is offline, get the file elsewhere and place it as {dest.name!r} in {dest.parent}/ "
        f"(it is checked against its sha256), or pass a local weights file with --weights FILE."
    )


def download(url: str, sha256: Optional[str], dest: PathLike, progress: bool = True,
             timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest``, verifying its sha256 (full digest or published prefix).

    ``sha256=None`` skips the check; only trust-on-first-use does that, with the user's consent.
    The bytes stream into a temp file next to ``dest`` and are hashed on the way; only a complete, verified
    file is moved into place (os.replace), so ``dest`` is never half-written. Raises WeightsError.
    """
    from tqdm.auto import tqdm

    if sha256 is not None:
        _check_sha(sha256, f"download of {url}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        got = 0
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "inceptionv3"})
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=dest.name, disable=not progress) as bar:
                        while chunk := resp.read(_CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            got += len(chunk)
                            bar.update(len(chunk))
            except urllib.error.HTTPError as e:
                raise _unreachable(url, dest, f"HTTP {e.code} {e.reason}") from None
            except urllib.error.URLError as e:
                raise _unreachable(url, dest, str(e.reason)) from None
            except TimeoutError:
                if got == 0:
                    raise _unreachable(url, dest, f"no answer within {timeout:g} s") from None
                raise WeightsError(f"download of {url} stalled for {timeout:g} s after {got} bytes; "
                                   f"the partial file was removed, try again") from None
            except (http.client.IncompleteRead, ConnectionError, OSError) as e:
                raise WeightsError(f"download of {url} was interrupted after {got} bytes ({e!r}); "
                                   f"the partial file was removed, try again") from None
            if total is not None and got != total:
                raise WeightsError(f"download of {url} was cut off: got {got} of {total} bytes; "
                                   f"the partial file was removed, try again")
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if sha256 is not None and not _sha_matches(sha256, digest):
            raise WeightsError(f"sha256 mismatch for {url}: expected {sha256}, got {digest}; "
                               f"the downloaded file was removed")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s to %s (sha256 %s)", url, dest, digest)
    return dest


# File names that many publishers share (every Hugging Face repo has a model.safetensors): such files are
# cached under their entry's name so that entries do not overwrite each other.
_GENERIC_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")


def _cache_path(entry: WeightsEntry) -> Path:
    if entry.file_name in _GENERIC_FILE_NAMES:
        return _weights_dir() / entry.name / entry.file_name
    return _weights_dir() / entry.file_name


# Trust on first use: for files published without a hash, the hash of the first download (made with the
# user's consent) is pinned here, keyed by URL, and every later use is verified against it.
def _pins_file() -> Path:
    return _weights_dir() / "pinned-sha256.json"


def _pinned(entry: WeightsEntry) -> str:
    path = _pins_file()
    if not path.is_file():
        return ""
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get(entry.url, ""))
    except (json.JSONDecodeError, AttributeError):
        raise WeightsError(f"{path}: unreadable pinned hashes; delete it and download again with "
                           f"--trust-on-first-use") from None


def _pin(entry: WeightsEntry, digest: str) -> None:
    from .fileio import write_text_atomic

    path = _pins_file()
    pins = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    pins[entry.url] = digest
    write_text_atomic(path, json.dumps(pins, indent=1, sort_keys=True) + "\n")


def _fetch(entry: WeightsEntry, progress: bool, trust_on_first_use: bool = False) -> tuple[Path, str]:
    """(verified local path, full sha256) of an entry's file, downloading it if needed."""
    dest = _cache_path(entry)
    expected = entry.sha256 or _pinned(entry)
    if expected and dest.is_file():
        digest = sha256_file(dest)
        if _sha_matches(expected, digest):
            return dest, digest
        log.warning("cached %s fails its sha256 (expected %s, got %s); downloading it again",
                    dest, expected, digest)
    if not expected:
        if not trust_on_first_use:
            raise WeightsError(
                f"weights {entry.name!r}: {entry.url} is published without a sha256, so a download cannot be "
                f"verified. To accept the file as first downloaded and pin its hash for every later use, run "
                f"'inceptionv3 weights download {entry.name} --trust-on-first-use' (API: "
                f"fetch(entry, trust_on_first_use=True)).")
        download(entry.url, None, dest, progress=progress)
        digest = sha256_file(dest)
        _pin(entry, digest)
        log.warning("%s has no published sha256; pinned the downloaded file's, %s, in %s (trust on first "
                    "use)", entry.url, digest, _pins_file())
        return dest, digest
    download(entry.url, expected, dest, progress=progress)
    return dest, sha256_file(dest)


def fetch(entry: WeightsEntry, progress: bool = True, trust_on_first_use: bool = False) -> Path:
    """Local path of an entry's file: the cached copy if it passes the hash, else a fresh download.

    An entry without a published hash needs ``trust_on_first_use=True`` the first time: the downloaded file's
    sha256 is then pinned and checked on every later use.
    """
    return _fetch(entry, progress, trust_on_first_use)[0]


# ---------------------------------------------------------------------------------------------- reading


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    # A safetensors file starts with a little-endian u64 header length, then the JSON header.
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _decode_meta(meta: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in meta.items():
        if key in _JSON_FIELDS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise WeightsError(f"metadata field {key!r} is not valid JSON: {value[:80]!r}") from None
        out[key] = value
    return out


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:   # safetensors raises its own error types for truncated / non-safetensors files
        raise WeightsError(f"{path}: not a readable .safetensors file ({e}); it may be truncated") from None
    return sd, _decode_meta(meta)


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weightsunpickler" in str(e).lower():
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
            what = f" ({found.group(1)})" if found else ""
            raise WeightsError(
                f"{path}: loading this file needs arbitrary code execution: it pickles Python objects{what}, "
                f"not just tensors, so it was refused. If you trust its source, convert it once in your own "
                f"code: sd = torch.load(path, weights_only=False), take the state dict (sd['model'] or "
                f"module.state_dict()), then torch.save(sd, 'weights.pt') or "
                f"safetensors.torch.save_file(sd, 'weights.safetensors')."
            ) from None
        raise WeightsError(f"{path}: not a PyTorch weights file ({e})") from None
    except Exception as e:   # torch raises RuntimeError, EOFError, OSError, KeyError ... for damaged files
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'no detail'}); it may be truncated "
                           f"or not a weights file") from None
    meta = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping):
        meta = _decode_meta(obj["meta"])   # our training checkpoints: {"model": sd, "meta": {...}, ...}
    return _unwrap(obj, path), meta


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path, depth: int = 0) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the object itself, or under a common wrapper key."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping) and depth < 3:
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                if key not in _EMA_KEYS and any(isinstance(obj.get(k), Mapping) for k in _EMA_KEYS):
                    log.info("%s also holds EMA weights; loading %r", path, key)
                return _unwrap(obj[key], path, depth + 1)
    if isinstance(obj, Mapping):
        keys = list(obj)[:8]
        raise WeightsError(f"{path}: no state dict found (top-level keys: {keys}); expected a dict of "
                           f"tensors or one under {list(_WRAPPER_KEYS[:3])}")
    raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def _strip_prefixes(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        while new.startswith(_PREFIXES):
            new = new.split(".", 1)[1]
        if new in out:
            raise WeightsError(f"{path}: keys {key!r} and another both become {new!r} after removing "
                               f"wrapper prefixes {list(_PREFIXES)}")
        out[new] = value
    return out


def _check_finite(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf, first: {bad[:5]}; "
                           f"the weights are broken (diverged training?)")


def read_state_dict(path: PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a .pth/.pt or .safetensors file, without running pickled code.

    Strips 'module.' / '_orig_mod.' prefixes, unwraps training checkpoints ({"model": sd, "meta": ...},
    "state_dict", "model_state_dict", "ema") and refuses NaN/Inf weights. Metadata is {} for bare state
    dicts. Raises WeightsError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty")
    sd, meta = _read_safetensors(path) if _is_safetensors(path) else _read_torch(path)
    if not sd:
        raise WeightsError(f"{path}: holds no tensors")
    sd = _strip_prefixes(sd, path)
    _check_finite(sd, path)
    return sd, meta


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class ModelMeta:
    """What a loaded model's weights say about how to use it."""
    arch: str
    num_classes: int
    model_config: dict
    preprocess: Preprocess
    class_names: Optional[list[str]]
    source: str                 # registry name or file path
    sha256: Optional[str]


def _resolve(name_or_path: Union[str, os.PathLike], progress: bool = True
             ) -> tuple[Path, Optional[WeightsEntry], str, Optional[str]]:
    """(local file, registry entry or None, source label, sha256 if already known). Registry names win
    over same-named paths (a dataset folder called 'imagenet' is common); pass a Path to force a file."""
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        entry = REGISTRY[name_or_path]
        path, digest = _fetch(entry, progress)
        return path, entry, name_or_path, digest
    path = Path(name_or_path)
    if not path.is_file():
        raise WeightsError(f"{name_or_path}: no such weights file, and not a known weights name "
                           f"(known: {', '.join(REGISTRY)})")
    return path, None, str(path), None


def _entry_for_sha(digest: str) -> Optional[WeightsEntry]:
    return next((e for e in REGISTRY.values() if _sha_matches(e.sha256, digest)), None)


def _guess_preprocess(source: str) -> Preprocess:
    log.warning("%s does not say how its inputs were preprocessed; guessing the ImageNet preset "
                "(resize 342, crop 299, mean=std=0.5). Results may be off if that is wrong.", source)
    return REGISTRY["imagenet"].preprocess


def _first(keys: list[str], n: int = 5) -> str:
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
    if len(missing) > len(model_sd) // 2:
        guess = _infer_arch(sd)
        looks = f", the file looks like {guess}" if guess else ""
        hints.append(f"wrong --arch? the model is {arch}{looks}")
    if _CLASSIFIER in misshaped:
        hints.append(f"class count differs (file {sd[_CLASSIFIER].shape[0]}, model "
                     f"{model_sd[_CLASSIFIER].shape[0]}): use --num-classes or reset the classifier")
    if any(k.startswith("AuxLogits.") for k in unexpected):
        hints.append("the file has an aux head: build with aux_logits=True, or load non-strict to drop it")
    if any(k.startswith("AuxLogits.") for k in missing) and not any(k.startswith("AuxLogits.") for k in sd):
        hints.append("the file has no aux head: build with aux_logits=False")
    conv = _FIRST_CONV.get(arch)
    if conv in misshaped:
        hints.append(f"input channels differ (file {sd[conv].shape[1]}, model {model_sd[conv].shape[1]})")
    return "; ".join(hints)


def _apply_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], label: str, strict: bool,
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
        lines = [f"{label}: the weights do not fit this {arch} model"]
        if missing:
            lines.append(f"  missing from the file ({len(missing)}): {_first(missing)}")
        if unexpected:
            lines.append(f"  not in the model ({len(unexpected)}): {_first(unexpected)}")
        if misshaped:
            shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}"
                      for k in misshaped]
            lines.append(f"  mis-shaped ({len(misshaped)}): {_first(shapes)}")
        hint = _hint(sd, model_sd, arch, missing, unexpected, misshaped)
        if hint:
            lines.append(f"  hint: {hint}")
        if strict:
            raise WeightsError("\n".join(lines))
        log.warning("loading non-strict, left at their initial values or ignored:\n%s", "\n".join(lines[1:]))
        sd = {k: v for k, v in sd.items() if k in model_sd and k not in misshaped}
    model.load_state_dict(sd, strict=False)


def _meta_for(meta: dict, entry: Optional[WeightsEntry], arch: str, model_config: dict, num_classes: int,
              source: str, digest: Optional[str], keep_names: bool = True) -> ModelMeta:
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
        preprocess = _guess_preprocess(source)
    names = meta.get("class_names") if keep_names else None
    if names is None and keep_names and entry is not None and entry.num_classes == num_classes:
        names = entry.categories()
    if names is not None and len(names) != num_classes:
        log.warning("%s: %d class names for %d classes; ignoring the names", source, len(names), num_classes)
        names = None
    return ModelMeta(arch=arch, num_classes=num_classes, model_config=dict(model_config),
                     preprocess=preprocess,
                     class_names=list(names) if names is not None else None, source=source, sha256=digest)


def _read(name_or_path: Union[str, os.PathLike], progress: bool = True
          ) -> tuple[dict[str, torch.Tensor], dict, Optional[WeightsEntry], str, str]:
    """(state dict, metadata, registry entry by name or by hash, source label, sha256)."""
    path, entry, source, digest = _resolve(name_or_path, progress)
    sd, meta = read_state_dict(path)
    if digest is None:
        digest = sha256_file(path)
    if entry is None:
        entry = _entry_for_sha(digest)
        if entry is not None:
            log.info("%s is the registry's %r weights (sha256 %s)", path, entry.name, digest[:12])
    return sd, meta, entry, source, digest


def load_weights(model: nn.Module, name_or_path: Union[str, os.PathLike], strict: bool = True) -> ModelMeta:
    """Load a registry name or weights file into ``model``; returns (and sets ``model.meta``) its ModelMeta.

    A 3-channel first conv is summed into a 1-channel model's. Any key or shape mismatch raises one
    WeightsError listing the missing, unexpected and mis-shaped keys; ``strict=False`` loads what fits.
    """
    sd, meta, entry, source, digest = _read(name_or_path)
    _apply_state_dict(model, sd, source, strict)
    arch = getattr(model, "arch", "inception_v3")
    config = dict(getattr(model, "config", {}))
    num_classes = int(getattr(model, "num_classes", config.get("num_classes", 0)))
    model.meta = _meta_for(meta, entry, arch, config, num_classes, source, digest)
    return model.meta


def _infer_arch(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    if "conv1.weight" in sd or any(k.startswith("inception1.") for k in sd):
        return "inception_mini"
    if _FIRST_CONV["inception_v3"] in sd:
        return "inception_v3"
    return None


def _infer_config(sd: Mapping[str, torch.Tensor], label: str) -> tuple[str, dict]:
    """(arch, constructor kwargs) of a bare torchvision/timm/our state dict, from its keys and shapes."""
    arch = _infer_arch(sd)
    if arch is None or _CLASSIFIER not in sd:
        raise WeightsError(f"{label}: does not look like an InceptionV3 state dict (no "
                           f"{_FIRST_CONV['inception_v3']!r} or {_CLASSIFIER!r}; first keys: {list(sd)[:5]})")
    config: dict[str, Any] = {"num_classes": int(sd[_CLASSIFIER].shape[0]),
                              "in_chans": int(sd[_FIRST_CONV[arch]].shape[1])}
    if arch == "inception_v3":
        config["aux_logits"] = any(k.startswith("AuxLogits.") for k in sd)
    return arch, config


def load_model(name_or_path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
               progress: bool = True, **overrides: Any) -> nn.Module:
    """Build a model from a registry name or weights file and load it, in eval mode, with ``model.meta``.

    The arch and config come from the registry entry, our .safetensors metadata, or (bare torchvision/timm
    state dicts) the tensor shapes. ``overrides`` are constructor kwargs (and ``arch``); a different
    ``num_classes`` keeps the backbone and starts a fresh classifier, ``aux_logits=False`` drops the aux head.
    """
    from .model import build_model   # imported here: model.py may import this module lazily

    sd, meta, entry, source, digest = _read(name_or_path, progress)
    if meta.get("arch") is not None:
        arch, config = str(meta["arch"]), dict(meta.get("model_config") or {})
        if meta.get("num_classes") is not None:
            config["num_classes"] = int(meta["num_classes"])
    elif entry is not None:
        arch, config = entry.arch, entry.config()
    else:
        arch, config = _infer_config(sd, source)
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
    _apply_state_dict(model, sd, source, strict=True, skip_prefixes=skip)
    model.meta = _meta_for(meta, entry, arch, dict(model.config), model.num_classes, source, digest,
                           keep_names=not new_head)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------- saving


def _contiguous_unshared(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses non-contiguous views and tensors sharing storage (tied weights): copy those.
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, t in sd.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        elif t.numel():
            seen.add(ptr)
        out[key] = t
    return out


def save_model(model: nn.Module, path: PathLike, class_names: Optional[list[str]] = None,
               preprocess: Optional[Preprocess] = None, extra: Optional[dict] = None) -> Path:
    """Write ``model`` as one self-describing .safetensors file, atomically.

    Metadata: format, arch, model_config, num_classes, class_names, preprocess and ``extra`` (JSON values),
    enough for ``load_model(path)`` to rebuild the same model. Class names and preprocessing default to
    ``model.meta``'s when it has them.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: save_model writes .safetensors files; use that suffix")
    config = dict(getattr(model, "config", {}))
    num_classes = int(getattr(model, "num_classes", config.get("num_classes", 0)))
    meta: Optional[ModelMeta] = getattr(model, "meta", None)
    if class_names is None and meta is not None and meta.class_names and len(meta.class_names) == num_classes:
        class_names = meta.class_names
    if preprocess is None and meta is not None:
        preprocess = meta.preprocess
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a {num_classes}-class model")
    fields: dict[str, Any] = {
        "format": FORMAT,
        "arch": getattr(model, "arch", "inception_v3"),
        "model_config": config,
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names is not None else None,
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        "extra": extra or {},
    }
    metadata = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items() if v is not None}
    tensors = _contiguous_unshared(model.state_dict())

    with atomic_path(path) as tmp:   # temp file beside path, fsync, os.replace
        save_file(tensors, str(tmp), metadata=metadata)
    return path
