"""The few distributed pieces the trainer needs (torchrun, FSDP2), each a no-op on one process.

Under `torchrun` (WORLD_SIZE > 1) the process group is nccl on CUDA and gloo on CPU; every block and the root are
sharded with FSDP2 `fully_shard`; full state dicts are gathered to rank 0, which alone writes logs and checkpoints; on
resume rank 0 reads the checkpoint and broadcasts it (`broadcast_from_rank0`). FSDP2 runs on CPU with gloo in torch
2.13 (gloo has reduce-scatter), which the tests use. References: torchtitan (FSDP2 + distributed state dicts).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def launched_rank() -> int:
    """This process's rank as torchrun set it, before any process group exists."""
    return int(os.environ.get("RANK", "0"))


def start(device: torch.device) -> tuple[torch.device, bool]:
    """Under torchrun: the local GPU for this rank, and a process group (nccl on CUDA, gloo on CPU). Returns the device
    and whether this call created the group (then `stop` ends it)."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", device.index or 0)))
        torch.cuda.set_device(device)  # before NCCL starts
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device, True
    return device, False


def stop(created: bool) -> None:
    if created:
        dist.destroy_process_group()


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world() > 1:
        dist.all_reduce(t)
    return t


def broadcast_objects(objects: list) -> list:
    """Rank 0's `objects` on every rank (torch's own message between our processes, not a file)."""
    if world() > 1:
        dist.broadcast_object_list(objects, src=0)
    return objects


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2: each transformer block is one unit (its parameters all-gathered just before its forward and freed
    after), then the root (embedding, final norm, LM head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world(),))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def state_options(**kw):
    """Full (unsharded) state dicts, offloaded to the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_state(model, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Every weight (or the trainable ones) by name, on CPU; under FSDP a collective, and only rank 0 receives them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=state_options(ignore_frozen_params=trainable_only))


def full_optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=state_options())


def load_states(model, optimizer, model_tensors: dict, optim_state: dict) -> None:
    """Full state dicts (rank 0's; broadcast to the shards under FSDP) into the model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    options = state_options(strict=False, broadcast_from_rank0=world() > 1)
    set_model_state_dict(model, model_tensors, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)
