"""Two gloo processes (DDP and FSDP2) give the single-process loss sequence for the same global batch,
including a stop + resume through distributed checkpoints halfway."""
import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from slimkv.train.trainer import Trainer

from .dist_worker import run_engines
from .helpers import tiny_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("arch", ["rodimus_plus"])
def test_ddp_and_fsdp_match_single_process(tmp_path, arch):
    single = Trainer(tiny_config(tmp_path / "single", "single", arch,
                                 train={"steps": 4, "checkpoint_every": 0}, eval={"every": 2})).fit()
    out = tmp_path / "dist"
    out.mkdir()
    mp.spawn(run_engines, args=(2, free_port(), str(out), ["ddp", "fsdp"], arch), nprocs=2, join=True)
    for rank in range(2):
        results = json.loads((out / f"result-rank{rank}.json").read_text())
        for engine in ("ddp", "fsdp"):
            torch.testing.assert_close(torch.tensor(results[engine]["losses"], dtype=torch.float64),
                                       torch.tensor(single.losses, dtype=torch.float64), rtol=1e-5, atol=0)
            assert results[engine]["heldout_loss"] == pytest.approx(single.heldout_loss, rel=1e-5)
    # the FSDP run wrote a DCP checkpoint and a full Hugging Face export
    assert (out / "fsdp" / "checkpoints" / "step-000004" / "dcp").is_dir()
    assert (out / "fsdp" / "model" / "model.safetensors").exists()
