"""Per-layer dense vs 2:4 sparse timing, numerical checks, per-layer dispatch, end to end."""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..sparsity.nm import nm_mask
from .gemm import GemmLayer, gemm_dims, search_cusparselt_algorithms
from .layers import swapped
from .timing import cuda_time, device_time, host_time

# Numerical tolerance: |y - ref| <= atol + rtol * |ref| elementwise, atol = rtol * max|ref|
# (accumulation-order error scales with the output's magnitude, not with each element).
TOLERANCES = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16, 'fp32': torch.float32}


def tolerance_text(dtype: torch.dtype) -> str:
    rtol = TOLERANCES[dtype]
    return (f'{str(dtype).replace("torch.", "")}: |y - ref| <= atol + rtol*|ref| with '
            f'rtol={rtol:g}, atol=rtol*max|ref|')


def compare(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> Dict[str, object]:
    """Max abs error, the scale and pass/fail under :data:`TOLERANCES`."""
    y, ref = y.float(), ref.float()
    rtol = TOLERANCES[dtype]
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    diff = (y - ref).abs()
    err = float(diff.max()) if diff.numel() else 0.0
    ok = bool(torch.all(diff <= rtol * scale + rtol * ref.abs())) and bool(torch.isfinite(y).all())
    return dict(max_abs_err=err, max_abs_ref=scale, rel_err=err / scale if scale else 0.0, ok=ok)


def _random_input(module: nn.Module, shape: Sequence[int], dtype, device) -> torch.Tensor:
    x = torch.randn(*shape, dtype=dtype, device=device)
    if isinstance(module, nn.Conv2d):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _merge(a: Optional[Dict[str, object]], b: Dict[str, object]) -> Dict[str, object]:
    """Accumulate a per-call result into the layer's (sum of medians / IQRs / errors)."""
    if a is None:
        return dict(b)
    for k, v in b.items():
        if k == 'ok':
            a[k] = a[k] and v
        elif k.startswith('max') or k == 'rel_err':
            a[k] = max(a[k], v)
        elif isinstance(v, (int, float)) and a.get(k) is not None and v is not None:
            a[k] = a[k] + v
        else:
            a[k] = None
    return a


def layer_calls(module: nn.Module, shapes: Sequence[Tuple[int, ...]]) -> List[dict]:
    calls = []
    for shape in shapes:
        m, n, k = gemm_dims(module, shape)
        calls.append(dict(in_shape=list(shape), M=m, N=n, K=k))
    return calls


@torch.no_grad()
def check_layer_cpu(module: nn.Module, shapes: Sequence[Tuple[int, ...]], n: int = 2, m: int = 4,
                    max_spatial: int = 64, seed: int = 0) -> Dict[str, object]:
    """CPU fp32 reference: im2col GEMM with the N:M-masked weight == the layer (F.conv2d / linear).

    The batch is cut to 1 and H, W to ``max_spatial`` (equivalence does not depend on them).
    """
    module = module.float().cpu()
    gemm = GemmLayer.from_module(module, mask=nm_mask(module.weight, n, m))
    gen = torch.Generator().manual_seed(seed)
    result = None
    for shape in dict.fromkeys(tuple(s) for s in shapes):
        shape = list(shape)
        shape[0] = 1
        if isinstance(module, nn.Conv2d):
            shape[2], shape[3] = min(shape[2], max_spatial), min(shape[3], max_spatial)
        x = torch.randn(*shape, generator=gen)
        if isinstance(module, nn.Conv2d):
            x = x.contiguous(memory_format=torch.channels_last)
        result = _merge(result, compare(gemm(x), module(x), torch.float32))
    return result or dict(max_abs_err=None, max_abs_ref=None, rel_err=None, ok=None)


#: the timed quantities of a layer (ms, per forward of the layer: sums over its calls)
TIMED = ('dense_ms', 'dense_gemm_ms', 'im2col_ms', 'sparse_gemm_ms', 'sparse_ms')


@torch.no_grad()
def bench_layer_cuda(module: nn.Module, shapes: Sequence[Tuple[int, ...]], dtype: torch.dtype,
                     backend: str, warmup: int, repeats: int, search: bool = True,
                     graphs: bool = True, timer: Optional[Callable[..., dict]] = None,
                     host_timer: Optional[Callable[[Callable[[], object]], float]] = None,
                     eager_timer: Optional[Callable[[Callable[[], object]], float]] = None
                     ) -> Tuple[Dict[str, object], Optional[GemmLayer]]:
    """Time one layer dense vs 2:4 sparse on every input shape it saw; check sparse vs dense.

    ``module`` must already be on the GPU in ``dtype`` (channels-last for convs). Every time is
    the GPU's alone (:func:`~.timing.device_time`: the calls captured in a CUDA graph, enqueued
    ahead of a busy GPU, each sample checked), summed over the layer's calls of per-call
    medians (ms):

    * ``dense_ms``: the layer (cuDNN / cuBLAS); ``dense_gemm_ms``: cuBLAS on the im2col matrix;
    * ``im2col_ms``: im2col and padding; ``sparse_gemm_ms``: the 2:4 kernel alone;
      ``sparse_ms``: the whole sparse layer (im2col, kernel, output reshape);
    * ``sparse_gemm_default_alg_ms``: the 2:4 kernel with cuSPARSELt's default algorithm,
      where the search (``search``: :func:`~.gemm.search_cusparselt_algorithms`, per GEMM
      shape) chose another; ``alg_ids``: ``{rows: algorithm}``.

    The sparse module runs the kernel as the ATen op (``GemmLayer.direct``); the host side is
    reported next to the GPU times, in us per forward of the layer: ``host_dense_us`` (the
    layer), ``host_dispatch_us`` (the 2:4 GEMM through ``F.linear`` on the
    ``SparseSemiStructuredTensor``: ``__torch_dispatch__`` and the custom op),
    ``host_kernel_us`` (the same kernel as the ATen op), with ``eager_dispatch_ms`` (the 2:4
    GEMM through ``F.linear`` timed back to back with CUDA events, the way a host-bound
    measurement sees it). ``timing_mode`` (``cuda_graph``, ``pre_enqueued`` or both, ``+``)
    and ``host_free`` (every sample of every timing enqueued before the GPU reached it) say how
    the GPU times were taken.

    ``timer(fn)`` / ``host_timer(fn)`` / ``eager_timer(fn)`` replace
    :func:`~.timing.device_time` / :func:`~.timing.host_time` / the median of
    :func:`~.timing.cuda_time` (the CPU tests). Returns the result and the sparse module
    (``None`` if the sparse kernel could not be built / run, with the reason in
    ``result['note']``).
    """
    if timer is None:
        def timer(fn):
            return device_time(fn, warmup, repeats, graph=graphs)
    if host_timer is None:
        host_timer = host_time
    if eager_timer is None:
        def eager_timer(fn):
            return cuda_time(fn, 3, 5)['median_ms']
    device = module.weight.device
    res: Dict[str, object] = {k: None for k in TIMED}
    res.update(dense_iqr_ms=None, sparse_iqr_ms=None, sparse_gemm_default_alg_ms=None,
               alg_ids=None, host_dense_us=None, host_dispatch_us=None, host_kernel_us=None,
               eager_dispatch_ms=None, timing_mode=None, host_free=None, note=None)
    try:
        sparse = GemmLayer.from_module(module, sparse=True, backend=backend)
        sparse.direct = True
    except Exception as exc:  # unsupported dtype/shape/GPU: report, keep going
        sparse = None
        res['note'] = f'sparse kernel unavailable: {type(exc).__name__}: {exc}'
    dense_gemm = GemmLayer.from_module(module)
    inputs = [_random_input(module, shape, dtype, device) for shape in shapes]
    if sparse is not None and search:
        try:
            found = search_cusparselt_algorithms(sparse, inputs)
            res['alg_ids'] = {str(rows): alg for rows, alg in found.items()} or None
        except Exception as exc:  # keep PyTorch's default algorithm
            res['note'] = f'cuSPARSELt algorithm search failed: {type(exc).__name__}: {exc}'
    acc, num, modes, host_free = None, None, [], True

    def timed(fn):
        nonlocal host_free
        t = timer(fn)
        if t.get('mode') and t['mode'] not in modes:
            modes.append(t['mode'])
        host_free = host_free and bool(t.get('host_free', False))
        return t

    for x in inputs:
        t = dict(dense_ms=timed(lambda: module(x)))
        flat = dict(host_dense_us=t['dense_ms']['host_ms'] * 1e3)
        cols_d, _ = dense_gemm.gemm_input(x)
        t['dense_gemm_ms'] = timed(lambda: dense_gemm.gemm(cols_d))
        if sparse is not None:
            try:
                cols, _ = sparse.gemm_input(x)
                t['im2col_ms'] = timed(lambda: sparse.gemm_input(x))
                t['sparse_gemm_ms'] = timed(lambda: sparse.kernel(cols))
                t['sparse_ms'] = timed(lambda: sparse(x))
                alg = sparse.alg_ids.pop(cols.shape[0], None)  # the default algorithm next
                try:
                    t['sparse_gemm_default_alg_ms'] = (
                        timed(lambda: sparse.kernel(cols)) if alg not in (None, 0)
                        else t['sparse_gemm_ms'])
                finally:
                    if alg is not None:
                        sparse.alg_ids[cols.shape[0]] = alg
                flat.update(host_dispatch_us=host_timer(lambda: sparse.gemm(cols)) * 1e3,
                            host_kernel_us=t['sparse_gemm_ms']['host_ms'] * 1e3,
                            eager_dispatch_ms=eager_timer(lambda: sparse.gemm(cols)))
                num = _merge(num, compare(sparse(x), module(x), dtype))
            except Exception as exc:
                sparse = None
                res['note'] = f'sparse kernel failed: {type(exc).__name__}: {exc}'
                for k in ('im2col_ms', 'sparse_gemm_ms', 'sparse_ms',
                          'sparse_gemm_default_alg_ms'):
                    t.pop(k, None)
                for k in ('host_dispatch_us', 'host_kernel_us', 'eager_dispatch_ms'):
                    flat.pop(k, None)
        flat.update({k: v['median_ms'] for k, v in t.items()})
        flat['dense_iqr_ms'] = t['dense_ms']['iqr_ms']
        if 'sparse_ms' in t:
            flat['sparse_iqr_ms'] = t['sparse_ms']['iqr_ms']
        acc = _merge(acc, flat)
        del x
    for k, v in (acc or {}).items():
        res[k] = v
    if sparse is None:
        for k in ('im2col_ms', 'sparse_gemm_ms', 'sparse_ms', 'sparse_iqr_ms',
                  'sparse_gemm_default_alg_ms', 'host_dispatch_us', 'host_kernel_us',
                  'eager_dispatch_ms', 'alg_ids'):
            res[k] = None
    res['timing_mode'] = '+'.join(modes) or None
    res['host_free'] = host_free if modes else None
    if num is not None:
        res.update(numerics=num)
    return res, sparse


def speedups(res: Dict[str, object]) -> Dict[str, Optional[float]]:
    def ratio(a, b):
        return res[a] / res[b] if res.get(a) and res.get(b) else None
    return dict(speedup=ratio('dense_ms', 'sparse_ms'),
                gemm_speedup=ratio('dense_gemm_ms', 'sparse_gemm_ms'))


def dispatch_decisions(layers: Sequence[Dict[str, object]], min_speedup: float = 1.0
                       ) -> Dict[str, str]:
    """``'sparse'`` where the whole sparse layer (im2col included) measured faster, else dense."""
    return {row['name']: ('sparse' if row.get('speedup') and row['speedup'] > min_speedup
                          else 'dense') for row in layers}


#: scopes whose forward runs without host synchronization, so CUDA graphs can capture them
#: (``model.predict`` syncs: NMS, score thresholds and ``.item()`` decide shapes on the host)
GRAPH_SCOPES = ('backbone', 'backbone+neck')


@torch.no_grad()
def bench_end_to_end(model: nn.Module, runners: Dict[str, Callable[[], object]],
                     sparse_modules: Dict[str, nn.Module], decisions: Dict[str, str],
                     warmup: int, repeats: int, graph_scopes: Sequence[str] = GRAPH_SCOPES,
                     timer: Optional[Callable[..., dict]] = None
                     ) -> Dict[str, Dict[str, object]]:
    """Dense vs per-layer dispatch vs all-sparse for each scope runner (CUDA).

    GPU times by :func:`~.timing.device_time`: the forward captured in a CUDA graph for the
    ``graph_scopes``, issued eagerly ahead of a busy GPU otherwise (the detector: it
    synchronizes, so its times include host work, and ``timing`` says so). Per row: ``<variant>
    _ms`` / ``_iqr_ms`` and ``timing[<variant>]`` (``mode``, ``host_free``, ``host_ms``: host ms
    to issue one forward, ``eager_ms``: one forward timed back to back, ``note``).
    ``timer(fn, graph)`` replaces device_time (the CPU tests).
    """
    if timer is None:
        def timer(fn, graph):
            return device_time(fn, warmup, repeats, min_repeat_ms=0.0, graph=graph)
    chosen = {k: v for k, v in sparse_modules.items() if decisions.get(k) == 'sparse'}
    variants = dict(dense={}, dispatch=chosen, all_sparse=dict(sparse_modules))
    out = {}
    for scope, run in runners.items():
        row: Dict[str, object] = dict(num_sparse_dispatch=len(chosen),
                                      num_sparse_all=len(sparse_modules), timing={})
        for variant, repl in variants.items():
            try:
                with swapped(model, repl):
                    t = timer(run, scope in graph_scopes)
                row[f'{variant}_ms'], row[f'{variant}_iqr_ms'] = t['median_ms'], t['iqr_ms']
                row['timing'][variant] = {k: t.get(k) for k in (
                    'mode', 'host_free', 'host_ms', 'eager_ms', 'inner', 'note')}
            except Exception as exc:
                row[f'{variant}_ms'] = row[f'{variant}_iqr_ms'] = None
                row.setdefault('note', f'{variant}: {type(exc).__name__}: {exc}')
        for variant in ('dispatch', 'all_sparse'):
            d, s = row.get('dense_ms'), row.get(f'{variant}_ms')
            row[f'{variant}_speedup'] = d / s if d and s else None
        out[scope] = row
    return out


def _flatten(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    return []


@torch.no_grad()
def compare_outputs(model: nn.Module, run: Callable[[], object],
                    replacements: Dict[str, nn.Module], dtype: torch.dtype) -> Dict[str, object]:
    """Output of ``run()`` with ``replacements`` swapped in vs without (feature tensors)."""
    ref = _flatten(run())
    with swapped(model, replacements):
        new = _flatten(run())
    result = None
    for a, b in zip(new, ref):
        result = _merge(result, compare(a, b, dtype))
    return result or dict(max_abs_err=None, max_abs_ref=None, rel_err=None, ok=None)
