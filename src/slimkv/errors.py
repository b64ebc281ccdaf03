"""The one error type for failures a user can fix, and how any exception becomes the line the CLI prints.

Library code raises `UserError` (or, in older modules, a `ValueError` with a finished sentence) for bad input;
`slimkv.cli.main` prints it as one line and exits 2. Errors from the operating system that a user can fix (no
space, read-only, permission, missing path) are mapped to one line too. Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import errno
import linecache
import os
from pathlib import Path


class UserError(ValueError):
    """A failure the user can fix (bad input, a busy or protected folder): printed as one line, exit status 2.

    A ValueError, so callers that already catch ValueError for bad input keep working.
    """


# errno -> what the user should read; {path} is the file the operating system named
OS_ERRORS = {
    errno.ENOSPC: "no space left on the device holding {path}; free some space and run again",
    errno.EDQUOT: "disk quota exceeded while writing {path}; free some space and run again",
    errno.EROFS: "{path} is on a read-only file system; choose a writable folder",
    errno.EACCES: "permission denied: {path}; choose a folder you can write to",
    errno.EPERM: "operation not permitted: {path}; choose a folder you can write to",
    errno.ENOENT: "no such file or folder: {path}",
    errno.ENOTDIR: "{path} is not a folder (a file is in the way)",
    errno.EISDIR: "{path} is a folder where a file was expected",
}

_PACKAGE_DIR = str(Path(__file__).resolve().parent) + os.sep


def os_error_message(err: OSError) -> str | None:
    """One line for an OSError a user can fix, or None when the errno is not one of those."""
    template = OS_ERRORS.get(err.errno)
    if template is None:
        return None
    path = err.filename if err.filename is not None else "the output"
    return template.format(path=path)


def _raised_by_slimkv(err: BaseException) -> bool:
    """True when slimkv's own code raised `err` with a `raise` statement (a message written for the user).

    A ValueError from inside torch or transformers, or one Python raises in our code (`a, b = [1]`, `int("x")`), is
    a bug: its innermost frame is not a slimkv `raise` line.
    """
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    return filename.startswith(_PACKAGE_DIR) and linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def user_message(err: BaseException) -> str | None:
    """The one line to show for `err`, or None when `err` is a bug (the caller then lets the traceback through).

    - UserError: its message.
    - OSError with a fixable errno (see OS_ERRORS): a sentence naming the path; one slimkv raised itself
      with a message and no errno (FileNotFoundError("no config.json in ...")): that message.
    - ValueError raised by slimkv code itself: its message (older modules raise ValueError for bad input);
      a ValueError from inside torch, numpy or transformers is a bug and is not turned into a line.
    - safetensors' SafetensorError: the file is truncated or corrupt.
    KeyError is never a user mistake: it is a bug.
    """
    if isinstance(err, UserError):
        text = str(err)
    elif isinstance(err, OSError) and err.errno in OS_ERRORS:
        text = os_error_message(err)
    elif isinstance(err, OSError) and err.errno is None and _raised_by_slimkv(err):
        # FileNotFoundError("no config.json in ...") and the like: a sentence of ours, no errno
        text = str(err)
    elif isinstance(err, ValueError) and _raised_by_slimkv(err):
        text = str(err)
    elif type(err).__name__ == "SafetensorError":
        # raised without a file name from deep inside the loaders
        text = f"a .safetensors file is truncated or corrupt ({err})"
    else:
        return None
    text = " ".join(text.strip().strip('"').split())
    return text or type(err).__name__
