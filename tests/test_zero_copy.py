"""Zero-copy torch tensors through the object store (SPEC: "Zero-copy tensors")."""

from __future__ import annotations

import warnings

import pytest

import raylite as ray
from raylite.core import serialization
from raylite.exceptions import ZeroCopyTensorsWarning

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.timeout(120)


def _in_store_mapping(t) -> bool:
    """True when the tensor's memory lies inside a mapped object-store file."""
    ptr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and "/raylite_" in parts[5]:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= ptr < hi:
                    return True
    return False


@pytest.fixture
def zero_copy():
    ctx = ray.init(nodes=[{"num_cpus": 1}, {"num_cpus": 1, "labels": {"side": "far"}}],
                   enable_zero_copy_torch_tensors=True)
    try:
        yield ctx
    finally:
        ray.shutdown()
        serialization.set_zero_copy_torch(False)


def test_get_on_the_node_is_a_view_of_the_store(zero_copy):
    t = torch.randn(4 * 1024 * 1024)  # 16 MiB, far above the inline limit
    out = ray.get(ray.put(t))
    assert torch.equal(out, t)
    assert _in_store_mapping(out)


def test_one_gib_tensor_round_trip(zero_copy):
    t = torch.ones(256 * 1024 * 1024, dtype=torch.float32)  # 1 GiB
    t[123_456_789] = 7.0
    ref = ray.put(t)

    @ray.remote
    def inspect(x):
        return x.numel(), float(x[123_456_789]), float(x[:1000].sum())

    assert ray.get(inspect.remote(ref), timeout=60) == (t.numel(), 7.0, 1000.0)
    out = ray.get(ref)
    assert out.shape == t.shape and _in_store_mapping(out)
    assert float(out[123_456_789]) == 7.0


def test_state_dict_is_zero_copy_and_loads_into_a_model(zero_copy):
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 8))
    ref = ray.put(model.state_dict())
    sd = ray.get(ref)
    assert set(sd) == set(model.state_dict())
    big = [v for v in sd.values() if v.numel() * v.element_size() > 64 * 1024]
    assert big and all(_in_store_mapping(v) for v in big)
    x = torch.randn(4, 256)

    @ray.remote
    def infer(state, batch):
        m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 8))
        m.load_state_dict(state)
        with torch.no_grad():
            return m(batch)

    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(ray.get(infer.remote(ref, x), timeout=30), expected)


def test_non_contiguous_tensor_warns_and_round_trips(zero_copy):
    t = torch.randn(300, 500).T
    assert not t.is_contiguous()
    with pytest.warns(ZeroCopyTensorsWarning, match="non-contiguous"):
        ref = ray.put(t)
    out = ray.get(ref)
    assert torch.equal(out, t) and out.is_contiguous()


def test_dtypes_shapes_and_requires_grad(zero_copy):
    cases = [torch.arange(100_000, dtype=torch.int64), torch.randn(300, 300).to(torch.bfloat16),
             torch.rand(200_000) > 0.5, torch.randn(50_000, dtype=torch.complex64),
             torch.tensor(3.5), torch.empty(0, 7)]
    for t in cases:
        out = ray.get(ray.put(t))
        assert out.dtype == t.dtype and out.shape == t.shape and torch.equal(out, t)
    g = torch.randn(100_000, requires_grad=True)
    out = ray.get(ray.put(g))
    assert not out.requires_grad and torch.equal(out, g.detach())


def test_alias_warning_once_and_writes_do_not_change_the_stored_object(zero_copy):
    serialization._alias_warned = False
    ref = ray.put(torch.zeros(1_000_000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = ray.get(ref)
        ray.get(ref)
    assert sum(issubclass(w.category, ZeroCopyTensorsWarning) for w in caught) == 1
    a[0] = 42.0  # copy-on-write: private to this reader
    assert float(ray.get(ref)[0]) == 0.0


def test_other_node_reads_the_tensor(zero_copy):
    t = torch.randn(2_000_000)
    ref = ray.put(t)

    @ray.remote(label_selector={"side": "far"})
    def far(x):
        return ray.get_runtime_context().get_node_id(), float(x.sum())

    node, total = ray.get(far.remote(ref), timeout=30)
    here = ray.get_runtime_context().get_node_id()
    assert node != here and total == pytest.approx(float(t.sum()), rel=1e-5)


def test_without_the_flag_tensors_round_trip_with_a_copy():
    serialization.set_zero_copy_torch(False)
    ray.init(num_cpus=1)
    try:
        t = torch.randn(1_000_000)
        ref = ray.put(t)
        out = ray.get(ref)
        assert torch.equal(out, t) and not _in_store_mapping(out)
        out[0] = 1.0  # an ordinary, writable tensor, not the stored one
        assert float(ray.get(ref)[0]) == float(t[0])
        # torch's own pickling keeps requires_grad and takes any layout: so does the copy
        w = torch.randn(300, 200, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no zero-copy warnings without the flag
            back = ray.get(ray.put({"w": w, "wt": w.detach().t()}))
        assert back["w"].requires_grad and torch.equal(back["w"], w)
        assert torch.equal(back["wt"], w.detach().t())
    finally:
        ray.shutdown()


def test_store_falls_back_to_a_temp_dir_when_dev_shm_is_small(tmp_path, monkeypatch):
    import tempfile

    import numpy as np

    from raylite.core import store

    monkeypatch.delenv(store.ROOT_ENV, raising=False)
    monkeypatch.setattr(store, "MIN_SHM_FREE", 1 << 62)  # /dev/shm is never big enough
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.warns(UserWarning, match="shm-size"):
        ray.init(num_cpus=1)
    try:
        a = np.arange(1_000_000)
        ref = ray.put(a)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("raylite_")]

        @ray.remote
        def total(x):
            return int(x.sum())

        assert ray.get(total.remote(ref), timeout=30) == int(a.sum())
        assert np.array_equal(ray.get(ref), a)
    finally:
        ray.shutdown()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("raylite_")]
