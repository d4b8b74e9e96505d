"""Downloads and the cache: each file verified against its entry's sha256 (or the prefix a publisher put
in the file name, and from the first verified download on, the full digest recorded then) as it streams,
moved into place only when complete, and pinned on first use for files published without a hash.

A download has an overall deadline besides the per-read timeout, checks the size the server announced,
and never follows a redirect from https to plain http. Files torch.hub already holds (torchvision's and
pytorch-fid's weights in $TORCH_HOME/hub/checkpoints) are used in place when they pass the hash.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..runtime.files import atomic_path, write_text_atomic
from .errors import WeightsError
from .registry import WeightsEntry, check_sha

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0             # socket timeout for connecting and for each read while downloading
# The whole transfer's limit (a server trickling a byte now and then never trips the per-read timeout);
# $INCEPTIONV3_DOWNLOAD_DEADLINE (seconds) overrides it. An hour covers 100 MB at 30 KB/s.
DEADLINE_S = 3600.0
DEADLINE_ENV = "INCEPTIONV3_DOWNLOAD_DEADLINE"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where downloads are kept: $INCEPTIONV3_HOME, else ~/.cache/inceptionv3 (created on use)."""
    path = Path(os.environ.get("INCEPTIONV3_HOME") or "~/.cache/inceptionv3").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_dir() -> Path:
    """Where downloaded weights are kept: cache_dir()/weights (created on use)."""
    path = cache_dir() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Full hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha_matches(expected: str, digest: str) -> bool:
    """Whether ``digest`` (a full hex sha256) is the one ``expected`` names; "" never matches."""
    # A published prefix (e.g. the 8 hex digits in torchvision's file names) verifies only that prefix.
    return bool(expected) and digest.startswith(expected.lower())


def _unreachable(url: str, dest: Path, reason: str) -> WeightsError:
    return WeightsError(
        f"cannot download {url}: {reason}.\n"
        f"If this machine is offline, get the file elsewhere and place it as {dest.name!r} in {dest.parent}/ "
        f"(it is checked against its sha256), or pass a local weights file with --weights FILE."
    )


def download_deadline() -> float:
    """The overall download limit in seconds: $INCEPTIONV3_DOWNLOAD_DEADLINE, else ``DEADLINE_S``."""
    raw = os.environ.get(DEADLINE_ENV)
    if raw is None or raw == "":
        return DEADLINE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{DEADLINE_ENV}={raw!r}: expected a positive number of seconds")
    return value


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """Follows redirects, except from https to anything else: that would hand the transfer to whoever
    sits on the network path (the hash still checks the bytes, but a pin on first use would not)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlparse(req.full_url), urllib.parse.urlparse(newurl)
        if old.scheme == "https" and new.scheme != "https":
            raise WeightsError(f"download of {req.full_url}: the server redirects to {newurl}, which is not "
                               f"https; refused. Download the file over https elsewhere and pass it with "
                               f"--weights FILE")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "inceptionv3"})
    return urllib.request.build_opener(_NoDowngrade).open(request, timeout=timeout)


def _stream(url: str, out, dest: Path, progress: bool, timeout: float, deadline: float) -> tuple[str, int]:
    """Copy the response body into ``out``; (sha256, bytes). Raises WeightsError for every failure."""
    h = hashlib.sha256()
    got = 0
    start = time.monotonic()
    # No single read may wait past the deadline either.
    read_timeout = min(timeout, deadline)
    try:
        with _open(url, read_timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dest.name, disable=not progress) as bar:
                # read1: whatever one receive brings, so a trickling server cannot hold a read open.
                while chunk := resp.read1(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
                    if time.monotonic() - start > deadline:
                        raise WeightsError(
                            f"download of {url} did not finish within {deadline:g} s ({got} bytes so far; "
                            f"{DEADLINE_ENV} sets the limit); the partial file was removed, try again")
    except urllib.error.HTTPError as e:
        raise _unreachable(url, dest, f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _unreachable(url, dest, str(e.reason)) from None
    except TimeoutError:
        if got == 0:
            raise _unreachable(url, dest, f"no answer within {read_timeout:g} s") from None
        raise WeightsError(f"download of {url} stalled for {read_timeout:g} s after {got} bytes; "
                           f"the partial file was removed, try again") from None
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        raise WeightsError(f"download of {url} was interrupted after {got} bytes ({e!r}); "
                           f"the partial file was removed, try again") from None
    if total is not None and got != total:
        raise WeightsError(f"download of {url} was cut off: got {got} of {total} bytes; "
                           f"the partial file was removed, try again")
    return h.hexdigest(), got


def _download(url: str, sha256: str | None, dest: Path, progress: bool, timeout: float,
              deadline: float | None) -> str:
    if sha256 is not None:
        check_sha(sha256, f"download of {url}")
    # atomic_path: an unpredictable O_EXCL temp file beside dest, the umask's mode, renamed when done.
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            digest, _ = _stream(url, out, dest, progress, timeout,
                                download_deadline() if deadline is None else deadline)
        if sha256 is not None and not sha_matches(sha256, digest):
            raise WeightsError(f"sha256 mismatch for {url}: expected {sha256}, got {digest}; "
                               f"the downloaded file was removed")
    log.info("downloaded %s to %s (sha256 %s)", url, dest, digest)
    return digest


def download(url: str, sha256: str | None, dest: str | os.PathLike, progress: bool = True,
             timeout: float = TIMEOUT_S, deadline: float | None = None) -> Path:
    """Download ``url`` to ``dest``, verifying its sha256 (full digest or published prefix).

    ``sha256=None`` skips the check; only trust-on-first-use does that, with the user's consent.
    The bytes stream into a temp file next to ``dest`` and are hashed on the way; only a complete, verified
    file of the announced size is moved into place (os.replace), so ``dest`` is never half-written.
    ``timeout`` bounds each read, ``deadline`` (default ``download_deadline()``) the whole transfer.
    Raises WeightsError.
    """
    dest = Path(dest)
    _download(url, sha256, dest, progress, timeout, deadline)
    return dest


# File names that many publishers share (every Hugging Face repo has a model.safetensors): such files are
# cached under their entry's name so that entries do not overwrite each other.
_GENERIC_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")


def cache_path(entry: WeightsEntry) -> Path:
    """Where an entry's downloaded file is kept."""
    if entry.file_name in _GENERIC_FILE_NAMES:
        return weights_dir() / entry.name / entry.file_name
    return weights_dir() / entry.file_name


# Trust on first use: for files published without a hash, the hash of the first download (made with the
# user's consent) is pinned here, keyed by URL, and every later use is verified against it. Entries
# published with only a hash prefix get their full digest recorded here on the first verified use.
def pins_file() -> Path:
    """The recorded sha256 digests (pins on first use, full digests of published prefixes), by URL."""
    return weights_dir() / "pinned-sha256.json"


def _pins() -> dict[str, str]:
    path = pins_file()
    if not path.is_file():
        return {}
    try:
        pins = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        pins = None
    if not isinstance(pins, dict):
        raise WeightsError(f"{path}: unreadable pinned hashes; delete it and download again (with "
                           f"--trust-on-first-use for entries published without a sha256)")
    return {str(k): str(v) for k, v in pins.items()}


def _pinned(entry: WeightsEntry) -> str:
    return _pins().get(entry.url, "")


def _pin(entry: WeightsEntry, digest: str) -> None:
    pins = _pins()
    pins[entry.url] = digest
    write_text_atomic(pins_file(), json.dumps(pins, indent=1, sort_keys=True) + "\n")


def _expected(entry: WeightsEntry) -> str:
    """The digest to check an entry's file against: the full one when known (published, or recorded on
    the first verified download of a published prefix), else the prefix, else a pin, else ""."""
    pinned = _pinned(entry)
    if not entry.sha256:
        return pinned
    if len(entry.sha256) < 64 and pinned:
        if sha_matches(entry.sha256, pinned):
            return pinned
        log.warning("%s: the recorded sha256 %s does not start with the published %s; ignoring it",
                    pins_file(), pinned, entry.sha256)
    return entry.sha256


def _verified(entry: WeightsEntry, digest: str) -> None:
    """Record the full digest of a file that passed a published prefix, so later uses check all of it."""
    if entry.sha256 and len(entry.sha256) < 64 and _pinned(entry) != digest:
        try:
            _pin(entry, digest)
        except OSError as e:   # a read-only shared cache: the file is verified, only the record is lost
            log.warning("could not record the full sha256 of %s: %s", entry.file_name, e)
            return
        log.info("recorded the full sha256 of %s, %s, in %s", entry.file_name, digest, pins_file())


def torch_hub_dir() -> Path:
    """Where torch.hub keeps downloaded weights: $TORCH_HOME/hub/checkpoints, else
    $XDG_CACHE_HOME/torch/hub/checkpoints, else ~/.cache/torch/hub/checkpoints (torch.hub's own rule)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def _check_loads(path: Path, url: str) -> None:
    from .io import read_state_dict  # torch: only for a first, unverifiable download
    try:
        read_state_dict(path)
    except WeightsError as e:
        path.unlink(missing_ok=True)
        raise WeightsError(f"{url}: the downloaded file is not usable weights ({e}); it was removed and "
                           f"its hash not pinned. Try again later") from None


def fetch_verified(entry: WeightsEntry, progress: bool, trust_on_first_use: bool = False) -> tuple[Path, str]:
    """(verified local path, full sha256) of an entry's file: our cached copy, torch.hub's copy, or a
    download."""
    dest = cache_path(entry)
    expected = _expected(entry)
    wrong = None   # the digest of a cached file that fails the hash
    if expected:
        for candidate in (dest, torch_hub_dir() / entry.file_name):
            if not candidate.is_file():
                continue
            digest = sha256_file(candidate)
            if sha_matches(expected, digest):
                _verified(entry, digest)
                return candidate, digest
            if candidate == dest:
                wrong = digest
                log.warning("cached %s fails its sha256 (expected %s, got %s); downloading it again",
                            dest, expected, digest)
    if not expected:
        if not trust_on_first_use:
            raise WeightsError(
                f"weights {entry.name!r}: {entry.url} is published without a sha256, so a download cannot be "
                f"verified. To accept the file as first downloaded and pin its hash for every later use, run "
                f"'inceptionv3 weights download {entry.name} --trust-on-first-use' (API: "
                f"fetch(entry, trust_on_first_use=True)).")
        digest = _download(entry.url, None, dest, progress, TIMEOUT_S, None)
        _check_loads(dest, entry.url)   # never pin a file that is not weights (a truncated transfer)
        _pin(entry, digest)
        log.warning("%s has no published sha256; pinned the downloaded file's, %s, in %s (trust on first "
                    "use)", entry.url, digest, pins_file())
        return dest, digest
    try:
        digest = _download(entry.url, expected, dest, progress, TIMEOUT_S, None)
    except WeightsError as e:
        if wrong is None:
            raise
        raise WeightsError(f"{dest} is in the cache but is not the right file: its sha256 is {wrong}, the "
                           f"entry's is {expected}. Replace it with the published file ({entry.url}), or "
                           f"delete it. A new download failed too: {str(e).splitlines()[0]}") from None
    _verified(entry, digest)
    return dest, digest


def fetch(entry: WeightsEntry, progress: bool = True, trust_on_first_use: bool = False) -> Path:
    """Local path of an entry's file: the cached copy if it passes the hash, else a fresh download.

    An entry without a published hash needs ``trust_on_first_use=True`` the first time: the downloaded file's
    sha256 is then pinned and checked on every later use.
    """
    return fetch_verified(entry, progress, trust_on_first_use)[0]
