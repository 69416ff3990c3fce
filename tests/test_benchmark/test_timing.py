"""spre_mmdet.benchmark.timing: interleaved wall-clock timing, and device time without the host
(on a simulated GPU timeline)."""
import pytest

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


# ---------------------------------------------------------------------------------------------
# device_time on a simulated GPU timeline (the CUDA calls are the only part not run on CPU)
# ---------------------------------------------------------------------------------------------
class FakeClock:
    """A host and a GPU in simulated time (ms): a launch costs the host its issue time and
    queues device work behind what is queued; an event completes when the GPU gets to it;
    synchronizing moves the host to the GPU's end. ``capturable=False`` makes graph capture
    fail; a workload with ``syncs=True`` waits for the GPU after every call (a ``.item()``)."""

    def __init__(self, capturable=True, replay_host_ms=0.008):
        self.host = 0.0  # ms
        self.gpu_free = 0.0
        self.capturable, self.replay_host_ms = capturable, replay_host_ms
        self.start_t = self.end_t = None
        self.captured = []

    def now(self):
        return self.host / 1e3

    def _enqueue(self, device_ms):
        begin = max(self.gpu_free, self.host)
        self.gpu_free = begin + device_ms
        return begin

    def synchronize(self):
        self.host = max(self.host, self.gpu_free)

    def warmup(self, fn, calls):
        for _ in range(calls):
            fn()
        self.synchronize()

    def capture(self, fn, calls):
        if not self.capturable:
            raise RuntimeError('operation not permitted when stream is capturing\ndetails')
        self.captured.append(calls)

        def replay():
            self.host += self.replay_host_ms
            self._enqueue(calls * fn.device_ms)
        return replay, object()

    def busy(self, ms):
        self.host += 0.003
        self._enqueue(ms)

    def record_start(self):
        self.start_t = self._enqueue(0.0)

    def record_end(self):
        self.end_t = self._enqueue(0.0)

    def start_reached(self):
        return self.start_t <= self.host

    def elapsed_ms(self):
        self.host = max(self.host, self.end_t)
        return self.end_t - self.start_t


def workload(clock, host_ms, device_ms, syncs=False):
    def fn():
        clock.host += host_ms
        clock._enqueue(device_ms)
        if syncs:
            clock.synchronize()
    fn.device_ms = device_ms
    return fn


def test_device_time_graph_removes_the_host():
    """A 5 us kernel issued by 69 us of host work (a sparse GEMM through __torch_dispatch__):
    eager back-to-back timing measures the host; the CUDA graph gives the kernel's 5 us, every
    sample enqueued before the GPU reached it."""
    clock = FakeClock()
    fn = workload(clock, host_ms=0.069, device_ms=0.005)
    t = timing.device_time(fn, warmup=2, repeats=20, min_repeat_ms=0.5, clock=clock)
    assert t['mode'] == 'cuda_graph' and t['note'] is None
    assert t['median_ms'] == pytest.approx(0.005) and t['iqr_ms'] == pytest.approx(0.0)
    assert t['eager_ms'] == pytest.approx(0.069, rel=0.05)  # host-bound
    assert t['host_ms'] == pytest.approx(0.069)
    assert t['host_free'] and t['host_waits'] == 0 and t['repeats'] == 20
    assert t['inner'] == 100 and clock.captured[-1] == 100  # 0.5 ms of kernels per sample
    assert t['enqueue_ms'] == pytest.approx(0.008)


def test_device_time_pre_enqueued_when_capture_fails():
    """No graph: the calls are issued eagerly behind a busy GPU; samples the GPU reached before
    the host had enqueued them are dropped and the lead doubled until none is."""
    clock = FakeClock(capturable=False)
    fn = workload(clock, host_ms=0.069, device_ms=0.005)
    t = timing.device_time(fn, warmup=2, repeats=10, min_repeat_ms=0.5, clock=clock)
    assert t['mode'] == 'pre_enqueued'
    assert t['note'].startswith('CUDA graph capture failed (RuntimeError: operation not '
                                'permitted when stream is capturing)')
    assert t['median_ms'] == pytest.approx(0.005)
    assert t['host_free'] and t['inner'] == 64  # capped: the launch queue must not fill
    assert t['guard_ms'] >= t['enqueue_ms']


def test_device_time_pre_enqueued_adapts_the_guard():
    """A lead shorter than the host's enqueue time is detected per sample and doubled."""
    clock = FakeClock(capturable=False)
    fn = workload(clock, host_ms=0.069, device_ms=0.005)
    real_busy = clock.busy
    first = []

    def short_first_guard(ms):  # the first sample gets almost no lead
        real_busy(0.001 if not first else ms)
        first.append(ms)
    clock.busy = short_first_guard
    t = timing.device_time(fn, warmup=1, repeats=5, clock=clock)
    assert t['host_free'] and t['median_ms'] == pytest.approx(0.005)


def test_device_time_reports_a_workload_that_waits_for_the_gpu():
    """A workload that synchronizes cannot be enqueued ahead: timed as it is, flagged."""
    clock = FakeClock(capturable=False)
    fn = workload(clock, host_ms=0.2, device_ms=1.0, syncs=True)
    t = timing.device_time(fn, warmup=1, repeats=5, clock=clock)
    assert not t['host_free'] and t['host_waits'] > 0 and t['repeats'] == 5
    assert 'include host work' in t['note']
    assert t['median_ms'] >= 1.0


def test_device_time_device_bound_workload():
    """A 2 ms kernel: one call per sample, device time as is, eager time the same."""
    clock = FakeClock()
    fn = workload(clock, host_ms=0.01, device_ms=2.0)
    t = timing.device_time(fn, warmup=1, repeats=5, clock=clock)
    assert t['inner'] == 1 and t['median_ms'] == pytest.approx(2.0)
    assert t['eager_ms'] == pytest.approx(2.0, rel=0.01) and t['host_free']


def test_choose_inner_and_host_time():
    assert timing.choose_inner(0.005, 0.5, 200) == 100
    assert timing.choose_inner(0.001, 0.5, 200) == 200
    assert timing.choose_inner(2.0, 0.5, 200) == 1
    assert timing.choose_inner(0.0, 0.5, 200) == 200
    clock = FakeClock()
    fn = workload(clock, host_ms=0.069, device_ms=1.0)
    assert timing.host_time(fn, calls=4, rounds=3, clock=clock) == pytest.approx(0.069)
