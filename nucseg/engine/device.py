"""Device, precision and thread settings. Torch is imported where a function needs it, so the torch-free
inference path can use `configure_malloc` and `cpu_has_amx`."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_amx() -> bool:
    """OpenVINO's bf16 inference was measured faster than f32 on CPUs with AMX tiles (docs/design.md)."""
    return "amx_bf16" in _cpu_flags()


def cpu_trains_bf16() -> bool:
    """bf16 autocast training pays on CPUs with bf16 dot products: AMX tiles, or AVX-512 BF16 (an AMD EPYC with
    avx512_bf16 and no AMX, 2 threads, FrGNet's he-cpu step: 1.30 s in bf16 against 1.74 s in fp32, one run of 12
    steps each, 2026-12-04). On AVX2-only CPUs bf16 is many times slower than fp32."""
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def cpu_precision(precision: str | None, training: bool = False) -> str:
    """The CPU's precision for `precision`, torch-free. None or auto: fp32 for inference; for training, bf16 where the CPU
    has bf16 dot products (AMX or AVX-512 BF16: faster steps; each train.csv row names its precision), else fp32.
    Inference stays fp32 because OpenVINO bf16 did not hold the shipped `he` U-Net's scores on the H&E protocol's
    validation split (PQ 0.515 -> 0.509, AJI 0.553 -> 0.552; fluo held: 0.773 -> 0.774), though the whole `nucseg
    segment` ran 1.35x faster with it on AMX: `--precision bf16` asks for it. (CUDA keeps bf16 under auto; its accuracy
    there is not measured.)"""
    if precision in (None, "auto"):
        return "bf16" if training and cpu_trains_bf16() else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not '{precision}'")
    return precision


def resolve_precision(precision: str, device: torch.device, training: bool = False) -> str:
    """auto: bf16 on a GPU; on a CPU, `cpu_precision`'s rule (bf16 only to train, on CPUs with bf16 dot products)."""
    if precision in (None, "auto") and device.type == "cuda":
        return "bf16"
    return cpu_precision(precision, training)


def autocast(device: torch.device, precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: int) -> None:
    """torch's CPU threads (the exported-graph path takes its own `threads`; without torch this does nothing)."""
    try:
        import torch
    except ImportError:
        return
    if threads > 0:
        torch.set_num_threads(threads)


def configure_malloc() -> None:
    """glibc returns big tensor buffers to the OS after each use (~25 % slower); keep them (mallopt at start-up)."""
    if os.name != "posix":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX
        libc.mallopt(-1, 100_000_000_000)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def passive_omp_wait() -> None:
    """Idle OpenMP threads sleep instead of spinning, for inference: there numpy and scipy post-processing runs between
    torch calls, and spinning workers take its cores (docs/sam-eunet3p.md, #28: `nucseg segment` 0.96x the wall time
    with `he` on torch, 0.98x with sam-eunet3p). libgomp reads the variable once, when torch loads, so this acts only
    before that, and a value the user set wins. Training keeps the spin (back-to-back torch calls gain from it)."""
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def select_device(name: str = "auto", local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The one place a device is chosen. `name`: auto (CUDA when available, else CPU) | cpu | cuda | cuda:N.

    Under DDP each process takes GPU `local_rank`; with more processes on a node than GPUs that would silently
    oversubscribe (or fail deep inside NCCL), so it is an error here that says what to do instead."""
    import torch

    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not '{name}'")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' asked for, but torch sees no CUDA device")
    if name.startswith("cuda:"):
        return torch.device(name)
    count = torch.cuda.device_count()
    if world_size > 1 and local_rank >= count:
        raise RuntimeError(f"process {local_rank} of {world_size} on this node has no GPU ({count} visible): start "
                           f"at most {count} processes per node (torchrun --nproc_per_node {count}), or train on "
                           "the CPU with --set train.device=cpu")
    return torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible to this process, without importing torch (its device nodes)."""
    return os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES", "x") not in ("", "-1")


def default_device() -> torch.device:
    return select_device("auto")
