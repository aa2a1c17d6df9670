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
