"""Worker for the 2-process gloo tests (imported by torch.multiprocessing.spawn children)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist


def run_engines(rank: int, world_size: int, port: int, out_dir: str, engines: list[str], arch: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from slimkv.train.trainer import Trainer, TrainingInterrupted

    from .helpers import tiny_config

    results = {}
    try:
        for engine in engines:
            # FSDP also recomputes activations per block (AC wrapped inside fully_shard, as in production)
            cfg = tiny_config(Path(out_dir), engine, arch, train={"parallel": engine, "steps": 4, "checkpoint_every": 0,
                                                                  "export_model": True,
                                                                  "activation_checkpointing": engine == "fsdp"},
                              eval={"every": 2})

            def stop_at_2(trainer, step, loss):
                if step == 2:
                    trainer.request_stop()

            first = []
            try:
                Trainer(cfg, callbacks=(lambda t, s, loss: first.append(loss), stop_at_2)).fit()
            except TrainingInterrupted:
                pass
            resumed = Trainer(cfg, resume=True).fit()
            results[engine] = {"losses": first + resumed.losses, "heldout_loss": resumed.heldout_loss}
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"result-rank{rank}.json").write_text(json.dumps(results))
