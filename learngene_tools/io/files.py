"""Files: safe input opening, output-path checks, atomic writes and whole-file hashes (standard library only).

Inputs must be regular files: a FIFO, a device node, a socket or a /proc pseudo-file is
refused before it is opened (opening a FIFO for reading blocks until a writer comes).
Outputs are written to a temporary file beside them, named `.OUT.lgt-tmp-<pid>-<random>`,
then renamed; a later write to the same output removes the temporary files of dead processes.
Every OS error becomes one `LgtError` line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from learngene_tools.errors import InvalidFileError, NotFoundError, OutputError

_CHUNK = 1 << 20
TEMP_TAG = ".lgt-tmp-"
_NAME_ROOM = 200  # bytes of the output name kept in a temporary name (the rest is a hash), below NAME_MAX 255


def _why(e: OSError) -> str:
    """The OS's reason for an error, e.g. 'Permission denied'."""
    return e.strerror or type(e).__name__


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def check_input(path: str | Path, allow_dir: bool = False) -> os.stat_result:
    """Stat an input and refuse anything but a non-empty regular file (or a folder, with `allow_dir`) before opening it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except NotADirectoryError:
        raise NotFoundError(f"{path}: no such file (a part of the path is not a folder)") from None
    except (OSError, ValueError) as e:  # ValueError: an embedded NUL byte
        raise InvalidFileError(f"{path}: cannot read ({_why(e) if isinstance(e, OSError) else e})") from None
    if stat.S_ISDIR(st.st_mode):
        if allow_dir:
            return st
        raise InvalidFileError(f"{path}: is a directory, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidFileError(f"{path}: is {_kind(st.st_mode)}, not a regular file; lgt reads only regular files")
    if st.st_size == 0:
        raise InvalidFileError(f"{path}: is empty (0 bytes); it is not a checkpoint or bundle")
    return st


def open_input(path: str | Path) -> BinaryIO:
    """Open a regular input file for reading without ever blocking on a FIFO (checked again on the open descriptor)."""
    check_input(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise InvalidFileError(f"{path}: cannot read ({_why(e)})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped for something else since the check
            raise InvalidFileError(f"{path}: is {_kind(st.st_mode)}, not a regular file; lgt reads only regular files")
        return open(path, "rb", opener=lambda *_: fd)  # the descriptor checked above, named by its path
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn an OS error while reading `path` (EIO, a vanished file, ...) into one InvalidFileError line."""
    try:
        yield
    except OSError as e:
        raise InvalidFileError(f"{path}: cannot read ({_why(e)})") from None


def read_input_bytes(path: str | Path, limit: int) -> bytes:
    """The whole content of a regular input file of at most `limit` bytes."""
    with open_input(path) as f, reading(path):
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidFileError(f"{path}: is larger than {limit:,} bytes; not the file expected here")
    return data


# --- outputs ---------------------------------------------------------------------------------------------


def _stat_output(p: Path, follow: bool = True) -> os.stat_result | None:
    try:
        return os.stat(p) if follow else os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            raise OutputError(f"{p}: a part of the output path is not a folder") from None
        raise OutputError(f"{p}: cannot write there ({_why(e)})") from None


def _same_file(st: os.stat_result, other: Path) -> bool:
    try:
        return os.path.samestat(st, os.stat(other))
    except (OSError, ValueError):
        return False


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_output(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse an output path that cannot or must not be written, before any work is done.

    Refused: an input (however spelt), a folder, anything that exists and is not a regular file
    (a device node, FIFO or socket: even with --force), an existing file without --force, a missing
    or unwritable folder, and a name longer than the filesystem allows.
    """
    out = Path(out)
    st = _stat_output(out)
    if st is not None:
        if any(_same_file(st, p) for p in inputs):
            raise OutputError(f"{out}: is an input; inputs are never modified, choose another output path")
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{out}: is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{out}: is {_kind(st.st_mode)}; lgt writes only regular files (even with --force), "
                              "choose another output path")
        if not force:
            raise OutputError(f"{out}: already exists; pass --force to overwrite it")
    folder = out.parent
    fst = _stat_output(folder)
    if fst is None:
        raise OutputError(f"{folder}: output folder does not exist")
    if not stat.S_ISDIR(fst.st_mode):
        raise OutputError(f"{folder}: is not a folder")
    if len(os.fsencode(out.name)) > _name_max(folder):
        raise OutputError(f"{out.name[:40]}…: file name too long ({len(os.fsencode(out.name))} bytes, the "
                          f"filesystem allows {_name_max(folder)}); choose a shorter name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{folder}: output folder is not writable (permission denied or read-only)")


def _temp_prefix(out: Path) -> str:
    """`.NAME` for a temporary file beside `out` (a long name is cut and completed by its hash)."""
    name = out.name
    if len(os.fsencode(name)) > _NAME_ROOM:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
        name = os.fsdecode(os.fsencode(name)[: _NAME_ROOM - 20]) + "~" + digest
    return f".{name}"


def temp_pattern(out: Path) -> re.Pattern[str]:
    """Names of the temporary files of writes to `out`: `.OUT.lgt-tmp-<pid>-<hex>` and the older `.OUT.tmp-<pid>`."""
    prefix = re.escape(_temp_prefix(out))
    legacy = re.escape(f".{out.name}")
    return re.compile(rf"^(?:{prefix}{re.escape(TEMP_TAG)}(\d+)-[0-9a-f]{{8}}|{legacy}\.tmp-(\d+))$")


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (a pid we may not signal belongs to a live process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the temporary files left beside `out` by writers that died (e.g. SIGKILL); returns them."""
    pattern = temp_pattern(out)
    removed = []
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if not m:
            continue
        pid = int(m.group(1) or m.group(2))
        if pid == os.getpid() or pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _new_temp(out: Path) -> Path:
    """Create (exclusively, never following a planted link) an empty temporary file beside `out`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = out.with_name(f"{_temp_prefix(out)}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, flags, 0o644))
            return tmp
        except FileExistsError:
            continue


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_error(out: Path, e: OSError) -> OutputError:
    return OutputError(f"{out}: cannot write ({_why(e)}); nothing was written")


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def _renameat2_noreplace(src: Path, dst: Path) -> bool:
    """rename(2) that fails with EEXIST when `dst` exists (Linux renameat2 RENAME_NOREPLACE); False where the
    kernel, libc or filesystem lacks it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(dst))


def publish(tmp: Path, out: Path, replace: bool) -> None:
    """Move the finished `tmp` to `out` in one step. Without `replace`, an `out` that appeared meanwhile (another
    writer won the race) is left as it is and this write fails: an OutputError, `tmp` still there to remove.

    A file is published by renameat2(RENAME_NOREPLACE), else by a hard link (link(2) never replaces) and the
    removal of `tmp`; a folder by renameat2, else by a rename after a check (a small race remains only there).
    """
    if replace:
        os.replace(tmp, out)
        return
    exists = OutputError(f"{out}: already exists (written by another process meanwhile); pass --force to "
                         "overwrite it")
    try:
        if _renameat2_noreplace(tmp, out):
            return
    except FileExistsError:
        raise exists from None
    if os.path.isdir(tmp):
        if os.path.lexists(out):
            raise exists
        os.rename(tmp, out)
        return
    try:
        os.link(tmp, out, follow_symlinks=False)
    except FileExistsError:
        raise exists from None
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        if os.path.lexists(out):  # a filesystem without hard links: check, then rename
            raise exists from None
        os.rename(tmp, out)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(out: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `out`; on success it is fsynced and renamed onto `out`, else removed.

    With `replace=False` (an output written without --force) an existing `out` is never replaced, even one
    that another process wrote after the checks: exactly one of two such writers wins, the other fails with
    one OutputError line. Temporary files that dead writers left for the same output are removed first.
    An OS error while creating, writing or renaming (permission denied, read-only folder, no space, name too
    long) becomes an OutputError; the body's readers report input errors themselves.
    """
    out = Path(out)
    remove_stale_temps(out)
    try:
        tmp = _new_temp(out)
    except OSError as e:
        raise _write_error(out, e) from None
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fdatasync(f.fileno()) if hasattr(os, "fdatasync") else os.fsync(f.fileno())
        st = _stat_output(out, follow=False)
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise OutputError(f"{out}: became {_kind(st.st_mode)} while writing; nothing was written")
        publish(tmp, out, replace)
        _fsync_dir(out.parent)
    except OSError as e:
        raise _write_error(out, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def file_sha256(path: str | Path) -> str:
    """sha256 of a whole (regular) file, streamed."""
    h = hashlib.sha256()
    with open_input(path) as f, reading(path):
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
