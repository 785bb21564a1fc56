"""GPU paths on a machine with NVIDIA GPUs (skipped where torch sees no CUDA device:
CI has none; run these on the device machine)."""

from __future__ import annotations

import os

import pytest

import raylite as ray

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_gpus_detected_and_task_sees_only_its_device(cluster_gpu):
    assert ray.cluster_resources().get("GPU", 0) == torch.cuda.device_count()

    @ray.remote(num_gpus=1)
    def on_gpu():
        import torch

        x = torch.ones(1024, device="cuda") * 2
        return (os.environ["CUDA_VISIBLE_DEVICES"], torch.cuda.device_count(),
                float(x.sum().item()), ray.get_gpu_ids())

    visible, count, total, ids = ray.get(on_gpu.remote(), timeout=60)
    assert count == 1 and total == 2048.0
    assert visible == str(ids[0])


def test_actor_with_gpu_holds_it(cluster_gpu):
    @ray.remote(num_gpus=1)
    class Model:
        def __init__(self):
            import torch

            self.w = torch.randn(256, 256, device="cuda")

        def run(self):
            return float((self.w @ self.w).norm().item()), os.environ["CUDA_VISIBLE_DEVICES"]

    m = Model.remote()
    norm, visible = ray.get(m.run.remote(), timeout=60)
    assert norm > 0 and visible != ""
    assert ray.available_resources().get("GPU", 0) == torch.cuda.device_count() - 1


def test_cpu_task_does_not_get_a_gpu(cluster_gpu):
    @ray.remote(num_gpus=0)
    def cpu_only():
        return ray.get_gpu_ids()

    assert ray.get(cpu_only.remote(), timeout=30) == []


@pytest.fixture
def cluster_gpu():
    ctx = ray.init(num_cpus=4)
    try:
        yield ctx
    finally:
        ray.shutdown()


def test_cuda_tensor_restored_to_its_device_with_zero_copy():
    from raylite.core import serialization

    ray.init(num_cpus=2, enable_zero_copy_torch_tensors=True)
    try:
        t = torch.randn(1_000_000, device="cuda")
        out = ray.get(ray.put(t))
        assert out.device == t.device and torch.equal(out, t)
    finally:
        ray.shutdown()
        serialization.set_zero_copy_torch(False)


def test_gpu_bundle_accelerator_label_and_fractional_gpus(cluster_gpu):
    from raylite.util import placement_group, remove_placement_group, state
    from raylite.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    node = state.list_nodes()[0]
    acc = node["labels"].get("raylite.io/accelerator-type")
    assert acc and node["resources_total"].get(f"accelerator_type:{acc}") == 1

    @ray.remote(num_gpus=0.5, num_cpus=0)
    def half():
        import torch

        return os.environ["CUDA_VISIBLE_DEVICES"], torch.cuda.device_count()

    # two half-GPU tasks share one device
    got = ray.get([half.remote(), half.remote()], timeout=60)
    assert {c for _, c in got} == {1}

    pg = placement_group([{"GPU": 1, "CPU": 1}])
    try:
        assert pg.wait(30)
        in_bundle = half.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0),
                                 label_selector={"raylite.io/accelerator-type": acc})
        visible, count = ray.get(in_bundle.remote(), timeout=60)
        assert count == 1 and visible.isdigit()
    finally:
        remove_placement_group(pg)
