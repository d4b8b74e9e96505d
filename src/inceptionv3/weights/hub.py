"""Downloads and the cache: each file verified against its entry's sha256 (or the prefix a publisher put
in the file name) as it streams, moved into place only when complete, and pinned on first use for files
published without a hash."""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from ..runtime.files import write_text_atomic
from .errors import WeightsError
from .registry import WeightsEntry, check_sha

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0             # socket timeout for connecting and for each read while downloading
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where downloads are kept: $INCEPTIONV3_HOME, else ~/.cache/inceptionv3 (created on use)."""
    path = Path(os.environ.get("INCEPTIONV3_HOME") or "~/.cache/inceptionv3").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _weights_dir() -> Path:
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


def download(url: str, sha256: str | None, dest: str | os.PathLike, progress: bool = True,
             timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest``, verifying its sha256 (full digest or published prefix).

    ``sha256=None`` skips the check; only trust-on-first-use does that, with the user's consent.
    The bytes stream into a temp file next to ``dest`` and are hashed on the way; only a complete, verified
    file is moved into place (os.replace), so ``dest`` is never half-written. Raises WeightsError.
    """
    if sha256 is not None:
        check_sha(sha256, f"download of {url}")
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
        if sha256 is not None and not sha_matches(sha256, digest):
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
    path = _pins_file()
    pins = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    pins[entry.url] = digest
    write_text_atomic(path, json.dumps(pins, indent=1, sort_keys=True) + "\n")


def fetch_verified(entry: WeightsEntry, progress: bool, trust_on_first_use: bool = False) -> tuple[Path, str]:
    """(verified local path, full sha256) of an entry's file, downloading it if needed."""
    dest = _cache_path(entry)
    expected = entry.sha256 or _pinned(entry)
    if expected and dest.is_file():
        digest = sha256_file(dest)
        if sha_matches(expected, digest):
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
    return fetch_verified(entry, progress, trust_on_first_use)[0]
