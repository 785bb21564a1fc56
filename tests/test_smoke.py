import raylite


def test_task_roundtrip(shared_cluster):
    @raylite.remote
    def f(x):
        return x * 2

    assert raylite.get(f.remote(21)) == 42
