"""The 2:4 GEMM called as the ATen op (GemmLayer.kernel) vs through PyTorch's dispatch
(GemmLayer.gemm), the cuSPARSELt algorithm search and the per-layer / end-to-end benchmark,
on CPU: PyTorch's semi-structured tensor classes are real, the CUDA kernels they end in
(``torch._cslt_sparse_mm``, ``torch._sparse_semi_structured_(add)mm``, the search) are stand-ins
computing the dense product of the weight they are given, and the timers are stand-ins. So
everything but the CUDA calls runs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

from spre_mmdet.benchmark import gemm as gemm_mod
from spre_mmdet.benchmark import runner
from spre_mmdet.benchmark.gemm import GemmLayer, search_cusparselt_algorithms
from spre_mmdet.sparsity.nm import nm_mask

DTYPE = torch.bfloat16


class FakeKernels:
    """Stand-ins of the CUDA ops: the 'packed' weight is the padded dense weight itself."""

    def __init__(self, monkeypatch, search=lambda rows: 7 if rows > 64 else 0):
        self.calls, self.search_calls, self._search = [], [], search
        monkeypatch.setattr(torch, '_cslt_sparse_mm', self.cslt_mm)
        monkeypatch.setattr(torch, '_cslt_sparse_mm_search', self.cslt_search)
        monkeypatch.setattr(torch, '_sparse_semi_structured_mm', self.cutlass_mm)
        monkeypatch.setattr(torch, '_sparse_semi_structured_addmm', self.cutlass_addmm)

    def cslt_mm(self, packed, dense, bias=None, alpha=None, out_dtype=None,
                transpose_result=False, alg_id=0, split_k=1, split_k_mode=-1):
        self.calls.append(('cslt', packed, dense, bias, transpose_result, alg_id))
        out = packed @ dense
        if bias is not None:
            out = out + bias[:, None]
        return out.t().contiguous() if transpose_result else out

    def cslt_search(self, packed, dense, bias=None, alpha=None, out_dtype=None,
                    transpose_result=False):
        self.search_calls.append((dense.shape, transpose_result))
        return self._search(dense.shape[1])

    def cutlass_mm(self, packed, meta, dense, out_dtype=None):
        self.calls.append(('cutlass_mm', packed, meta, dense))
        return packed @ dense

    def cutlass_addmm(self, bias, packed, meta, dense, alpha=1, beta=1, out_dtype=None):
        self.calls.append(('cutlass_addmm', bias, packed, meta, dense))
        return packed @ dense + bias[:, None]


def fake_sparse(w2d: torch.Tensor, backend: str):
    """A real SparseSemiStructuredTensor of ``backend`` on CPU holding ``w2d`` as 'packed'."""
    if backend == 'cusparselt':
        return SparseSemiStructuredTensorCUSPARSELT(
            w2d.shape, packed=w2d, meta=None, packed_t=None, meta_t=None,
            compressed_swizzled_bitmask=None, fuse_transpose_cusparselt=False,
            alg_id_cusparselt=0, requires_grad=False)
    meta = torch.zeros(w2d.shape[0], w2d.shape[1] // 16, dtype=torch.int16)
    return SparseSemiStructuredTensorCUTLASS(
        w2d.shape, packed=w2d, meta=meta, packed_t=w2d.t(), meta_t=meta,
        compressed_swizzled_bitmask=None, requires_grad=False)


@pytest.fixture
def cpu_sparse(monkeypatch):
    """GemmLayer.from_module(sparse=True) works on CPU with the stand-in kernels."""
    kernels = FakeKernels(monkeypatch)

    def to_sparse(w2d):
        backend = ('cutlass' if torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS
                   else 'cusparselt')
        return fake_sparse(w2d, backend)
    monkeypatch.setattr(torch.sparse, 'to_sparse_semi_structured', to_sparse)
    return kernels


def _sparse_conv(c_in, c_out, k, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)
    with torch.no_grad():
        conv.weight.mul_(nm_mask(conv.weight, 2, 4))
    return conv.to(DTYPE).to(memory_format=torch.channels_last).eval()


@pytest.mark.parametrize('backend', ['cusparselt', 'cutlass'])
@pytest.mark.parametrize('bias', [False, True])
def test_kernel_makes_the_call_the_dispatch_path_makes(cpu_sparse, backend, bias):
    """GemmLayer.kernel calls exactly the op (same operands, same flags) that F.linear on the
    SparseSemiStructuredTensor reaches through __torch_dispatch__ and the custom op; the layer's
    output is the conv's either way."""
    conv = _sparse_conv(64, 32, 3, bias)
    layer = GemmLayer.from_module(conv, sparse=True, backend=backend)
    assert layer.sparse and layer.backend == backend
    x = torch.randn(1, 64, 6, 5, dtype=DTYPE).contiguous(memory_format=torch.channels_last)
    cols, _ = layer.gemm_input(x)
    layer.gemm(cols)
    via_dispatch = cpu_sparse.calls.pop()
    layer.kernel(cols)
    direct = cpu_sparse.calls.pop()
    assert via_dispatch[0] == direct[0] == (
        'cslt' if backend == 'cusparselt' else 'cutlass_addmm' if bias else 'cutlass_mm')
    assert len(via_dispatch) == len(direct)
    for a, b in zip(via_dispatch[1:], direct[1:]):
        if isinstance(a, torch.Tensor):
            assert b is not None and a.shape == b.shape and a.stride() == b.stride()
            assert a.data_ptr() == b.data_ptr()
        else:
            assert a == b
    ref = conv(x)
    for direct_path in (False, True):
        layer.direct = direct_path
        torch.testing.assert_close(layer(x), ref, rtol=4e-2, atol=4e-2 * ref.abs().max().item())


def test_search_per_gemm_shape(cpu_sparse):
    """One search per distinct GEMM row count (transpose fused, as the kernel runs), stored by
    rows and used by the kernel call of that shape; other shapes keep the default."""
    conv = _sparse_conv(32, 32, 1, False)
    layer = GemmLayer.from_module(conv, sparse=True, backend='cusparselt')
    xs = [torch.randn(1, 32, h, 10, dtype=DTYPE).contiguous(memory_format=torch.channels_last)
          for h in (10, 10, 4)]  # 100 rows (padded to 104: a multiple of 8) twice, and 40
    found = search_cusparselt_algorithms(layer, xs)
    assert found == {104: 7, 40: 0} and layer.alg_ids == found
    assert len(cpu_sparse.search_calls) == 2
    assert all(transpose for _, transpose in cpu_sparse.search_calls)
    for x in xs:
        cols, _ = layer.gemm_input(x)
        layer.kernel(cols)
        assert cpu_sparse.calls.pop()[-1] == found[cols.shape[0]]
    assert layer.alg_id(12345) == 0
    dense = GemmLayer.from_module(conv)
    assert search_cusparselt_algorithms(dense, xs) == {}
    cutlass = GemmLayer.from_module(conv, sparse=True, backend='cutlass')
    assert search_cusparselt_algorithms(cutlass, xs) == {}


def _fake_timer(log):
    def timer(fn, *args):
        fn()
        log.append(fn)
        return dict(median_ms=1.0, iqr_ms=0.1, mode='cuda_graph', host_free=True,
                    host_ms=0.002, eager_ms=0.07, inner=10, note=None)
    return timer


def test_bench_layer_structure(cpu_sparse):
    """bench_layer_cuda with stand-in timers: every timing of both calls of a shared layer is
    summed, the algorithm search ran per shape and the default algorithm was timed where it
    differs, the host columns are filled, numerics pass."""
    conv = _sparse_conv(64, 64, 3, True)
    log = []
    res, sparse = runner.bench_layer_cuda(
        conv, [(1, 64, 12, 10), (1, 64, 5, 4)], DTYPE, 'cusparselt', 1, 2,
        timer=_fake_timer(log), host_timer=lambda fn: (fn(), 0.069)[1],
        eager_timer=lambda fn: (fn(), 0.08)[1])
    assert sparse is not None and sparse.direct
    assert res['note'] is None
    assert res['alg_ids'] == {'120': 7, '24': 0}
    # per shape: dense, dense GEMM, im2col, sparse GEMM, sparse layer (+ default alg if != 0)
    assert len(log) == 5 + 6
    for key in runner.TIMED:
        assert res[key] == pytest.approx(2.0)
    assert res['sparse_gemm_default_alg_ms'] == pytest.approx(2.0)
    assert res['host_dispatch_us'] == pytest.approx(138.0)
    assert res['host_kernel_us'] == pytest.approx(4.0)
    assert res['host_dense_us'] == pytest.approx(4.0)
    assert res['eager_dispatch_ms'] == pytest.approx(0.16)
    assert res['timing_mode'] == 'cuda_graph' and res['host_free'] is True
    assert res['numerics']['ok']
    algs = [c[-1] for c in cpu_sparse.calls if c[0] == 'cslt']
    assert 7 in algs and 0 in algs
    assert sparse.alg_ids == {120: 7, 24: 0}  # restored after timing the default


def test_bench_layer_without_sparse_kernel(monkeypatch):
    """No sparse kernel (e.g. no GPU): dense timings only, the reason in note."""
    def refuse(w2d):
        raise RuntimeError('needs CUDA')
    monkeypatch.setattr(torch.sparse, 'to_sparse_semi_structured', refuse)
    conv = _sparse_conv(64, 64, 1, False)
    log = []
    res, sparse = runner.bench_layer_cuda(conv, [(1, 64, 4, 4)], DTYPE, 'cusparselt', 1, 2,
                                          timer=_fake_timer(log))
    assert sparse is None and 'needs CUDA' in res['note']
    assert res['dense_ms'] == 1.0 and res['sparse_ms'] is None and res['alg_ids'] is None
    assert res['host_dispatch_us'] is None and len(log) == 2


def test_end_to_end_graphs_only_where_capturable(cpu_sparse):
    """bench_end_to_end asks for CUDA graphs for backbone / backbone+neck, not for the detector
    (it synchronizes), and records how each variant was timed."""
    model = nn.Sequential(_sparse_conv(64, 64, 1, False))
    sparse = GemmLayer.from_module(model[0], sparse=True, backend='cusparselt')
    sparse.direct = True
    x = torch.randn(1, 64, 4, 4, dtype=DTYPE).contiguous(memory_format=torch.channels_last)
    asked = []

    def timer(fn, graph):
        fn()
        asked.append(graph)
        return dict(median_ms=2.0 if graph else 3.0, iqr_ms=0.0,
                    mode='cuda_graph' if graph else 'pre_enqueued', host_free=graph,
                    host_ms=0.5, eager_ms=2.5, inner=1, note=None if graph else 'syncs')
    runners = {'backbone': lambda: model(x), 'detector': lambda: model(x)}
    out = runner.bench_end_to_end(model, runners, {'0': sparse}, {'0': 'sparse'}, 1, 2,
                                  timer=timer)
    assert asked == [True] * 3 + [False] * 3
    assert out['backbone']['timing']['all_sparse']['mode'] == 'cuda_graph'
    assert out['detector']['timing']['dense'] == dict(
        mode='pre_enqueued', host_free=False, host_ms=0.5, eager_ms=2.5, inner=1, note='syncs')
    assert out['backbone']['dispatch_speedup'] == pytest.approx(1.0)
    assert isinstance(model[0], nn.Conv2d)  # restored


def test_from_module_records_the_backend(cpu_sparse):
    conv = _sparse_conv(64, 32, 1, False)
    assert GemmLayer.from_module(conv).backend is None
    assert GemmLayer.from_module(conv, sparse=True, backend='cutlass').backend == 'cutlass'
    layer = GemmLayer.from_module(conv, sparse=True, backend='cusparselt')
    assert isinstance(layer.weight2d, SparseSemiStructuredTensorCUSPARSELT)
    assert 'SparseSemiStructuredTensorCUSPARSELT' in repr(layer)
    assert gemm_mod.resolve_backend('cusparselt') == 'cusparselt'
    x = torch.randn(3, 64, dtype=DTYPE)
    torch.testing.assert_close(GemmLayer.from_module(nn.Linear(64, 8).to(DTYPE)).kernel(x).shape,
                               F.linear(x, torch.zeros(8, 64, dtype=DTYPE)).shape)
