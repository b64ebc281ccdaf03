"""Crash-safe writes, guarded output folders and run-folder locks, shared by every layer.

    atomic_write_text(path, text)                       # also atomic_write_bytes, and atomic_write(path, fill)
    atomic_write(path, lambda f: torch.save(obj, f))    # any writer that takes a binary file object
    with output_folder(dst, command="convert official", overwrite=False, sources=[src]) as tmp:
        ...                                             # fill tmp; it replaces dst only when the block ends cleanly
    with FileLock(run_dir / ".lock", what=f"run folder {run_dir}"):
        ...                                             # a second holder gets a UserError naming this PID

Files: written to a hidden temporary file beside the target, fsynced, renamed over the target, then the folder is
fsynced, so a crash (or a full disk) leaves the old file or the new one, never half a file. They get the mode a
plain `open()` gives (0666 minus the umask), not mkstemp's 0600.

Folders: built in a hidden sibling, every file fsynced, then swapped into place in one step (renameat2
RENAME_EXCHANGE where the system has it, else rename-aside, rename-in, and the old one removed last). A destination
is refused when it is the working folder or one of its parents, the source or a folder holding the source, or a
non-empty folder that is not an earlier output of the same command (each output carries a manifest, MANIFEST, naming
the files it wrote); `overwrite=True` accepts the last kind, still replacing it only once the new output is complete.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import io
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from .errors import UserError

MANIFEST = ".slimkv-output.json"
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- files
def _temp_sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(3)}")


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:
        # some file systems cannot fsync a folder; the rename itself is still atomic there
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class _TrackedFileIO(io.FileIO):
    """A raw file that remembers the OSError of a failed write: torch.save reports a full disk only as
    "unexpected pos ..." (a RuntimeError), so the real cause is kept here and raised instead."""

    error: OSError | None = None

    def write(self, data) -> int:
        try:
            return super().write(data)
        except OSError as err:
            self.error = err
            raise


def atomic_write(path: str | os.PathLike, fill: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `fill(file)` so that a crash leaves the old file or the new one, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    try:
        # "x": a fresh file (O_EXCL) whose mode honours the umask (0666 & ~umask), as open() would make it
        raw = _TrackedFileIO(tmp, "xb")
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        with io.BufferedWriter(raw) as handle:
            fill(handle)
            handle.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        # report the file the caller asked for, not the hidden temporary one
        if raw.error is not None and not isinstance(err, OSError):
            raise OSError(raw.error.errno, raw.error.strerror, str(path)) from None
        if isinstance(err, OSError) and err.errno is not None and err.filename in (None, str(tmp)):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------------- folders
def _files_of(folder: Path) -> dict[str, int]:
    """Relative posix path -> size of every file under folder (the manifest itself left out)."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            full = Path(root, name)
            rel = full.relative_to(folder).as_posix()
            if rel != MANIFEST:
                found[rel] = full.lstat().st_size
    return found


def _foreign_entries(folder: Path, command: str) -> list[str]:
    """What in `folder` an earlier `command` did not write (files added or resized, folders added), sorted."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        listed = dict(manifest["files"]) if manifest.get("command") == command else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed = None
    if listed is None:
        return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    listed_dirs = {str(parent) for rel in listed for parent in Path(rel).parents}
    foreign = [rel for rel, size in _files_of(folder).items() if listed.get(rel) != size]
    for root, dirs, _ in os.walk(folder):
        for name in dirs:
            rel = Path(root, name).relative_to(folder).as_posix()
            if rel not in listed_dirs:
                foreign.append(rel + "/")
    return sorted(foreign)


OVERWRITE_HINT = "pass --overwrite to replace it once the new output is complete, or choose another folder"


def check_output_folder(dst: str | os.PathLike, *, command: str, overwrite: bool = False,
                        sources: Iterable[str | os.PathLike] = (), hint: str = OVERWRITE_HINT) -> Path:
    """Raise UserError unless `dst` may receive the output of `command` (rules: module docstring); returns the
    resolved destination. Call it before long work so a refusal comes at once; `output_folder` calls it again.
    `hint` ends the refusal of a foreign folder (for commands without --overwrite: what to do instead)."""
    shown = str(dst)
    target = Path(dst).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        what = "the working folder" if target == cwd else "a parent of the working folder"
        raise UserError(f"refusing to write the output of `slimkv {command}` to {shown!r}: it is {what}; "
                        "name a new folder instead")
    for source in sources:
        source = Path(source).expanduser().resolve()
        if target == source or target in source.parents:
            what = "the source itself" if target == source else f"a folder holding the source {str(source)!r}"
            raise UserError(f"refusing to write the output of `slimkv {command}` to {shown!r}: it is {what}; "
                            "name a new folder instead")
    if target.exists() and not target.is_dir():
        raise UserError(f"output folder {shown!r} exists and is not a folder; name a new folder instead")
    if target.is_dir() and not overwrite:
        foreign = _foreign_entries(target, command)
        if foreign:
            listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UserError(f"output folder {shown!r} is not empty and is not an earlier output of `slimkv {command}` "
                            f"(it holds {listed}); {hint}")
    return target


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (before renaming it into place)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(Path(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def _load_renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step; False where the system or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target`. Afterwards `new` holds the previous output (or nothing) for the caller to
    remove: the old output is never deleted before the new one is in place."""
    if not target.exists():
        os.rename(new, target)
    elif not _exchange(new, target):
        aside = _temp_sibling(target, "old")
        os.rename(target, aside)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(aside, target)
            raise
        os.rename(aside, new)
    fsync_dir(target.parent)


@contextlib.contextmanager
def output_folder(dst: str | os.PathLike, *, command: str, overwrite: bool = False,
                  sources: Iterable[str | os.PathLike] = (), hint: str = OVERWRITE_HINT) -> Iterator[Path]:
    """Yield an empty hidden sibling of `dst` to fill; when the block ends cleanly, a manifest is added, every file
    is fsynced and the folder replaces `dst` in one step. On an error nothing at `dst` has changed."""
    sources = list(sources)
    target = check_output_folder(dst, command=command, overwrite=overwrite, sources=sources, hint=hint)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(target, "partial")
    try:
        os.mkdir(tmp, 0o777)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(dst)) from None
    try:
        yield tmp
        # the destination may have changed while the output was being built
        check_output_folder(dst, command=command, overwrite=overwrite, sources=sources, hint=hint)
        manifest = {"command": command, "files": _files_of(tmp)}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        fsync_tree(tmp)
        swap_folder(tmp, target)
    finally:
        # after the swap this is the previous output; after an error, the partial one
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- locks
class FileLock:
    """An exclusive fcntl lock on `path`, held from `acquire()` to `release()` (or a with block).

    The holder writes its PID into the file, so a second process gets one line naming it. The kernel drops the
    lock when the holder exits, however it exits, so a killed run never leaves a stale lock behind.
    wait=True: a second process waits for the holder instead of failing (work that several processes would
    otherwise all do, such as tokenising the same text into the same shard, then happens once).
    """

    def __init__(self, path: str | os.PathLike, what: str, wait: bool = False):
        self.path, self.what, self.wait = Path(path), what, wait
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            if not self.wait:
                os.close(fd)
                raise UserError(f"{self.what} is in use by another process (PID {holder}); wait for it to finish "
                                "or stop it first") from None
            logger.info("waiting for PID %s, which holds %s", holder, self.what)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    # the holder writes its PID right after taking the lock: give it a moment
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


def write_json(path: str | os.PathLike, data: object, indent: int = 2) -> Path:
    """`data` as indented JSON (one trailing newline), written atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=indent) + "\n")
    return path
