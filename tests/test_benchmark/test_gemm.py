import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from spre_mmdet.benchmark.gemm import (GemmLayer, conv_weight_to_gemm, gemm_dims, im2col_nhwc,
                                       resolve_backend, shape_constraints)
from spre_mmdet.sparsity.nm import check_nm_tensor, nm_mask


@pytest.mark.parametrize('k,stride,padding,dilation', [
    (1, 1, 0, 1), (1, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (3, 2, 0, 1),
    (5, 1, 2, 1), ((3, 1), (2, 1), (1, 0), (1, 1)), (7, 2, 3, 1)])
def test_im2col_gemm_equals_conv2d(k, stride, padding, dilation):
    """im2col (K ordered (i, j, c)) @ reshaped weight == F.conv2d for stride/padding/dilation."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, k, stride, padding, dilation, bias=True)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 8, 13, 11).contiguous(memory_format=fmt)
        cols, (n, ho, wo) = im2col_nhwc(x, k, stride, padding, dilation)
        y = (cols @ conv_weight_to_gemm(conv.weight).t() + conv.bias).view(n, ho, wo, 12)
        ref = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation)
        torch.testing.assert_close(y.permute(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-5)
        assert gemm_dims(conv, x.shape) == tuple(cols.shape[:1]) + (12, cols.shape[1])


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 2), d=st.integers(1, 2),
       c=st.sampled_from([4, 8, 12]), h=st.integers(7, 12))
def test_im2col_gemm_equals_conv2d_random(k, s, p, d, c, h):
    """GemmLayer (channels-last im2col GEMM) == nn.Conv2d on random conv hyper-parameters."""
    torch.manual_seed(1)
    conv = nn.Conv2d(c, 8, k, s, p, d)
    x = torch.randn(1, c, h, h + 1).contiguous(memory_format=torch.channels_last)
    y = GemmLayer.from_module(conv)(x)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_1x1_stride1_channels_last_is_a_view():
    """A 1x1/stride-1 conv on a channels-last activation needs no im2col copy."""
    x = torch.randn(2, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    cols, _ = im2col_nhwc(x, 1)
    assert cols.data_ptr() == x.data_ptr() and cols.shape == (70, 16)


@pytest.mark.parametrize('k', [1, 3, 5])
def test_nm_pattern_preserved_along_gemm_k(k):
    """A 2:4 conv weight stays 2:4 along the GEMM's K dimension after the (i, j, c) reshape."""
    torch.manual_seed(2)
    w = torch.randn(16, 32, k, k)
    w = w * nm_mask(w, 2, 4)
    assert check_nm_tensor(w, 2, 4).ok
    w2d = conv_weight_to_gemm(w)
    assert w2d.shape == (16, k * k * 32)
    assert check_nm_tensor(w2d, 2, 4).ok
    # each row of W2d, cut into groups of 4, has exactly 2 non-zeros (what the kernel compresses)
    assert torch.all((w2d.view(16, -1, 4) != 0).sum(-1) == 2)


def test_unfold_order_breaks_pattern():
    """F.unfold's (c, i, j) K order is not 2:4 for a hardware-2:4 3x3 weight (why it is unused)."""
    torch.manual_seed(3)
    w = torch.randn(16, 32, 3, 3)
    w = w * nm_mask(w, 2, 4)
    assert not check_nm_tensor(w.reshape(16, -1), 2, 4).ok


def test_linear_gemm_and_masked_reference():
    """GemmLayer of a Linear (with an N:M mask) equals F.linear with the masked weight."""
    torch.manual_seed(4)
    lin = nn.Linear(32, 24)
    mask = nm_mask(lin.weight, 2, 4)
    x = torch.randn(3, 5, 32)
    y = GemmLayer.from_module(lin, mask=mask)(x)
    torch.testing.assert_close(y, F.linear(x, lin.weight * mask, lin.bias))


def test_backend_constraints_known():
    """Backend names resolve and the sparse shape minimums are read from PyTorch."""
    assert resolve_backend('cutlass') == 'cutlass'
    assert resolve_backend('auto') in ('cusparselt', 'cutlass')
    assert shape_constraints('cutlass', torch.float16)[:2] == (32, 64)
    with pytest.raises(ValueError):
        resolve_backend('nope')
    with pytest.raises(ValueError):
        shape_constraints('cusparselt', torch.float32)
