"""utils/dist: the process group's backend follows the stage's device (NCCL on CUDA, gloo on CPU), decided
and bound without needing a GPU to test."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from stsae.utils import dist


@pytest.fixture
def fake_group(monkeypatch):
    """Two torchrun ranks, with init/destroy recorded instead of performed."""
    calls: list[tuple[str, object]] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist.torch_dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist.torch_dist, "init_process_group",
                        lambda backend, **options: calls.append(("init", (backend, options))))
    monkeypatch.setattr(dist.torch_dist, "destroy_process_group", lambda: calls.append(("destroy", None)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    return calls


def test_backend_is_nccl_for_cuda_and_gloo_for_cpu():
    assert dist.backend_for(torch.device("cuda", 1)) == "nccl"
    assert dist.backend_for(torch.device("cpu")) == "gloo"


def test_a_cuda_stage_joins_nccl_bound_to_its_own_gpu(fake_group):
    gpu = torch.device("cuda", 1)
    with dist.process_group(gpu):
        pass
    assert fake_group == [("set_device", gpu), ("init", ("nccl", {"device_id": gpu})), ("destroy", None)]


def test_a_cpu_stage_joins_gloo_and_touches_no_gpu(fake_group):
    with dist.process_group():
        pass
    assert fake_group == [("init", ("gloo", {})), ("destroy", None)]


def test_a_timeout_is_passed_to_the_group(fake_group):
    with dist.process_group(torch.device("cpu"), timedelta(hours=2)):
        pass
    assert fake_group[0] == ("init", ("gloo", {"timeout": timedelta(hours=2)}))


def test_one_process_joins_no_group(fake_group, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with dist.process_group(torch.device("cuda", 0)):
        dist.barrier()
    assert fake_group == []
