"""Conv/Linear layers as GEMMs, dense or 2:4 semi-structured sparse.

A ``k x k`` conv becomes ``cols @ W2d^T`` with

* ``cols`` the channels-last im2col of the input, shape ``(N*Ho*Wo, kh*kw*C)``, its K
  dimension ordered ``(i, j, c)`` (kernel row, kernel column, input channel);
* ``W2d = W.permute(0, 2, 3, 1).reshape(O, kh*kw*C)``, the same ``(i, j, c)`` order.

With that order the hardware 2:4 groups (M consecutive input channels at a fixed ``(o, i, j)``,
docs/methods/srste_asp.md, N:M layout) are M consecutive entries of a row of ``W2d``
(``C % M == 0``), which is exactly the layout ``torch.sparse.to_sparse_semi_structured``
compresses. ``F.unfold`` orders K as ``(c, i, j)`` and would break the groups, so it is not used.
A 1x1 conv with stride 1 and no padding needs no copy at all: a channels-last activation *is* the
``(N*H*W, C)`` matrix.

Semi-structured constraints (PyTorch's ``_DTYPE_SHAPE_CONSTRAINTS``): the sparse operand must
be 2-D, contiguous, fp16/bf16 (or int8/fp32 for CUTLASS), on CUDA, with rows/cols multiples
of (32, 64) for CUTLASS fp16/bf16 and (16, 16) for cuSPARSELt; the dense operand's rows must be
a multiple of 8. We keep the sparse weight as the *first* operand of the kernel (``F.linear``
with a sparse weight dispatches to ``W_sparse @ cols^T`` and transposes the result) and pad:
``O`` and ``K`` of the weight with zeros up to the sparse minimum (zero groups are 2:4), ``K``
of ``cols`` to match, and the rows of ``cols`` to the dense minimum. The padded output rows /
columns are sliced off. Padding is part of the timed forward.
"""
import contextlib
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ('auto', 'cusparselt', 'cutlass')


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return tuple(int(x) for x in v)


def conv_out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def im2col_nhwc(x: torch.Tensor, kernel_size, stride=1, padding=0,
                dilation=1) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """Channels-last im2col: ``(N, C, H, W)`` -> ``cols (N*Ho*Wo, kh*kw*C)``, K ordered ``(i, j, c)``.

    Returns ``cols`` and ``(N, Ho, Wo)``. For a channels-last input and a 1x1/stride-1/no-pad
    kernel ``cols`` is a view (no copy).
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n, c, h, w = x.shape
    ho, wo = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    x = x.permute(0, 2, 3, 1)  # NHWC view; contiguous for a channels-last tensor
    if kh == kw == 1 and ph == pw == 0:
        if sh != 1 or sw != 1:
            x = x[:, ::sh, ::sw, :]
        return x.reshape(n * ho * wo, c), (n, ho, wo)
    if ph or pw:
        x = F.pad(x, (0, 0, pw, pw, ph, ph))  # contiguous NHWC result
    else:
        x = x.contiguous()
    hp, wp = x.shape[1], x.shape[2]
    windows = x.as_strided((n, ho, wo, kh, kw, c),
                           (hp * wp * c, sh * wp * c, sw * c, dh * wp * c, dw * c, 1))
    return windows.reshape(n * ho * wo, kh * kw * c), (n, ho, wo)


def conv_weight_to_gemm(weight: torch.Tensor) -> torch.Tensor:
    """``(O, C, kh, kw)`` -> ``(O, kh*kw*C)`` with K ordered ``(i, j, c)`` (matches im2col_nhwc)."""
    o = weight.shape[0]
    return weight.permute(0, 2, 3, 1).reshape(o, -1).contiguous()


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``cusparselt`` when PyTorch has cuSPARSELt, else ``cutlass``."""
    if backend not in BACKENDS:
        raise ValueError(f'Unknown backend {backend!r}; choose one of {BACKENDS}.')
    if backend == 'auto':
        cslt = getattr(torch.backends, 'cusparselt', None)
        return 'cusparselt' if cslt is not None and cslt.is_available() else 'cutlass'
    return backend


@contextlib.contextmanager
def forced_backend(backend: str):
    """Set ``SparseSemiStructuredTensor._FORCE_CUTLASS`` for ``backend`` while converting."""
    from torch.sparse import SparseSemiStructuredTensor
    old = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = resolve_backend(backend) == 'cutlass'
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = old


def shape_constraints(backend: str, dtype: torch.dtype) -> Tuple[int, int, int]:
    """``(sparse_min_rows, sparse_min_cols, dense_min_rows)`` of a backend for ``dtype``."""
    from torch.sparse import (SparseSemiStructuredTensorCUSPARSELT,
                              SparseSemiStructuredTensorCUTLASS)
    cls = (SparseSemiStructuredTensorCUTLASS if resolve_backend(backend) == 'cutlass' else
           SparseSemiStructuredTensorCUSPARSELT)
    if dtype not in cls._DTYPE_SHAPE_CONSTRAINTS:
        raise ValueError(f'{cls.BACKEND} semi-structured sparsity does not support {dtype}; '
                         'use --dtype fp16 or bf16.')
    c = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
    return c.sparse_min_rows, c.sparse_min_cols, c.dense_min_rows


def _round_up(v: int, mult: int) -> int:
    return -(-v // mult) * mult


class GemmLayer(nn.Module):
    """A conv (via channels-last im2col) or linear layer computed as one GEMM.

    ``weight2d`` is either a dense ``(O_pad, K_pad)`` matrix (the reference / CPU path) or a
    ``SparseSemiStructuredTensor`` (2:4 sparse tensor cores). Build with :meth:`from_module`.
    """

    def __init__(self, weight2d: torch.Tensor, bias: Optional[torch.Tensor], out_features: int,
                 in_features: int, conv: Optional[dict] = None, dense_row_mult: int = 1,
                 backend: Optional[str] = None):
        super().__init__()
        self.weight2d = weight2d  # plain attribute: may be a tensor subclass
        self.bias2d = bias
        self.out_features = out_features
        self.in_features = in_features
        self.conv = conv  # kernel_size/stride/padding/dilation, or None for a linear layer
        self.dense_row_mult = dense_row_mult
        self.k_pad = weight2d.shape[1] - in_features
        self.sparse = isinstance(weight2d, torch.sparse.SparseSemiStructuredTensor)
        #: the sparse kernel library ('cusparselt' / 'cutlass'), None for a dense weight
        self.backend = backend if backend is not None else (
            getattr(type(weight2d), 'BACKEND', None) if self.sparse else None)
        #: forward through :meth:`kernel` (the ATen op itself) instead of :meth:`gemm`
        self.direct = False
        #: cuSPARSELt algorithm per GEMM row count (:func:`search_cusparselt_algorithms`);
        #: rows not listed use the weight's own (PyTorch's default, 0)
        self.alg_ids: Dict[int, int] = {}

    @classmethod
    def from_module(cls, module: nn.Module, sparse: bool = False, backend: str = 'auto',
                    mask: Optional[torch.Tensor] = None) -> 'GemmLayer':
        """Convert an ``nn.Conv2d`` (groups=1, zero padding) or ``nn.Linear``.

        Args:
            sparse: compress the weight with ``to_sparse_semi_structured`` (CUDA, fp16/bf16);
                the weight must already be 2:4 (check it first, compression is lossy otherwise).
            mask: optional boolean mask multiplied into the weight first (reference path).
        """
        weight = module.weight.detach()
        if mask is not None:
            weight = weight * mask
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != 'zeros' or isinstance(
                    module.padding, str):
                raise ValueError('only groups=1, zero-padded convs with explicit padding')
            w2d = conv_weight_to_gemm(weight)
            conv = dict(kernel_size=_pair(module.kernel_size), stride=_pair(module.stride),
                        padding=_pair(module.padding), dilation=_pair(module.dilation))
        elif isinstance(module, nn.Linear):
            w2d, conv = weight.contiguous(), None
        else:
            raise TypeError(f'cannot convert {type(module).__name__} to a GEMM')
        out_features, in_features = w2d.shape
        bias = None if module.bias is None else module.bias.detach()
        row_mult = 1
        if sparse:
            from torch.sparse import to_sparse_semi_structured
            rmin, cmin, row_mult = shape_constraints(backend, w2d.dtype)
            o_pad, k_pad = _round_up(out_features, rmin), _round_up(in_features, cmin)
            w2d = F.pad(w2d, (0, k_pad - in_features, 0, o_pad - out_features)).contiguous()
            if bias is not None:
                bias = F.pad(bias, (0, o_pad - out_features))
            with forced_backend(backend):
                w2d = to_sparse_semi_structured(w2d)
        return cls(w2d, bias, out_features, in_features, conv, row_mult,
                   resolve_backend(backend) if sparse else None)

    def gemm_input(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        """The GEMM's dense operand (padded) and the output's leading shape."""
        if self.conv is not None:
            cols, lead = im2col_nhwc(x, **self.conv)
        else:
            lead = tuple(x.shape[:-1])
            cols = x.reshape(-1, x.shape[-1])
        rows = cols.shape[0]
        row_pad = (-rows) % self.dense_row_mult
        if self.k_pad or row_pad:
            cols = F.pad(cols, (0, self.k_pad, 0, row_pad))
        return cols, lead

    def gemm(self, cols: torch.Tensor) -> torch.Tensor:
        """The GEMM as PyTorch dispatches it: ``F.linear`` (for a sparse weight through
        ``SparseSemiStructuredTensor.__torch_dispatch__`` and its custom op)."""
        return F.linear(cols, self.weight2d, self.bias2d)

    def alg_id(self, rows: int) -> int:
        """The cuSPARSELt algorithm used for a GEMM input of ``rows`` rows."""
        return self.alg_ids.get(rows, getattr(self.weight2d, 'alg_id_cusparselt', 0))

    def kernel(self, cols: torch.Tensor) -> torch.Tensor:
        """The same GEMM as :meth:`gemm` (same kernel, same result), called as the ATen op
        itself: no ``__torch_dispatch__``, no custom op, so the host issues it about as fast as
        a dense ``F.linear``. ``cols`` must come from :meth:`gemm_input` (padded rows and K),
        which also means the custom op would not pad again."""
        if not self.sparse:
            return F.linear(cols, self.weight2d, self.bias2d)
        w = self.weight2d
        if self.backend == 'cusparselt':
            # what semi_structured::cusparselt_mm calls for F.linear (transpose fused)
            return torch._cslt_sparse_mm(w.packed, cols.t(), bias=self.bias2d,
                                         transpose_result=True, alg_id=self.alg_id(cols.shape[0]))
        # what semi_structured::cutlass_mm calls for F.linear
        if self.bias2d is None:
            return torch._sparse_semi_structured_mm(w.packed, w.meta, cols.t()).t()
        return torch._sparse_semi_structured_addmm(self.bias2d, w.packed, w.meta, cols.t()).t()

    def finish(self, y: torch.Tensor, lead: Tuple[int, ...]) -> torch.Tensor:
        rows = 1
        for v in lead:
            rows *= v
        if y.shape[0] != rows or y.shape[1] != self.out_features:
            y = y[:rows, :self.out_features]
        if self.conv is None:
            return y.reshape(*lead, self.out_features)
        n, ho, wo = lead
        y = y.reshape(n, ho, wo, self.out_features).permute(0, 3, 1, 2)
        return y.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols, lead = self.gemm_input(x)
        return self.finish(self.kernel(cols) if self.direct else self.gemm(cols), lead)

    def extra_repr(self) -> str:
        kind = 'conv' if self.conv is not None else 'linear'
        return (f'{kind}, out={self.out_features}, K={self.in_features}, '
                f'{"2:4 sparse " + type(self.weight2d).__name__ if self.sparse else "dense"}')


def gemm_dims(module: nn.Module, in_shape: Sequence[int]) -> Tuple[int, int, int]:
    """``(M, N, K)`` of the GEMM a layer performs for an input of ``in_shape``
    (M = output pixels or tokens, N = out features, K = reduction length)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = _pair(module.kernel_size)
        n, _, h, w = in_shape
        ho = conv_out_size(h, kh, _pair(module.stride)[0], _pair(module.padding)[0],
                           _pair(module.dilation)[0])
        wo = conv_out_size(w, kw, _pair(module.stride)[1], _pair(module.padding)[1],
                           _pair(module.dilation)[1])
        return n * ho * wo, module.out_channels, kh * kw * module.in_channels
    rows = 1
    for v in in_shape[:-1]:
        rows *= v
    return rows, module.out_features, module.in_features


def search_cusparselt_algorithms(layer: GemmLayer, inputs: Sequence[torch.Tensor]
                                 ) -> Dict[int, int]:
    """cuSPARSELt's own search (``torch._cslt_sparse_mm_search``: it times every algorithm for
    the shape and returns the fastest) for each GEMM shape the layer sees, stored in
    ``layer.alg_ids`` (by row count) and returned. ``inputs``: the layer's inputs, one per
    shape. A no-op for dense or CUTLASS layers (``{}``)."""
    if not layer.sparse or layer.backend != 'cusparselt':
        return {}
    found: Dict[int, int] = {}
    for x in inputs:
        cols, _ = layer.gemm_input(x)
        rows = cols.shape[0]
        if rows not in found:
            found[rows] = int(torch._cslt_sparse_mm_search(
                layer.weight2d.packed, cols.t(), bias=layer.bias2d, transpose_result=True))
    layer.alg_ids.update(found)
    return found
