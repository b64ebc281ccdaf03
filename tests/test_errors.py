"""slimkv.errors and the one top-level handler: which failures become one line (exit 2) and which stay bugs."""
from __future__ import annotations

import errno
import linecache
import os
from pathlib import Path

import pytest
import torch

import slimkv.cli.convert
import slimkv.errors
from slimkv.cli.main import main
from slimkv.device import resolve_device
from slimkv.errors import UserError, user_message


def _raised(make):
    try:
        make()
    except BaseException as err:  # noqa: BLE001  (the test inspects whatever was raised)
        return err
    raise AssertionError("nothing was raised")


@pytest.mark.parametrize("code, needle", [
    (errno.ENOSPC, "no space left on the device holding /data/run/state.pt; free some space and run again"),
    (errno.EROFS, "/data/run/state.pt is on a read-only file system; choose a writable folder"),
    (errno.EACCES, "permission denied: /data/run/state.pt; choose a folder you can write to"),
    (errno.ENOENT, "no such file or folder: /data/run/state.pt"),
])
def test_fixable_os_errors_become_one_line(code, needle):
    # the mapping itself, independent of whether this machine can make a disk full or a folder read-only
    assert user_message(OSError(code, os.strerror(code), "/data/run/state.pt")) == needle


def test_bugs_are_not_turned_into_one_liners():
    assert user_message(KeyError("weight")) is None
    assert user_message(_raised(lambda: {}["weight"])) is None
    assert user_message(OSError(errno.EINVAL, "Invalid argument", ".")) is None
    # a ValueError raised inside torch (not by slimkv's own checks) is a bug of ours
    assert user_message(_raised(lambda: torch.nn.functional.pad(torch.zeros(2), (1,), mode="bogus"))) is None
    # so is one Python raises inside slimkv code (the old mem_size=0 failure was "not enough values to unpack"),
    # while a `raise ValueError(...)` written in slimkv is a message for the user
    assert _message_from_slimkv_code("def f():\n    a, b = [1]\n") is None
    assert _message_from_slimkv_code("def f():\n    raise ValueError('mem_size must be >= 1')\n") == \
        "mem_size must be >= 1"


def _message_from_slimkv_code(source: str):
    """user_message of what `f` raises when `f` is compiled as if it lived in the slimkv package."""
    filename = str(Path(slimkv.errors.__file__).parent / "_code_under_test.py")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {}
    try:
        exec(compile(source, filename, "exec"), namespace)
        return user_message(_raised(namespace["f"]))
    finally:
        linecache.cache.pop(filename, None)


def test_user_errors_and_slimkv_value_errors_are_one_line():
    assert user_message(UserError("run folder 'r' is in use\n by PID 7")) == "run folder 'r' is in use by PID 7"
    from slimkv.config import config_from_dict
    from slimkv.train.config import RunConfig

    err = _raised(lambda: config_from_dict(RunConfig, {"optim": {"lr": "fast"}}))
    assert user_message(err) == "config field 'optim.lr' must be a number, got 'fast'"


def test_a_corrupt_safetensors_file_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64)}, str(path))
    path.write_bytes(path.read_bytes()[:40])
    message = user_message(_raised(lambda: load_file(str(path))))
    assert message.startswith("a .safetensors file is truncated or corrupt (") and "\n" not in message


def test_the_cli_keeps_tracebacks_for_bugs_and_shows_them_all_with_debug(monkeypatch, capsys):
    def buggy(args):
        return {}["missing key"]

    monkeypatch.setattr(slimkv.cli.convert, "run", buggy)
    with pytest.raises(KeyError):
        main(["convert", "official", "a", "b"])

    def refused(args):
        raise UserError("output folder 'b' is not empty")

    monkeypatch.setattr(slimkv.cli.convert, "run", refused)
    assert main(["convert", "official", "a", "b"]) == 2
    assert capsys.readouterr().err == "slimkv convert: error: output folder 'b' is not empty\n"
    with pytest.raises(UserError):
        main(["convert", "official", "a", "b", "--debug"])
    monkeypatch.setenv("SLIMKV_DEBUG", "1")
    with pytest.raises(UserError):
        main(["convert", "official", "a", "b"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_resolution_without_cuda():
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("CPU") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match=rf"--device is '{name}' but no CUDA device is available"):
            resolve_device(name)
    with pytest.raises(UserError, match="--device is 'gpu', not a device"):
        resolve_device("gpu")
    with pytest.raises(UserError, match="config field 'train.device' is 'cuda'"):
        resolve_device("cuda", what="config field 'train.device'")
