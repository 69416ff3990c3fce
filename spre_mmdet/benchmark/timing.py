"""GPU timing (CUDA events, median and IQR), device time with the host's dispatch out of the
timed region (:func:`device_time`), and interleaved wall-clock timing of several workloads (the
environment a timing was taken in: :mod:`spre_mmdet.environment`)."""
import math
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

NEEDS_GPU = ('the 2:4 sparse tensor-core path needs an NVIDIA Ampere or newer GPU (compute '
             'capability >= 8.0, e.g. A100, RTX 30xx/40xx, H100) and a CUDA build of PyTorch')


def sparse_support(device: str) -> Tuple[bool, Optional[str]]:
    """Can ``device`` run semi-structured sparse kernels? ``(ok, reason if not)``."""
    if not str(device).startswith('cuda'):
        return False, f'device is {device}: {NEEDS_GPU}'
    if not torch.cuda.is_available():
        return False, f'CUDA is not available ({torch.__version__}): {NEEDS_GPU}'
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if major < 8:
        name = torch.cuda.get_device_name(torch.device(device))
        return False, f'{name} has compute capability {major}.{minor}: {NEEDS_GPU}'
    return True, None


def summarize(samples_ms) -> Dict[str, float]:
    """Median, quartiles and IQR of per-repeat times in ms."""
    s = sorted(samples_ms)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method='inclusive')
    else:
        q1 = q3 = s[0]
    return dict(median_ms=statistics.median(s), q1_ms=q1, q3_ms=q3, iqr_ms=q3 - q1,
                min_ms=s[0], repeats=len(s))


@torch.no_grad()
def cuda_time(fn: Callable[[], object], warmup: int = 10, repeats: int = 50,
              min_repeat_ms: float = 0.5) -> Dict[str, float]:
    """Time ``fn`` on the current CUDA stream.

    ``warmup`` untimed calls (cuDNN autotuning, cuSPARSELt plan, allocator), then ``repeats``
    samples. Each sample brackets ``inner`` back-to-back calls with a pair of CUDA events and
    divides, ``inner`` chosen so a sample lasts at least ``min_repeat_ms`` (so event and
    launch overhead do not dominate tiny kernels). Returns :func:`summarize` of the samples
    plus ``inner``.
    """
    for _ in range(max(warmup, 1)):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end), 1e-3)
    inner = max(1, min(1000, int(min_repeat_ms / one + 0.999)))
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / inner)
    out = summarize(samples)
    out['inner'] = inner
    return out


def synchronize(device) -> None:
    """Wait for ``device`` (a no-op on CPU)."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(workloads: Dict[str, Callable[[], object]], rounds: int,
                     setup: Optional[Dict[str, Callable[[], object]]] = None,
                     warmup: int = 1, device: str = 'cpu') -> Dict[str, List[float]]:
    """``{name: [seconds per round]}`` (wall clock): ``warmup`` untimed passes over all
    workloads, then ``rounds`` rounds running each workload once, the order rotated every round
    so that load from other processes hits all of them alike; ``setup[name]`` (untimed) runs
    right before ``name``."""
    setup = setup or {}
    names = list(workloads)
    for _ in range(warmup):
        for name in names:
            setup.get(name, lambda: None)()
            workloads[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            setup.get(name, lambda: None)()
            synchronize(device)
            start = time.perf_counter()
            workloads[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------------------------
# Device time without the host: CUDA graphs, a busy GPU ahead of the timed region, and a check
# of every sample that the host was done before the GPU got there.
# --------------------------------------------------------------------------------------------
#: device_time's modes: the calls captured in one CUDA graph replayed per sample, or (capture
#: failed) the same calls issued eagerly, all enqueued before the GPU reaches them
MODES = ('cuda_graph', 'pre_enqueued')


class CudaClock:
    """What :func:`device_time` needs of the GPU, in one place (the CPU tests replace it by a
    simulated timeline)."""

    def __init__(self):
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._cycles_per_ms: Optional[float] = None

    @staticmethod
    def now() -> float:
        """The host's clock (s)."""
        return time.perf_counter()

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def warmup(self, fn: Callable[[], object], calls: int) -> None:
        """``calls`` calls on a side stream, as CUDA-graph capture wants (cuBLAS / cuSPARSELt
        handles and workspaces, cuDNN autotuning, allocator pools are set up outside it)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(calls):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def capture(self, fn: Callable[[], object], calls: int) -> Tuple[Callable[[], None], Any]:
        """``calls`` back-to-back calls of ``fn`` captured in one CUDA graph: (replay, graph)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        torch.cuda.synchronize()
        return graph.replay, graph

    def cycles_per_ms(self) -> float:
        """GPU clock cycles per ms of ``torch.cuda._sleep`` (calibrated once)."""
        if self._cycles_per_ms is None:
            cycles = 1_000_000
            torch.cuda.synchronize()
            self._start.record()
            torch.cuda._sleep(cycles)
            self._end.record()
            self._end.synchronize()
            self._cycles_per_ms = cycles / max(self._start.elapsed_time(self._end), 1e-3)
        return self._cycles_per_ms

    def busy(self, ms: float) -> None:
        """Keep the GPU busy for about ``ms`` (a spin kernel) ahead of what is enqueued next."""
        torch.cuda._sleep(max(1, int(ms * self.cycles_per_ms())))

    def record_start(self) -> None:
        self._start.record()

    def record_end(self) -> None:
        self._end.record()

    def start_reached(self) -> bool:
        """Has the GPU reached the start event yet?"""
        return self._start.query()

    def elapsed_ms(self) -> float:
        self._end.synchronize()
        return self._start.elapsed_time(self._end)


def choose_inner(per_call_ms: float, min_repeat_ms: float, max_inner: int) -> int:
    """Calls per sample so that a sample lasts at least ``min_repeat_ms`` (1..``max_inner``)."""
    if per_call_ms <= 0:
        return max_inner
    return max(1, min(max_inner, math.ceil(min_repeat_ms / per_call_ms)))


def host_time(fn: Callable[[], object], calls: int = 20, rounds: int = 5,
              clock: Optional[CudaClock] = None) -> float:
    """Host (CPU) ms to issue one call of ``fn``: median over ``rounds`` of ``calls`` calls
    issued back to back without synchronizing (kernel launches return at once, so this is the
    Python, dispatch and launch cost, not the GPU's)."""
    clock = clock or CudaClock()
    per_call = []
    for _ in range(rounds):
        clock.synchronize()
        t0 = clock.now()
        for _ in range(calls):
            fn()
        per_call.append((clock.now() - t0) * 1e3 / calls)
    clock.synchronize()
    return statistics.median(per_call)


@torch.no_grad()
def device_time(fn: Callable[[], object], warmup: int = 10, repeats: int = 50,
                min_repeat_ms: float = 0.5, graph: bool = True, max_inner: int = 200,
                clock: Optional[CudaClock] = None, max_guard_ms: float = 200.0
                ) -> Dict[str, object]:
    """GPU time of one call of ``fn`` with the host's work out of the timed region.

    A small GEMM takes a few microseconds on the GPU, and issuing it (Python, PyTorch's
    dispatch, for a ``SparseSemiStructuredTensor`` its ``__torch_dispatch__`` and custom op)
    can take ten times that: back-to-back calls timed with CUDA events (:func:`cuda_time`)
    then measure the host. Here:

    1. ``inner`` back-to-back calls are captured in one CUDA graph (``mode='cuda_graph'``); a
       sample replays it. Where capture fails (``fn`` synchronizes or is not capturable) the
       calls are issued eagerly instead (``mode='pre_enqueued'``, with ``note``).
    2. Before each sample the GPU is kept busy (a spin kernel of ``guard_ms``), so the whole
       sample (start event, replay or calls, end event) is enqueued before the GPU reaches it.
    3. The proof, per sample: right after enqueueing the end event the host asks whether the GPU
       has reached the start event. If not, the GPU ran the sample from a full queue and never
       waited for the host. A sample where it had is discarded and the guard doubled. The
       result counts them (``host_waits``); ``host_free`` is True when every kept sample was
       such a sample.

    Returns :func:`summarize` of the per-call device ms plus ``mode``, ``inner``,
    ``host_free``, ``host_waits``, ``guard_ms``, ``enqueue_ms`` (host ms to enqueue one
    sample), ``host_ms`` (host ms to issue one eager call), ``eager_ms`` (per call, eager calls
    back to back between two events: what :func:`cuda_time` measures, host-bound when
    ``host_ms`` exceeds the device time) and ``note``.
    """
    clock = clock or CudaClock()
    clock.warmup(fn, max(warmup, 1))
    host_ms = host_time(fn, calls=5, rounds=3, clock=clock)
    probe = 10
    clock.synchronize()
    clock.record_start()
    for _ in range(probe):
        fn()
    clock.record_end()
    eager_ms = clock.elapsed_ms() / probe

    note = None
    mode = 'cuda_graph' if graph else 'pre_enqueued'
    #: eager calls per sample at most: more kernels than CUDA's launch queue holds would make
    #: the host wait for the GPU inside the sample
    max_eager = min(max_inner, 64)
    inner = choose_inner(eager_ms, min_repeat_ms, max_inner if graph else max_eager)
    held = None  # the graph, kept alive while it is replayed

    def build(n: int):
        nonlocal mode, note, held
        if mode == 'cuda_graph':
            try:
                launch, held = clock.capture(fn, n)
                return launch
            except Exception as exc:  # noqa: BLE001  (not capturable: time it eagerly)
                clock.synchronize()
                mode = 'pre_enqueued'
                n = min(n, max_eager)
                note = (f'CUDA graph capture failed ({type(exc).__name__}: '
                        f'{str(exc).strip().splitlines()[0] if str(exc).strip() else ""}); '
                        'calls issued eagerly ahead of the GPU')

        def launch():
            for _ in range(n):
                fn()
        return launch

    launch = build(inner)
    if mode == 'pre_enqueued':
        inner = min(inner, max_eager)

    def enqueue_ms() -> float:
        clock.synchronize()
        t0 = clock.now()
        launch()
        t = (clock.now() - t0) * 1e3
        clock.synchronize()
        return t

    # the graph's device time per call decides the final number of calls per sample
    clock.synchronize()
    clock.busy(max(2 * enqueue_ms(), 0.05))
    clock.record_start()
    launch()
    clock.record_end()
    per_call = clock.elapsed_ms() / inner
    better = choose_inner(per_call, min_repeat_ms,
                          max_inner if mode == 'cuda_graph' else max_eager)
    if better > inner:
        inner = better
        launch = build(inner)
        if mode == 'pre_enqueued':
            inner = min(inner, max_eager)

    guard_ms = max(2.0 * enqueue_ms(), 0.05)
    samples: List[float] = []
    enqueued: List[float] = []
    host_waits = 0
    gave_up = False
    while len(samples) < repeats:
        if not gave_up:
            clock.busy(guard_ms)
        clock.record_start()
        t0 = clock.now()
        launch()
        clock.record_end()
        t_enqueue = (clock.now() - t0) * 1e3
        reached = clock.start_reached()
        ms = clock.elapsed_ms() / inner
        if reached and not gave_up:  # the GPU waited for the host in this sample: drop it
            host_waits += 1
            if guard_ms >= max_guard_ms or host_waits > 12:
                # fn itself waits for the GPU (e.g. a .item()): the host cannot run ahead of
                # it. Time it as it is, every sample alike, and say so.
                gave_up = True
                samples, enqueued = [], []
            else:
                guard_ms = min(2.0 * guard_ms, max_guard_ms)
            continue
        samples.append(ms)
        enqueued.append(t_enqueue)
    host_free = not gave_up
    if gave_up:
        note = ((note + '; ') if note else '') + (
            f'the GPU reached the timed region before the host had enqueued it in {host_waits} '
            f'tries with up to {guard_ms:.3g} ms of lead (fn synchronizes with the host?): the '
            'times include host work')
    out = summarize(samples)
    out.update(mode=mode, inner=inner, host_free=host_free, host_waits=host_waits,
               guard_ms=guard_ms,
               enqueue_ms=statistics.median(enqueued) if enqueued else None,
               host_ms=host_ms, eager_ms=eager_ms, note=note)
    return out
