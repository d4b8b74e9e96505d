"""Files the tool writes and removes, safely.

- ``atomic_path`` / ``write_text_atomic``: a crash, a kill or a full disk never leaves a half-written file
  under the real name. The temporary file is created beside the destination under an unpredictable name
  with ``O_EXCL | O_NOFOLLOW`` (a symlink planted in a shared folder cannot redirect the write), gets the
  mode the umask gives every new file, and is renamed over the destination. A failed write raises one
  ``WriteError`` naming the destination (never the temporary name) and removes the temporary file;
  temporary files of killed runs are recognised by their name and removed by the next write into the
  same folder.
- ``make_owned_dir`` / ``remove_owned_dir``: the one guard for recursive deletes. A folder the tool may
  delete carries a marker file written when the tool made it; a folder without it is never removed.
- ``quote_path`` / ``unquote_path``: one path per line in text files and logs, unambiguous for any name.
- ``os_error_reason``: a short human reason for an ``OSError`` (symlink loop, permission denied, ...).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class WriteError(OSError):
    """A file that could not be written or removed; the message names the destination and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str, code: int | None = None,
                 action: str = "write") -> None:
        super().__init__(code, reason)
        self.path, self.reason, self.action = str(path), reason, action

    def __str__(self) -> str:
        return f"cannot {self.action} {quote_path(self.path)}: {self.reason}"

    def __reduce__(self):  # keep the fields when pickled across processes
        return (type(self), (self.path, self.reason, self.errno, self.action))


_REASONS = {
    errno.ELOOP: "symlink loop (the link leads back to itself)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for this file system or the process's file-size limit",
    errno.EIO: "input/output error (a failing disk or network drive)",
}


def os_error_reason(err: OSError, path: str | os.PathLike | None = None) -> str:
    """A short human reason for ``err``; given the ``path`` that failed, a missing file that is a symlink
    is told as a broken symlink (with its target)."""
    if err.errno == errno.ENOENT:
        if path is not None and os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"broken symlink (it points to {quote_path(target)}, which does not exist)"
        return "no such file or directory"
    reason = _REASONS.get(err.errno or -1)
    if reason is not None:
        return reason
    return err.strerror or str(err) or type(err).__name__


# One path per line. A name is written as it is unless a reader could misread it: control characters
# (a newline splits it, a carriage return hides text in a terminal), the other line breaks that
# str.splitlines honours, leading or trailing white space (readers strip lines), a leading '"' or '#'
# (quote and comment markers), and bytes that are not UTF-8 (Python holds them as lone surrogates).
# Such a name is written as a JSON string: quoted, with \n, \t, \uXXXX escapes; json.loads reads it back.
_NEEDS_QUOTES = re.compile(r'[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]|^[\s"#]|\s$')


def quote_path(path: str | os.PathLike) -> str:
    """``path`` as one line of text: unchanged when unambiguous, else a JSON string (see above)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not _NEEDS_QUOTES.search(text):
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    try:
        quoted.encode("utf-8")
    except UnicodeEncodeError:   # lone surrogates (non-UTF-8 bytes): escape them as \udcXX
        quoted = json.dumps(text)
    return quoted


def unquote_path(line: str) -> str:
    """The path of one line that ``quote_path`` wrote (its line break already removed)."""
    if not line.startswith('"'):
        return line
    try:
        value = json.loads(line)
    except ValueError:
        value = None
    if not isinstance(value, str):
        # A bad line of a text file is a ValueError, whatever JSON type it held.
        raise ValueError(f"{line[:80]!r}: a quoted path must be one JSON string, e.g. \"a\\nb.jpg\"")  # noqa: TRY004
    return value


def path_lines(paths: Iterable[str | os.PathLike]) -> str:
    """The text of a one-path-per-line file: each path quoted as ``quote_path`` says, each line ended."""
    return "".join(quote_path(p) + "\n" for p in paths)


def read_path_lines(text: str) -> list[str]:
    """The paths of a file ``path_lines`` wrote (lines split on '\\n' only; a trailing '\\r' dropped)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [unquote_path(line.removesuffix("\r")) for line in lines]


# Temporary files: ".{name}.iv3-{host}-{pid}-{random}.tmp{suffix}". The host tag and the pid tell a
# later run whether the writer is gone (on this host: its pid no longer runs; on another one sharing
# the folder: untouched for a day); the random part makes the name unguessable.
_TEMP = re.compile(r"^\..*\.iv3-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{16}\.tmp[^/]*$")
_FOREIGN_STALE_SECONDS = 24 * 3600
_NAME_KEEP = 96   # characters of the destination's name kept in the temporary name (NAME_MAX is 255)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(dest: str | os.PathLike) -> Path:
    """An unpredictable temporary name beside ``dest``, with its suffix, that ``clean_stale_temps``
    recognises as ours. Create it with ``O_EXCL | O_NOFOLLOW`` (``atomic_path`` does)."""
    dest = Path(dest)
    name = f".{dest.name[:_NAME_KEEP]}.iv3-{_host_tag()}-{os.getpid()}-{secrets.token_hex(8)}.tmp{dest.suffix}"
    return dest.with_name(name)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # another user's process, or no right to ask: assume it runs
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of writers that are gone (killed runs) from ``folder``; returns them.

    Only names ``temp_name`` makes are considered, and only regular files (never a symlink or folder).
    """
    removed: list[Path] = []
    host = _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False):
            continue
        if m["host"] == host:
            stale = not _running(int(m["pid"]))
        else:
            try:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > _FOREIGN_STALE_SECONDS
            except OSError:
                continue
        if stale:
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(Path(entry.path))
            log.info("removed %s, left by a run that was stopped", quote_path(entry.path))
    return removed


def new_file_mode() -> int:
    """The mode a new file gets under this process's umask (0o666 & ~umask)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:   # reading it changes nothing
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # not Linux: the only portable way to read it is to set it
    os.umask(mask)
    return 0o666 & ~mask


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail   # root may use the reserved blocks
    return blocks * st.f_frsize


_FIXES = {errno.ENOSPC: "; free some space or write elsewhere", errno.EDQUOT: "; free some space or write elsewhere",
          errno.EACCES: "; choose a folder you can write to", errno.EROFS: "; choose a folder you can write to"}
_FULL_BYTES = 1 << 20   # less than this free after a failed write: the disk filled up


def _write_error(err: BaseException, dest: Path) -> WriteError | None:
    """The one-line error of a failed write, or None when ``err`` is not about writing the file.

    Writers report a full disk in their own words (torch: "unexpected pos", safetensors: an I/O error
    string); when the folder has (almost) no space left, that is the reason whatever the words.
    """
    if isinstance(err, WriteError):
        return WriteError(dest, err.reason, err.errno, err.action)
    if isinstance(err, OSError) and err.errno is not None:
        return WriteError(dest, os_error_reason(err) + _FIXES.get(err.errno, ""), err.errno)
    if isinstance(err, Exception) and not isinstance(err, (KeyboardInterrupt, ValueError, TypeError)):
        free = _free_bytes(dest.parent)
        if free is not None and free < _FULL_BYTES:
            return WriteError(dest, "no space left on device; free some space or write elsewhere",
                              errno.ENOSPC)
        if isinstance(err, OSError):
            return WriteError(dest, str(err) or type(err).__name__)
    return None


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass   # some file systems cannot sync a folder; the rename itself is atomic
    finally:
        os.close(fd)


def _make_parent(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(dest, f"cannot create its folder ({os_error_reason(e)})", e.errno) from None
    if not dest.parent.is_dir():
        raise WriteError(dest, f"{quote_path(dest.parent)} is not a folder", errno.ENOTDIR)


def _create_temp(dest: Path) -> Path:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(8):
        tmp = temp_name(dest)
        try:
            fd = os.open(tmp, flags, 0o666)   # the umask applies, as to any new file
        except FileExistsError:
            continue
        except OSError as e:
            raise WriteError(dest, os_error_reason(e), e.errno) from None
        os.close(fd)
        return tmp
    raise WriteError(dest, "could not create a temporary file beside it", errno.EEXIST)


def _commit(tmp: Path, dest: Path) -> None:
    """Give the written temporary file the umask's mode, sync it and rename it over ``dest``."""
    try:
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise WriteError(dest, "its temporary file was replaced by a symlink; not following it",
                             e.errno) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WriteError(dest, "its temporary file was replaced by something that is not a file")
        # Writers that make their own file (safetensors writes 0600) get the mode of every other output.
        os.fchmod(fd, new_file_mode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if dest.is_dir() and not dest.is_symlink():
        raise WriteError(dest, "a folder of that name exists; choose a file name", errno.EISDIR)
    os.replace(tmp, dest)
    _fsync_folder(dest.parent)


@contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``dest`` (same suffix) to write by name; on success it
    takes the umask's mode, is synced and renamed over ``dest``.

    Any failure removes the temporary file; a failure to write (disk full, quota, permissions, a
    writer's own words for a full disk) is raised as one ``WriteError`` naming ``dest``. Stale
    temporary files of killed runs in the same folder are removed first.
    """
    dest = Path(dest)
    _make_parent(dest)
    clean_stale_temps(dest.parent)
    tmp = _create_temp(dest)
    try:
        try:
            yield tmp
            _commit(tmp, dest)
        except BaseException as e:
            error = _write_error(e, dest)
            if error is None:
                raise
            raise error from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_text_atomic(dest: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` atomically (``atomic_path``). Bytes of file names that are not
    UTF-8 (held as surrogate escapes) are written back as the bytes they were."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    return Path(dest)


OWNER_MARK = ".inceptionv3-made-this"


def make_owned_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents) as one the tool may later remove with ``remove_owned_dir``.

    An existing folder is taken over only when it is empty or already ours; one holding anything else
    is refused (ValueError): the tool never deletes what it did not make.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(folder, os_error_reason(e), e.errno, "create") from None
    if folder.is_symlink() or not folder.is_dir():
        raise ValueError(f"{quote_path(folder)}: not a folder the tool can use (a symlink or a file); "
                         "choose another path")
    if is_owned_dir(folder):
        return folder
    if any(True for _ in folder.iterdir()):
        raise ValueError(f"{quote_path(folder)} exists and holds files inceptionv3 did not write; choose "
                         "another path or empty it")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(folder / OWNER_MARK, flags, 0o666)
    except FileExistsError:
        return folder
    except OSError as e:
        raise WriteError(folder / OWNER_MARK, os_error_reason(e), e.errno) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("This folder was made by inceptionv3, which may remove it when its work is done.\n")
    return folder


def is_owned_dir(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a real folder (not a symlink) holding the marker ``make_owned_dir`` wrote."""
    folder = Path(folder)
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        return stat.S_ISREG(os.lstat(folder / OWNER_MARK).st_mode)
    except OSError:
        return False


def remove_owned_dir(folder: str | os.PathLike, missing_ok: bool = True) -> None:
    """Remove ``folder`` and everything in it, only if ``make_owned_dir`` made it (else ValueError).

    The marker goes last, so a removal that is interrupted leaves a folder the next one still removes.
    """
    folder = Path(folder)
    if not os.path.lexists(folder):
        if missing_ok:
            return
        raise FileNotFoundError(errno.ENOENT, "no such folder", str(folder))
    if not is_owned_dir(folder):
        raise ValueError(f"{quote_path(folder)}: not removing it, inceptionv3 did not make this folder "
                         f"(no {OWNER_MARK} inside); remove it yourself if it is safe to")

    def failed(_fn, path, exc) -> None:
        err = exc if isinstance(exc, BaseException) else exc[1]
        if isinstance(err, FileNotFoundError):
            return
        raise WriteError(path, os_error_reason(err, path), getattr(err, "errno", None), "remove") from None

    try:
        for entry in list(os.scandir(folder)):
            if entry.name == OWNER_MARK:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, onerror=failed)   # rmtree never follows symlinks
            else:
                os.unlink(entry.path)
        os.unlink(folder / OWNER_MARK)
        os.rmdir(folder)
    except WriteError:
        raise
    except FileNotFoundError:
        pass
    except OSError as e:
        raise WriteError(folder, os_error_reason(e), e.errno, "remove") from None
