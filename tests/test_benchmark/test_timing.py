"""spre_mmdet.benchmark.timing: the interleaved wall-clock timing of several workloads."""
from spre_mmdet.benchmark import timing


def test_time_interleaved_rotates_the_order_every_round():
    """Each workload runs once per round after its setup, the order rotated every round; the
    warm-up calls are not timed."""
    calls = []
    work = {name: (lambda name=name: calls.append(name)) for name in 'abc'}
    setup = {'b': lambda: calls.append('setup b')}
    times = timing.time_interleaved(work, rounds=3, setup=setup, warmup=1)
    assert calls == ['a', 'setup b', 'b', 'c',  # warm-up
                     'a', 'setup b', 'b', 'c', 'setup b', 'b', 'c', 'a', 'c', 'a', 'setup b',
                     'b']
    assert {k: len(v) for k, v in times.items()} == dict(a=3, b=3, c=3)
    assert all(t >= 0 for ts in times.values() for t in ts)
