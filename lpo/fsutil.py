"""Safe outputs: atomic output directories and files, path checks, checksums.

Every output lpo writes goes through :func:`atomic_output_dir` or
:func:`atomic_output_file`: the content is built in a temporary sibling of the
destination (``<parent>/.<name>.lpo-tmp-<pid>-<random>``, never in the CWD),
fsynced, then renamed into place. A failure, Ctrl-C or SIGTERM removes the
temporary; a SIGKILL may leave it behind, and the next run removes it
(:func:`cleanup_stale_temps`). The destination is therefore either absent, the
old content, or the complete new content -- never half written. Overwriting a
directory swaps old and new in one step where the file system can
(``renameat2(RENAME_EXCHANGE)``: Linux ext4/xfs/btrfs/tmpfs), so a reader never
finds it missing; :func:`atomic_symlink` replaces a symlink the same way.

This module never imports TensorFlow.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import secrets
import shutil
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Iterator, Union

from lpo.errors import ConfigError, InternalError, LpoError, OutOfSpaceError, OutputExistsError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_TMP_TAG = ".lpo-tmp-"
_OLD_SUFFIX = "-old"


class Terminated(SystemExit):
    """Raised inside an atomic output block when the process receives SIGTERM."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(128 + int(signum))
        self.signum = int(signum)


# --------------------------------------------------------------------------- paths


def _abs(path: PathLike) -> Path:
    """Absolute path with ``..`` collapsed; the last component is not resolved."""
    return Path(os.path.abspath(os.fspath(path)))


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}{_TMP_TAG}"


def _new_temp_name(dest: Path, suffix: str = "") -> Path:
    """A fresh temp sibling name for ``dest`` (not created)."""
    return dest.parent / f"{_temp_prefix(dest)}{os.getpid()}-{secrets.token_hex(6)}{suffix}"


def check_not_inside(out: PathLike, model_path: PathLike) -> None:
    """Raise ``ConfigError`` if ``out`` equals, is inside, or contains ``model_path``.

    Symlinks are resolved, so a link pointing into the model is caught too.
    (An output containing the model would destroy it when overwritten.)
    """
    o = Path(os.fspath(out)).resolve(strict=False)
    m = Path(os.fspath(model_path)).resolve(strict=False)
    if o == m:
        raise ConfigError(f"output path {out} is the model itself ({m}); choose another output path")
    if m in o.parents:
        raise ConfigError(
            f"output path {out} is inside the model directory {m}; lpo never writes inside "
            "its input: choose a path outside it")
    if o in m.parents:
        raise ConfigError(
            f"output path {out} contains the model {model_path}; writing there could destroy "
            "the input: choose another output path")


def check_parent_writable(dest: PathLike) -> None:
    """Raise ``ConfigError`` if the parent directory of ``dest`` is missing or not writable."""
    parent = _abs(dest).parent
    if not parent.exists():
        raise ConfigError(f"the directory {parent} (parent of output {dest}) does not exist; "
                          "create it first or choose another output path")
    if not parent.is_dir():
        raise ConfigError(f"{parent} (parent of output {dest}) is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"the directory {parent} is not writable; choose another output path")


# --------------------------------------------------------------------------- stale temps


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _process_start_time() -> float:
    """Wall-clock start time of this process (Linux /proc; else module import time)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 overall; 20th after "pid (comm)"
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except Exception:  # noqa: BLE001 - best effort, non-Linux
        return _IMPORT_TIME


_IMPORT_TIME = time.time()
_PROCESS_START = None  # computed lazily


def _remove(path: Path) -> None:
    """Remove a file, link or directory tree; missing is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, onerror=_rm_onerror)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _rm_onerror(func, path, exc_info):  # pragma: no cover - rare permission cases
    exc = exc_info[1]
    if isinstance(exc, FileNotFoundError):
        return
    try:  # a read-only directory: make it writable and retry once
        os.chmod(os.path.dirname(path), stat.S_IRWXU)
        func(path)
    except Exception:  # noqa: BLE001
        logger.warning("could not remove %s: %s", path, exc)


def cleanup_stale_temps(dest: PathLike) -> list[Path]:
    """Remove ``.<name>.lpo-tmp-*`` siblings of ``dest`` left by dead processes.

    A temp whose owner pid (encoded in its name) is still running is kept; one
    without a pid is removed only if it is older than the current process. If
    ``dest`` is missing and a stale set-aside copy of the old ``dest`` exists
    (a kill between the two renames of an overwrite), it is restored instead.
    Returns the paths removed or restored.
    """
    global _PROCESS_START
    dest = _abs(dest)
    parent, prefix = dest.parent, _temp_prefix(dest)
    if not parent.is_dir():
        return []
    if _PROCESS_START is None:
        _PROCESS_START = _process_start_time()
    done: list[Path] = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        rest = entry.name[len(prefix):]
        pid_text = rest.split("-", 1)[0]
        if pid_text.isdigit():
            pid = int(pid_text)
            if pid == os.getpid() or _pid_alive(pid):
                continue
        else:
            try:
                if entry.lstat().st_mtime >= _PROCESS_START:
                    continue
            except FileNotFoundError:
                continue
        stem = rest.split(".", 1)[0]
        if stem.endswith(_OLD_SUFFIX) and not os.path.lexists(dest):
            try:
                os.rename(entry, dest)
                logger.warning("restored %s from an interrupted overwrite (%s)", dest, entry.name)
                done.append(entry)
                continue
            except OSError as e:
                logger.warning("could not restore %s from %s: %s", dest, entry, e)
                continue
        logger.debug("removing stale temporary %s", entry)
        _remove(entry)
        done.append(entry)
    return done


# --------------------------------------------------------------------------- fsync


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EROFS):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under ``root`` (bottom-up)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                _fsync_path(p)
        _fsync_path(Path(dirpath), directory=True)


# --------------------------------------------------------------------------- signals


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Convert SIGTERM into :class:`Terminated` while inside (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not allowed here (embedded interpreter, ...)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# --------------------------------------------------------------------------- disk space
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def human_bytes(n: float, digits: int = 1) -> str:
    """``1536`` -> ``'1.5 KiB'`` (``digits`` after the point above bytes)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1024
    return f"{n:.{digits}f} TiB"


def is_no_space(e: BaseException) -> bool:
    """True for an out-of-space or out-of-quota error: an OSError, or TensorFlow's (by its message)."""
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return True
    text = str(e)
    return any(os.strerror(n) in text for n in _NO_SPACE)


def _free_bytes(dest: PathLike) -> tuple[int | None, Path]:
    """Free bytes of the file system ``dest`` is (or would be) on, and the existing directory asked."""
    p = _abs(dest)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None, p
    # A pseudo file system (/proc, /sys) reports no blocks at all: its space is
    # not the question, whether it takes files is (answered by the caller).
    return (usage.free if usage.total else None), p


def _space_message(dest: PathLike, needed: int | None, free: int | None, where: Path) -> str:
    have = f"{human_bytes(free)} was free on {where}" if free is not None else f"{where} is full"
    need = f"it needs at least {human_bytes(needed)} and " if needed else ""
    return (f"not enough disk space to write {dest}: {need}{have}; free some space or choose an output "
            "path on another file system")


def check_space(dest: PathLike, needed: int | None) -> None:
    """Raise OutOfSpaceError before any work when ``dest``'s file system has less than ``needed`` bytes free."""
    if not needed:
        return
    free, where = _free_bytes(dest)
    if free is not None and free < needed:
        raise OutOfSpaceError(_space_message(dest, needed, free, where))


@contextlib.contextmanager
def no_space_as_error(dest: PathLike, needed: int | None = None) -> Iterator[None]:
    """Turn a full-disk error inside the block into one OutOfSpaceError naming ``dest`` and the space needed.

    ``needed`` is a lower bound of the bytes the output takes (None: unknown); the free
    space reported is what there was when the block started.
    """
    free, where = _free_bytes(dest)
    try:
        yield
    except LpoError:
        raise
    except Exception as e:  # noqa: BLE001 - OSError or a TensorFlow error, told apart by is_no_space
        if not is_no_space(e):
            raise
        raise OutOfSpaceError(_space_message(dest, needed, free, where)) from e


def _is_nonempty(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        with os.scandir(path) as it:
            return any(True for _ in it)
    return os.path.lexists(path)


def _exists_message(dest: Path, what: str) -> str:
    return (f"output {what} {dest} already exists and is not empty; pass --overwrite "
            "(overwrite=True) to replace it, or choose another path")


# --------------------------------------------------------------------------- public


@contextlib.contextmanager
def atomic_output_dir(dest: PathLike, *, overwrite: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Build an output directory atomically; yield the temp directory to fill.

    Refuses an existing non-empty ``dest`` unless ``overwrite``. On success the
    temp dir is fsynced and renamed to ``dest`` (an old ``dest`` is set aside,
    replaced, then deleted). On any exception, Ctrl-C or SIGTERM the temp dir
    is removed and the exception propagates; ``dest`` is left as it was. A full
    disk is an :class:`~lpo.errors.OutOfSpaceError` (exit status 4), raised before
    any work when fewer than ``needed`` bytes (a lower bound of the output) are free.
    """
    dest = _abs(dest)
    check_parent_writable(dest)
    cleanup_stale_temps(dest)
    if not overwrite and _is_nonempty(dest):
        raise OutputExistsError(_exists_message(dest, "directory"))
    check_space(dest, needed)
    tmp = _new_temp_name(dest)
    committed = False
    # The SIGTERM handler is in place before the temp dir exists and while it is removed,
    # so a SIGTERM at any point leaves no temp behind.
    with _sigterm_raises(), no_space_as_error(dest, needed):
        try:
            try:
                os.mkdir(tmp, 0o777)
            except OSError as e:  # e.g. a read-only or pseudo file system (/proc) that access() calls writable
                if is_no_space(e):
                    raise
                raise ConfigError(f"cannot create a directory in {dest.parent} for output {dest} "
                                  f"({e.strerror or e}); choose a writable output path") from e
            logger.debug("building %s in %s", dest, tmp)
            yield tmp
            _fsync_tree(tmp)
            _commit_dir(tmp, dest, overwrite)
            committed = True
        finally:
            if not committed:
                _remove(tmp)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_renameat2 = None


def exchange(a: PathLike, b: PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, changing nothing, where the OS, libc or file system cannot
    (other platforms, NFS, old kernels); raises OSError on other failures.
    """
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (AttributeError, OSError):  # not Linux, or glibc < 2.28
            _renameat2 = False
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _commit_dir(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``dest`` (swapping out an old ``dest``).

    An old non-empty ``dest`` (with ``overwrite``) is exchanged with ``tmp`` in one
    step where possible, so ``dest`` never disappears; elsewhere it is set aside,
    replaced, then deleted.
    """
    if not tmp.is_dir():
        raise InternalError(f"temporary output {tmp} disappeared before it could be moved to {dest}")
    old = None
    if os.path.lexists(dest):
        if not _is_nonempty(dest):
            os.rmdir(dest)  # an empty directory: simply replace it
        elif overwrite and dest.is_dir() and not dest.is_symlink() and exchange(tmp, dest):
            # tmp now holds the old content under its temp name: a kill from here on
            # leaves a stale temp that the next run removes.
            _fsync_path(dest.parent, directory=True)
            _remove(tmp)
            logger.debug("wrote %s (exchanged with the old content)", dest)
            return
        elif overwrite:
            old = _new_temp_name(dest, _OLD_SUFFIX)
            os.rename(dest, old)
        else:  # someone filled it while we were working
            raise OutputExistsError(_exists_message(dest, "directory"))
    try:
        os.rename(tmp, dest)
    except OSError as e:
        if old is not None:  # put the old content back
            with contextlib.suppress(OSError):
                os.rename(old, dest)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise OutputExistsError(_exists_message(dest, "directory")) from e
        raise
    _fsync_path(dest.parent, directory=True)
    if old is not None:
        _remove(old)
    logger.debug("wrote %s", dest)


@contextlib.contextmanager
def atomic_output_file(dest: PathLike, *, overwrite: bool = False, needed: int | None = None) -> Iterator[Path]:
    """Write a single output file atomically; yield the temp path to write to.

    The temp path lives beside ``dest`` and keeps its suffix (so ``np.savez``
    does not append ``.npz``); it is not created in advance. Refuses an
    existing ``dest`` unless ``overwrite``; on success fsyncs and
    ``os.replace``s it into place, on failure removes it. A full disk is an
    :class:`~lpo.errors.OutOfSpaceError`, as for :func:`atomic_output_dir`.
    """
    dest = _abs(dest)
    check_parent_writable(dest)
    cleanup_stale_temps(dest)
    if dest.is_dir():
        raise OutputExistsError(f"output file {dest} is an existing directory; choose another path")
    if not overwrite and os.path.lexists(dest):
        raise OutputExistsError(_exists_message(dest, "file"))
    check_space(dest, needed)
    tmp = _new_temp_name(dest, dest.suffix)
    committed = False
    try:
        with _sigterm_raises(), no_space_as_error(dest, needed):
            yield tmp
            if not tmp.is_file():
                raise InternalError(f"nothing was written to the temporary output {tmp} for {dest}")
            if not overwrite and os.path.lexists(dest):
                raise OutputExistsError(_exists_message(dest, "file"))
            _fsync_path(tmp)
            os.replace(tmp, dest)
            committed = True
            _fsync_path(dest.parent, directory=True)
    finally:
        if not committed:
            _remove(tmp)


def atomic_symlink(target: str, link: PathLike) -> Path:
    """Point the symlink ``link`` at ``target`` in one step (a new link, then ``os.replace``).

    A reader following ``link`` sees the old target or the new one, never no link.
    ``target`` is stored as given (use a relative path to keep a tree relocatable).
    Refuses to replace anything that is not a symlink.
    """
    link = _abs(link)
    check_parent_writable(link)
    if os.path.lexists(link) and not link.is_symlink():
        raise OutputExistsError(f"{link} exists and is not a symlink; move it away first")
    cleanup_stale_temps(link)
    tmp = _new_temp_name(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_path(link.parent, directory=True)
    return link


def write_text(dest: PathLike, text: str, *, overwrite: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``dest`` atomically (:func:`atomic_output_file`)."""
    with atomic_output_file(dest, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def dir_bytes(path: PathLike) -> int:
    """Return the bytes of the files under ``path``: the one size lpo reports for a model.

    A symlink to a file counts as its target (TensorFlow reads through it); symlinked
    directories are not descended and broken links count nothing, so no file counts twice.
    """
    total = 0
    for root, _dirs, files in os.walk(os.fspath(path)):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def tree_checksum(path: PathLike) -> str:
    """Deterministic sha256 of a file or directory tree (relative paths, types, bytes).

    Symlinks are hashed by their target text, not followed. Used to prove that
    inputs are left untouched.
    """
    root = Path(os.fspath(path))
    h = hashlib.sha256()

    def add_file(rel: str, p: Path) -> None:
        h.update(b"F\0" + rel.encode("utf-8", "surrogateescape") + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")

    if not os.path.lexists(root):
        raise FileNotFoundError(f"no such file or directory: {root}")
    if root.is_file() and not root.is_symlink():
        add_file(".", root)
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        h.update(b"D\0" + rel_dir.encode("utf-8", "surrogateescape") + b"\0")
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            p = Path(dirpath, name)
            rel = f"{rel_dir}/{name}" if rel_dir != "." else name
            if p.is_symlink():
                h.update(b"L\0" + rel.encode("utf-8", "surrogateescape") + b"\0"
                         + os.readlink(p).encode("utf-8", "surrogateescape") + b"\0")
            elif p.is_file():
                add_file(rel, p)
            else:
                h.update(b"O\0" + rel.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- checkpoints

_CKPT_TMP_NAME = "ckpt"


def checkpoint_files(prefix: PathLike) -> list[Path]:
    """Return the files of checkpoint ``prefix`` (``prefix.index``, ``prefix.data-*``, sidecars), sorted."""
    prefix = _abs(prefix)
    if not prefix.parent.is_dir():
        return []
    start = prefix.name + "."
    return sorted(p for p in prefix.parent.iterdir() if p.name.startswith(start) and p.is_file())


def _missing_top(directory: Path) -> Path | None:
    """Return the topmost missing ancestor of ``directory`` (itself included), or None if it exists.

    Raises ConfigError when the deepest existing ancestor is not a directory.
    """
    top, p = None, directory
    while not os.path.lexists(p):
        top, p = p, p.parent
    if not p.is_dir():
        raise ConfigError(f"{p} is not a directory; the checkpoint prefix {directory} cannot be created under it")
    return top


@contextlib.contextmanager
def atomic_checkpoint(save_prefix: PathLike, *, overwrite: bool = False, require_index: bool = True,
                      needed: int | None = None) -> Iterator[str]:
    """Write a checkpoint (``.index``, ``.data-*`` and ``save_prefix.*`` sidecars) atomically.

    Yields a temporary prefix to write to. When the directory of ``save_prefix``
    exists, the files are built in a temp sibling directory, fsynced and moved next to
    ``save_prefix`` with the ``.index`` last (old ``save_prefix.*`` files, refused unless
    ``overwrite``, go index first), so a reader never sees an index with foreign data.
    When it does not exist (the parent tool's ``convert_ckpt`` creates it), its missing
    ancestors are created as ``mkdir -p`` does (concurrent writers, e.g. the shards of one
    conversion into a fresh shared ``work/shard-NNNNN/``, all succeed) and the directory
    itself is built in a temp sibling and renamed into place at once: it appears complete
    or not at all, and one created meanwhile by someone else is never clobbered (a failed
    run may leave the empty ancestors behind). ``require_index=False`` allows an
    output of sidecars alone (an empty shard). A full disk is an OutOfSpaceError, raised
    before any work when fewer than ``needed`` bytes are free.
    """
    dest = _abs(save_prefix)
    if not dest.name or dest.name in (".", ".."):
        raise ConfigError(f"checkpoint prefix {save_prefix} has no file name part; pass e.g. DIR/variables")
    if _missing_top(dest.parent) is not None:
        try:
            os.makedirs(dest.parent.parent, exist_ok=True)  # shared ancestors: no race between writers
        except OSError as e:
            raise ConfigError(f"cannot create {dest.parent.parent} for the checkpoint prefix {dest} "
                              f"({e.strerror or e}); choose a writable path") from e
        with atomic_output_dir(dest.parent, needed=needed) as tmp:  # this writer's own leaf: atomic
            yield str(tmp / dest.name)
        return
    check_parent_writable(dest)
    if not overwrite and checkpoint_files(dest):
        raise OutputExistsError(f"checkpoint {dest} already exists ({checkpoint_files(dest)[0].name}); pass "
                                "overwrite=True (CLI --overwrite) or choose another prefix")
    cleanup_stale_temps(dest)  # temps of killed earlier runs (their pid is in the name)
    check_space(dest, needed)
    tmp = _new_temp_name(dest)
    with _sigterm_raises(), no_space_as_error(dest, needed):  # SIGTERM removes the temp dir too
        try:
            os.mkdir(tmp, 0o777)
            yield str(tmp / _CKPT_TMP_NAME)
            new = sorted(p for p in tmp.iterdir() if p.name.startswith(_CKPT_TMP_NAME + "."))
            if not new or (require_index and not any(p.name == _CKPT_TMP_NAME + ".index" for p in new)):
                raise InternalError(f"no checkpoint index was written for {dest}")
            for p in new:
                _fsync_path(p)
            old = checkpoint_files(dest)
            if old and not overwrite:  # someone wrote it while we were working
                raise OutputExistsError(f"checkpoint {dest} already exists ({old[0].name}); pass overwrite=True "
                                        "(CLI --overwrite) or choose another prefix")
            for p in sorted(old, key=lambda p: not p.name.endswith(".index")):
                p.unlink()
            for p in sorted(new, key=lambda p: p.name.endswith(".index")):
                os.replace(p, dest.parent / (dest.name + p.name[len(_CKPT_TMP_NAME):]))
            _fsync_path(dest.parent, directory=True)
        finally:
            _remove(tmp)


def link_or_copy(src: PathLike, dst: PathLike) -> bool:
    """Hard-link ``src`` to ``dst`` (same file system), else copy it; return True when linked."""
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False
