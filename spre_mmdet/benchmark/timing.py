"""GPU timing (CUDA events, median and IQR) and interleaved wall-clock timing of several
workloads (the environment a timing was taken in: :mod:`spre_mmdet.environment`)."""
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

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
