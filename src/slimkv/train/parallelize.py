"""Parallelism and memory savers applied from outside the model (the model code never mentions ranks).

Order (torchtitan's): build -> activation checkpointing per block -> optional torch.compile per block ->
FSDP2 `fully_shard` per block, then on the root (or DDP around the whole model).
"""
from __future__ import annotations

import functools
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of layers (HF `model.model.layers`, or the longest ModuleList)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0:
        return layers
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not candidates:
        raise ValueError(f"cannot find the layer stack of {type(model).__name__} (no nn.ModuleList)")
    return max(candidates, key=len)


def _checkpointed_forward(original_forward, *args, **kwargs):
    # non-reentrant checkpointing supports keyword arguments and parameters without gradients
    return checkpoint(original_forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward. Parameter names and the state dict are unchanged."""
    for block in find_blocks(model):
        block.forward = functools.partial(_checkpointed_forward, block.forward)


def apply_compile(model: nn.Module) -> None:
    for block in find_blocks(model):
        block.compile()


def apply_fsdp(model: nn.Module, *, bf16: bool) -> nn.Module:
    """FSDP2: shard each block, then the root (embedding, final norm, LM head) over the default process group."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = find_blocks(model)
    for index, block in enumerate(blocks):
        # the last block's parameters are needed at once by backward: keep them gathered after forward
        fully_shard(block, reshard_after_forward=index < len(blocks) - 1, **kwargs)
    fully_shard(model, **kwargs)
    return model


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def parallelize(model: nn.Module, *, parallel: str, device: torch.device, activation_checkpointing: bool,
                compile_blocks: bool, bf16: bool) -> nn.Module:
    """Apply AC, compile and the parallel engine in that order; returns the module to call in the train loop."""
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile_blocks:
        apply_compile(model)
    if parallel == "fsdp":
        return apply_fsdp(model, bf16=bf16)
    if parallel == "ddp":
        return apply_ddp(model, device)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a DDP wrapper (FSDP2 shards in place, so it needs no unwrapping)."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def init_distributed(parallel: str, device_kind: str) -> tuple[int, int, int]:
    """Start the process group under torchrun; returns (rank, local_rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if parallel == "none":
        if world_size > 1:
            raise ValueError(f"launched with {world_size} processes but config field 'train.parallel' is 'none'; "
                             "set --train.parallel=ddp or fsdp")
        return 0, 0, 1
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            # a single process asked for ddp/fsdp (e.g. without torchrun): a world of one
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum each value over ranks (float64); the values unchanged in a single process."""
    if not _distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_max(value: float, device: torch.device) -> float:
    if not _distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()
