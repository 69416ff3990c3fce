"""Real 2:4 sparse kernels: only on a CUDA GPU with compute capability >= 8.0 (else skipped).

Marked ``cuda``, so ``pytest -m cuda`` (and the one-call GPU check) selects them.
"""
import pytest
import torch
from torch import nn

from spre_mmdet.benchmark import GemmLayer, bench_layer_cuda, cuda_time, sparse_support
from spre_mmdet.sparsity.nm import nm_mask

pytestmark = pytest.mark.cuda

HAS_SM80 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
needs_sm80 = pytest.mark.skipif(not HAS_SM80, reason='needs a CUDA GPU with compute capability '
                                                     '>= 8.0 (2:4 sparse tensor cores)')
#: PyTorch builds its CUTLASS 2:4 kernels for compute capability 8.x only; elsewhere the
#: matmul refuses with "Supported only on GPUs with compute capability 8.x"
CUTLASS_SM8X_ONLY = 'compute capability 8'


def _sparse_conv(c_in, c_out, k, stride=1, bias=False, dtype=torch.float16):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=bias)
    with torch.no_grad():
        conv.weight.mul_(nm_mask(conv.weight, 2, 4))
    return conv.cuda().to(dtype).to(memory_format=torch.channels_last)


@needs_sm80
def test_sparse_support_on_this_gpu():
    """An sm80+ GPU is accepted for the sparse path."""
    assert sparse_support('cuda') == (True, None)


@needs_sm80
@pytest.mark.parametrize('backend', ['auto', 'cutlass'])
@pytest.mark.parametrize('c_in,c_out,k,stride,bias', [
    (64, 64, 3, 1, False), (256, 64, 1, 1, False), (64, 256, 1, 2, False), (128, 128, 3, 2, True),
    (60, 40, 3, 1, True)])  # (60, 40): O and K padded up to the kernel's minimum
def test_sparse_conv_matches_dense_fp16(backend, c_in, c_out, k, stride, bias):
    """2:4 semi-structured im2col GEMM == cuDNN conv in fp16 within the stated tolerance; off
    sm8x the CUTLASS backend either does the same or refuses with PyTorch's sm8x-only error
    (never a wrong result, never a skip)."""
    conv = _sparse_conv(c_in, c_out, k, stride, bias)
    x = torch.randn(2, c_in, 19, 23, device='cuda', dtype=torch.float16).contiguous(
        memory_format=torch.channels_last)
    try:
        sparse = GemmLayer.from_module(conv, sparse=True, backend=backend)
        with torch.no_grad():
            y = sparse(x)
    except RuntimeError as exc:
        if backend == 'cutlass' and torch.cuda.get_device_capability()[0] != 8:
            assert CUTLASS_SM8X_ONLY in str(exc), exc
            return
        raise
    assert sparse.sparse
    with torch.no_grad():
        ref = conv(x)
    assert y.shape == ref.shape
    scale = ref.abs().max().item()
    torch.testing.assert_close(y, ref, rtol=1e-2, atol=1e-2 * scale)


@needs_sm80
def test_sparse_linear_matches_dense_bf16():
    """2:4 semi-structured Linear == dense Linear in bf16 within the stated tolerance."""
    torch.manual_seed(0)
    lin = nn.Linear(1024, 1024)
    with torch.no_grad():
        lin.weight.mul_(nm_mask(lin.weight, 2, 4))
    lin = lin.cuda().bfloat16()
    sparse = GemmLayer.from_module(lin, sparse=True)
    x = torch.randn(1000, 1024, device='cuda', dtype=torch.bfloat16)
    with torch.no_grad():
        y, ref = sparse(x), lin(x)
    torch.testing.assert_close(y, ref, rtol=4e-2, atol=4e-2 * ref.abs().max().item())


@needs_sm80
def test_bench_layer_cuda_times_and_checks():
    """bench_layer_cuda returns positive dense/sparse/im2col timings and passing numerics."""
    torch.backends.cudnn.benchmark = True
    conv = _sparse_conv(256, 256, 3)
    res, sparse = bench_layer_cuda(conv, [(1, 256, 50, 84)], torch.float16, 'auto', 3, 5)
    assert sparse is not None, res['note']
    for key in ('dense_ms', 'sparse_ms', 'im2col_ms', 'sparse_gemm_ms', 'dense_gemm_ms'):
        assert res[key] > 0
    assert res['numerics']['ok']
    t = cuda_time(lambda: conv(torch.zeros(1, 256, 8, 8, device='cuda', dtype=torch.float16)),
                  2, 3)
    assert t['median_ms'] > 0 and t['repeats'] == 3


@needs_sm80
def test_device_time_captures_the_sparse_gemm_host_free():
    """A small 2:4 GEMM (host-bound when issued through F.linear): captured in a CUDA graph,
    every sample enqueued before the GPU reached it; the ATen op costs the host less than the
    dispatch path; the searched algorithm gives the dense result."""
    from spre_mmdet.benchmark import device_time, host_time, search_cusparselt_algorithms
    conv = _sparse_conv(256, 256, 1)
    sparse = GemmLayer.from_module(conv, sparse=True, backend='auto')
    x = torch.randn(1, 256, 8, 8, device='cuda', dtype=torch.float16).contiguous(
        memory_format=torch.channels_last)
    found = search_cusparselt_algorithms(sparse, [x])
    if sparse.backend == 'cusparselt':
        assert list(found) == [64] and found[64] >= 0
    cols, lead = sparse.gemm_input(x)
    with torch.no_grad():
        ref = conv(x)
        y = sparse.finish(sparse.kernel(cols), lead)
        torch.testing.assert_close(y, ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())
        t = device_time(lambda: sparse.kernel(cols), warmup=3, repeats=10)
        assert t['mode'] == 'cuda_graph', t['note']
        assert t['host_free'] and t['median_ms'] > 0 and t['inner'] > 1
        assert host_time(lambda: sparse.gemm(cols)) > host_time(lambda: sparse.kernel(cols))


@needs_sm80
def test_device_time_flags_a_synchronizing_workload():
    """A workload that waits for the GPU (.item()) cannot be made host-free: flagged."""
    from spre_mmdet.benchmark import device_time
    x = torch.randn(256, 256, device='cuda')
    t = device_time(lambda: (x @ x).sum().item(), warmup=2, repeats=5, graph=False,
                    max_guard_ms=5.0)
    assert t['mode'] == 'pre_enqueued' and not t['host_free']
    assert 'include host work' in t['note']
