"""slimkv.io: atomic files (fsync, umask modes, full disk), guarded output folders (manifest, swap), run locks."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from slimkv import io as sio
from slimkv.errors import UserError

from .fs_fixtures import tmpfs, tree_digest


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---------------------------------------------------------------------------------------------------- files
def test_atomic_write_fsyncs_file_and_folder_and_honours_the_umask(tmp_path, monkeypatch, umask_022):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "sub" / "report.json"
    sio.atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    if os.path.exists("/proc/self/fd"):
        # the temporary file (renamed since) and then the folder holding the new name
        assert len(synced) == 2 and synced[0].startswith(str(tmp_path / "sub" / ".report.json.tmp-"))
        assert synced[1] == str(tmp_path / "sub")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(b"old good bytes")

    def half_then_crash(handle):
        handle.write(b"half of the new")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        sio.atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old good bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_full_disk_raises_enospc_naming_the_target_and_keeps_the_old_file(tmp_path):
    disk = tmp_path / "disk"
    with tmpfs(disk, 256 << 10) as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here; tests/train/test_state.py covers a patched full disk")
        target = disk / "state.pt"
        sio.atomic_write_bytes(target, b"old good bytes")
        # torch.save reports a full disk only as "unexpected pos ..."; atomic_write raises the real cause
        with pytest.raises(OSError) as info:
            sio.atomic_write(target, lambda handle: torch.save({"w": torch.zeros(200_000)}, handle))
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
        assert target.read_bytes() == b"old good bytes"
        assert [p.name for p in disk.iterdir()] == ["state.pt"]


# ---------------------------------------------------------------------------------------------------- folders
def _fill(folder, text="new"):
    (folder / "model.safetensors").write_text(text)
    (folder / "config.json").write_text("{}")


def test_output_folder_writes_a_manifest_and_normal_modes(tmp_path, umask_022):
    dst = tmp_path / "out"
    with sio.output_folder(dst, command="convert official") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.partial-") and not dst.exists()
        _fill(tmp)
    manifest = json.loads((dst / sio.MANIFEST).read_text())
    assert manifest == {"command": "convert official", "files": {"config.json": 2, "model.safetensors": 3}}
    assert oct(dst.stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_foreign_non_empty_destination_is_refused_untouched(tmp_path):
    dst = tmp_path / "dst"
    (dst / "sub").mkdir(parents=True)
    (dst / "notes.txt").write_text("mine")
    before = tree_digest(dst)
    with pytest.raises(UserError, match=r"is not empty and is not an earlier output of `slimkv convert official` "
                                        r"\(it holds notes.txt, sub/\); pass --overwrite"):
        with sio.output_folder(dst, command="convert official") as tmp:
            _fill(tmp)
    assert tree_digest(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_an_earlier_output_is_replaced_but_not_one_the_user_added_to(tmp_path):
    dst = tmp_path / "dst"
    with sio.output_folder(dst, command="convert official") as tmp:
        _fill(tmp, "first")
    with sio.output_folder(dst, command="convert official") as tmp:
        _fill(tmp, "second!")
    assert (dst / "model.safetensors").read_text() == "second!"
    # another command's output is not this command's to replace
    with pytest.raises(UserError, match="not an earlier output of `slimkv convert to-official`"):
        sio.check_output_folder(dst, command="convert to-official")
    (dst / "notes.txt").write_text("added by the user")
    with pytest.raises(UserError, match=r"\(it holds notes.txt\)"):
        sio.check_output_folder(dst, command="convert official")
    (dst / "notes.txt").unlink()
    (dst / "config.json").write_text("{edited: by hand}")
    with pytest.raises(UserError, match=r"\(it holds config.json\)"):
        sio.check_output_folder(dst, command="convert official")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_overwrite_replaces_only_once_the_new_output_is_complete(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(sio, "_RENAMEAT2", None)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        with sio.output_folder(dst, command="convert official", overwrite=True) as tmp:
            _fill(tmp)
            assert (dst / "notes.txt").read_text() == "mine"
            raise RuntimeError("conversion failed half way")
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    with sio.output_folder(dst, command="convert official", overwrite=True) as tmp:
        _fill(tmp)
    assert sorted(p.name for p in dst.iterdir()) == [sio.MANIFEST, "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_the_working_folder_its_parents_and_the_source_are_never_destinations(tmp_path, monkeypatch):
    work = tmp_path / "work"
    src = tmp_path / "models" / "src"
    src.mkdir(parents=True)
    work.mkdir()
    monkeypatch.chdir(work)
    cases = [(".", "it is the working folder"), ("..", "it is a parent of the working folder"),
             (str(src), "it is the source itself"), (str(src.parent), "it is a folder holding the source")]
    for dst, needle in cases:
        for overwrite in (False, True):
            with pytest.raises(UserError, match=needle):
                sio.check_output_folder(dst, command="convert official", overwrite=overwrite, sources=[src])
    # a new folder inside the source is fine: nothing of the source is replaced
    assert sio.check_output_folder(src / "out", command="x", sources=[src]) == src / "out"


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "dst").write_text("a file")
    with pytest.raises(UserError, match="exists and is not a folder"):
        sio.check_output_folder(tmp_path / "dst", command="convert official", overwrite=True)


# ---------------------------------------------------------------------------------------------------- locks
def test_a_second_lock_names_the_holder_pid_and_is_free_after_release(tmp_path):
    path = tmp_path / "run" / ".lock"
    first = sio.FileLock(path, what="run folder 'run'").acquire()
    with pytest.raises(UserError, match=rf"run folder 'run' is in use by another process \(PID {os.getpid()}\)"):
        sio.FileLock(path, what="run folder 'run'").acquire()
    first.release()
    with sio.FileLock(path, what="run folder 'run'"):
        assert path.read_text().strip() == str(os.getpid())


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from slimkv.io import FileLock; FileLock(sys.argv[1], 'x').acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"PID {holder.pid}\)"):
            sio.FileLock(path, what="x").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 5
    while True:
        try:
            sio.FileLock(path, what="x").acquire().release()
            break
        except UserError:
            assert time.time() < deadline
            time.sleep(0.05)


def test_a_waiting_lock_takes_over_when_the_holder_releases(tmp_path, caplog):
    path = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from slimkv.io import FileLock; lock = FileLock(sys.argv[1], 'x').acquire(); "
        "print('held', flush=True); time.sleep(3.0); lock.release(); time.sleep(60)"), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        with caplog.at_level("INFO", logger="slimkv.io"):
            with sio.FileLock(path, what="the shard", wait=True):
                waited = time.perf_counter() - started
                assert path.read_text().strip() == str(os.getpid())
        assert waited > 0.5  # it waited for the release, it did not fail or skip the lock
        assert f"waiting for PID {holder.pid}, which holds the shard" in caplog.text
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
