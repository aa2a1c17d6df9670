import pytest
import torch

from nucseg.engine.device import select_device


def test_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto").type == "cpu"
    assert select_device("cpu", local_rank=3, world_size=4).type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        select_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        select_device("gpu")


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto", local_rank=0, world_size=2) == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="train.device=cpu"):
        select_device("auto", local_rank=1, world_size=2)


def test_inference_commands_let_idle_openmp_threads_sleep_unless_the_user_chose():
    """Set before torch loads (libgomp reads it once), and a user's value wins; run in fresh interpreters."""
    import os
    import subprocess
    import sys

    probe = (
        "import os, sys; from nucseg.engine.device import passive_omp_wait; passive_omp_wait(); "
        "assert 'torch' not in sys.modules; print(os.environ.get('OMP_WAIT_POLICY'))"
    )

    def policy(env):
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert policy(base) == "PASSIVE"
    assert policy({**base, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


@pytest.mark.parametrize("amx", [False, True])
def test_auto_precision_trains_in_bf16_on_bf16_cpus_and_infers_in_fp32(monkeypatch, amx):
    """bf16 inference did not hold the `he` U-Net's H&E scores, so `auto` keeps it for training (on AMX CPUs and
    GPUs); asked for by name, either precision passes through."""
    from nucseg.engine import device

    monkeypatch.setattr(device, "cpu_trains_bf16", lambda: amx)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert device.resolve_precision("auto", cpu) == device.cpu_precision(None) == "fp32"
    assert device.resolve_precision("auto", cpu, training=True) == ("bf16" if amx else "fp32")
    assert device.resolve_precision("auto", gpu) == device.resolve_precision("auto", gpu, training=True) == "bf16"
    assert device.resolve_precision("bf16", cpu) == "bf16" and device.cpu_precision("fp32", training=True) == "fp32"
    with pytest.raises(ValueError, match="precision must be"):
        device.cpu_precision("fp16")


@pytest.mark.parametrize("flags, trains_bf16, amx", [("avx2 fma", False, False), ("avx2 avx512f avx512_bf16", True, False),
                                                     ("avx512_bf16 amx_bf16 amx_tile", True, True)])
def test_bf16_training_follows_the_cpu_flags(monkeypatch, flags, trains_bf16, amx):
    from nucseg.engine import device

    monkeypatch.setattr(device, "_cpu_flags", lambda: set(flags.split()))
    assert device.cpu_trains_bf16() is trains_bf16 and device.cpu_has_amx() is amx
    assert device.cpu_precision("auto", training=True) == ("bf16" if trains_bf16 else "fp32")
