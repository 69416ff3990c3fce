"""Interspace pruning (IP) with N:M coefficients (docs/methods/interspace.md; Wimmer et al.,
CVPR 2022, arXiv 2203.07808).

A ``k x k`` conv is represented through a per-layer adaptive filter basis ``F`` of ``k*k``
filters ``(k*k, kh, kw)`` and coefficients ``L`` of shape ``(O, C, k*k)``::

    W[o, c] = sum_b L[o, c, b] * F[b]

``F`` and ``L`` are trained jointly; pruning zeroes coefficients ``L``. The merged ``W`` is not
N:M in general; what is hardware-valid is N:M on ``L`` along input channels ``c`` for every
basis index ``b`` (:func:`~spre_mmdet.sparsity.nm.to_groups` on the 3-D ``L`` groups exactly so).
The layer then deploys as a per-channel conv with the ``k*k`` basis filters followed by a
1x1 conv (a GEMM) with the N:M weight ``L`` reshaped to ``(O, k*k*C)``, basis-index major.

:class:`InterspaceConv2d` follows the :class:`~spre_mmdet.sparsity.layers.SparseLayerMixin`
protocol, so ``refresh_masks``, ``initialize_masks``, ``reparameterize`` and
``sparsity_report`` handle it. Its ``weight`` parameter IS the coefficient tensor ``L``
(3-D, ``(O, C, k*k)``): the tensor whose N:M-ness matters, the one the mask learner masks and
the one the report checks. A dense checkpoint's 4-D ``weight`` loads into it (pixel basis).
"""
import dataclasses
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ..errors import ConfigError
from .layers import SparseLayerMixin
from .learners import build_learner
from .nm import check_nm, nm_incompatibility
from .record import SparseLayerRecord


def pixel_basis(kernel_size, dtype=None, device=None) -> torch.Tensor:
    """The pixel basis ``(kh*kw, kh, kw)``: ``F[b]`` is one at position ``divmod(b, kw)``."""
    kh, kw = kernel_size
    return torch.eye(kh * kw, dtype=dtype, device=device).reshape(kh * kw, kh, kw)


PRUNING_MODES = ('nm', 'unstructured')
#: the options of ``SparseResNet``'s ``sparsity.interspace``, per pruning mode
INTERSPACE_OPTIONS = {'nm': ('pruning',),
                      'unstructured': ('pruning', 'density', 'interval', 'decay')}


class InterspaceConv2d(SparseLayerMixin, nn.Conv2d):
    """``k x k`` conv as ``W = sum_b L[:, :, b] * F[b]`` with pruned coefficients ``L``.

    Parameters (state-dict keys):
        weight: the coefficients ``L``, ``(O, C, kh*kw)``. Basis index ``b`` is row-major over
            the kernel (``b = i * kw + j``), so with the pixel basis ``L = W.reshape(O, C, -1)``.
        basis: the filter basis ``F``, ``(kh*kw, kh, kw)``; pixel basis at construction.
        bias: as in ``nn.Conv2d``.

    ``sparsity`` (a :class:`MaskLearner` over ``L``'s shape) gives the masked coefficients.
    Training computes the merged weight (a ``(O*C, k*k) x (k*k, k*k)`` matmul) and runs one
    ordinary conv, so the training cost is that of the dense conv. Only ``groups=1``.

    Build it with :meth:`from_dense`; deploy with :meth:`to_deploy` (basis conv + N:M 1x1)
    or :meth:`to_dense_conv` (one merged dense conv).
    """

    structure = 'interspace'

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode='zeros', device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device=device, dtype=dtype)
        if groups != 1:
            raise ValueError(f'InterspaceConv2d supports groups=1 only, got groups={groups}.')
        kh, kw = self.kernel_size
        # Same values as nn.Conv2d's init (fan_in = C*kh*kw either way), viewed as coefficients
        # of the pixel basis.
        self.weight = nn.Parameter(
            self.weight.detach().reshape(out_channels, in_channels, kh * kw).clone())
        self.basis = nn.Parameter(pixel_basis(self.kernel_size, self.weight.dtype,
                                              self.weight.device))
        self.pruning = 'nm'

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s init for ``L`` and the bias (same fan-in as the 4-D weight), pixel
        basis for ``F``."""
        super().reset_parameters()
        if hasattr(self, 'basis'):
            with torch.no_grad():
                self.basis.copy_(pixel_basis(self.kernel_size, self.basis.dtype,
                                             self.basis.device))

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, method: str, n: int, m: int, pruning: str = 'nm',
                   **learner_kwargs) -> 'InterspaceConv2d':
        """Interspace version of ``conv`` computing exactly the same function (pixel basis,
        ``L = W``) until its mask is first refreshed.

        Args:
            method: mask learner. ``pruning='nm'``: any :func:`build_learner` name (``'srste'``,
                ``'asp'``, ``'lbc'``, ...), applied to ``L`` of shape ``(O, C, k*k)``, i.e.
                N:M along input channels for every (out channel, basis index).
                ``pruning='unstructured'``: ``'asp'`` (one-shot, fixed) or ``'srste'``
                (mask recomputed every ``interval`` iterations, default 1).
            pruning: ``'nm'`` (hardware-valid) or ``'unstructured'`` (the paper's setting,
                NOT hardware-valid; kwargs ``density`` (default ``n/m``), ``interval``,
                ``decay``).
        """
        n, m = check_nm(n, m)
        if type(conv) is not nn.Conv2d:
            raise TypeError(f'Expected a plain nn.Conv2d, got {type(conv).__name__}.')
        reason = interspace_incompatibility(conv, m, pruning)
        if reason is not None:
            raise ValueError(f'Cannot make this conv an interspace layer: {reason}.')
        weight = conv.weight
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight.detach().reshape(layer.weight.shape))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.detach())
        layer.pruning = pruning
        learner, options = coefficient_learner(method, pruning, learner_kwargs)
        layer.sparsity = build_learner(learner, layer.weight.shape, n, m, **options)
        layer.sparsity.to(weight.device)
        layer.train(conv.training)
        return layer

    # -- the three views of the layer --------------------------------------------------------

    @property
    def coefficients(self) -> nn.Parameter:
        """The coefficient tensor ``L`` (the same Parameter as :attr:`weight`)."""
        return self.weight

    def merge(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``W[o, c] = sum_b coefficients[o, c, b] * basis[b]``, shape ``(O, C, kh, kw)``."""
        o, c, kk = coefficients.shape
        merged = coefficients.reshape(o * c, kk) @ self.basis.reshape(kk, -1)
        return merged.reshape(o, c, *self.kernel_size)

    def merged_weight(self) -> torch.Tensor:
        """The k x k weight used in forward: the basis applied to the masked coefficients."""
        return self.merge(self.sparsity(self.weight))

    def forward(self, x):
        return self._conv_forward(x, self.merged_weight(), self.bias)

    # -- deploy -------------------------------------------------------------------------------

    @torch.no_grad()
    def to_deploy(self, interspace_form: str = 'basis') -> nn.Module:
        """The deploy form: ``'basis'``, the factored form (basis conv + 1x1 conv with the
        exactly N:M weight ``L``, for ``pruning='nm'``; see :class:`InterspaceDeployConv2d`), or
        ``'merged'``, one dense ``k x k`` conv (:meth:`to_dense_conv`)."""
        if interspace_form == 'merged':
            return self.to_dense_conv()
        return InterspaceDeployConv2d.from_conv(self).set_factors(self.basis,
                                                                 self.deploy_weight(), self.bias)

    def record(self, name: str, interspace_form: str = 'basis') -> SparseLayerRecord:
        """As a sparse layer's, with the deploy tensor of ``interspace_form``: the 1x1 GEMM
        weight of the basis form (N:M when the coefficients are), or the merged dense k x k
        weight (not N:M by design)."""
        record = super().record(name)
        if interspace_form == 'merged':
            return dataclasses.replace(
                record, nm=False, note='merged into a dense k x k conv (interspace_form='
                '"merged"): not N:M by design')
        return dataclasses.replace(record, tensor=f'{name}.gemm.weight')

    @torch.no_grad()
    def to_dense_conv(self) -> nn.Conv2d:
        """One plain ``k x k`` conv with the merged weight ``sum_b (masked L)[:, :, b] F[b]``
        (dense in general: for users without sparse hardware, or stock checkpoints)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, 1, self.bias is not None,
                         self.padding_mode, device=self.weight.device, dtype=self.weight.dtype)
        conv.weight.copy_(self.merge(self.deploy_weight()))
        if self.bias is not None:
            conv.bias.copy_(self.bias.detach())
        return conv

    def deploy_flops(self, out_hw) -> Dict[str, int]:
        """Multiply-accumulates per image at output size ``out_hw = (H', W')``: the dense conv,
        the basis conv, the dense and the N:M-sparse GEMM (``N/M`` of it, ideal)."""
        o, c, kk = self.weight.shape
        pixels = int(out_hw[0]) * int(out_hw[1])
        dense = pixels * o * c * kk
        density = self.sparsity.n / self.sparsity.m
        return dict(dense_conv=dense, basis_conv=pixels * c * kk * kk, gemm=dense,
                    sparse_gemm=int(round(dense * density)))

    # -- checkpoints --------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Load an interspace checkpoint as is, or a dense conv's 4-D ``weight`` as ``L = W``
        with the pixel basis (``basis`` is then not reported missing)."""
        key, basis_key = prefix + 'weight', prefix + 'basis'
        dense = state_dict.get(key)
        from_dense = (dense is not None and dense.dim() == 4
                      and dense.shape[:2] == self.weight.shape[:2]
                      and tuple(dense.shape[2:]) == tuple(self.kernel_size))
        if from_dense:
            if basis_key in state_dict:
                error_msgs.append(f'{prefix[:-1]}: a 4-D (dense) weight together with an '
                                  f'interspace basis is ambiguous; the 4-D weight is the dense '
                                  f'kernel, so the pixel basis is used.')
            state_dict = dict(state_dict)  # never modify the caller's dict
            state_dict[key] = dense.reshape(self.weight.shape)
            state_dict[basis_key] = pixel_basis(self.kernel_size, self.basis.dtype,
                                                self.basis.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self):
        return super().extra_repr() + f', interspace ({self.pruning} coefficients)'


class InterspaceDeployConv2d(nn.Module):
    """Deploy form of an interspace conv: a basis conv, then a 1x1 conv (a GEMM) whose weight
    is exactly N:M in the hardware layout. Plain torch modules only::

        basis_conv: Conv3d(1, k*k, (1, kh, kw), stride=(1, *stride), padding=(0, *padding),
                           dilation=(1, *dilation), bias=False)   # weight = F, (k*k,1,1,kh,kw)
        gemm:       Conv2d(k*k*C, O, 1, bias)   # weight[o, b*C + c] = (masked L)[o, c, b]

    ``forward(x) = gemm(basis_conv(x.unsqueeze(1)).flatten(1, 2))``. The basis conv slides the
    ``k*k`` basis filters over every input channel (the channels are the Conv3d's depth), so its
    output ``(N, k*k, C, H', W')`` is basis-index major and flattens without a copy to the
    ``b*C + c`` channel order: any ``M`` consecutive input channels of the 1x1 conv are then
    channels ``c..c+M-1`` at one basis index, exactly the N:M groups of ``L``. With the pixel
    basis the basis conv is im2col. Only standard ops (Conv3d, flatten, Conv2d), so ONNX and
    TensorRT take it as is; the basis is stored once, not once per channel.

    Build it from a trained layer with :meth:`InterspaceConv2d.to_deploy`, or as an empty shell
    of a conv's geometry with :meth:`from_conv` (to load a deploy checkpoint into).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, padding_mode: str = 'zeros', device=None,
                 dtype=None):
        super().__init__()
        kh, kw = _pair(kernel_size)
        kw_args = dict(device=device, dtype=dtype)
        spatial_padding = padding if isinstance(padding, str) else (0, *_pair(padding))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.basis_conv = nn.Conv3d(1, kh * kw, (1, kh, kw), (1, *_pair(stride)),
                                    spatial_padding, (1, *_pair(dilation)), bias=False,
                                    padding_mode=padding_mode, **kw_args)
        self.gemm = nn.Conv2d(kh * kw * in_channels, out_channels, 1, bias=bias, **kw_args)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> 'InterspaceDeployConv2d':
        """The deploy form of ``conv`` in the pixel basis (``L = W``): same geometry, same
        function. ``conv`` may be a plain ``nn.Conv2d`` or an :class:`InterspaceConv2d`."""
        if conv.groups != 1:
            raise ValueError(f'Interspace deploy form needs groups=1, got {conv.groups}.')
        weight = conv.weight
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.bias is not None, conv.padding_mode,
                    device=weight.device, dtype=weight.dtype)
        basis = pixel_basis(conv.kernel_size, weight.dtype, weight.device)
        coefficients = weight.reshape(conv.out_channels, conv.in_channels, basis.shape[0])
        return layer.set_factors(basis, coefficients, conv.bias).train(conv.training)

    @torch.no_grad()
    def set_factors(self, basis: torch.Tensor, coefficients: torch.Tensor,
                    bias: Optional[torch.Tensor]) -> 'InterspaceDeployConv2d':
        """Write ``F`` ``(k*k, kh, kw)``, ``L`` ``(O, C, k*k)`` and the bias into the deploy
        layout (the one place that knows it; :attr:`coefficients` reads it back)."""
        kk = basis.shape[0]
        self.basis_conv.weight.copy_(basis.detach().reshape(kk, 1, 1, *basis.shape[1:]))
        self.gemm.weight.copy_(coefficients.detach().permute(0, 2, 1)
                               .reshape(self.out_channels, -1, 1, 1))
        if bias is not None:
            self.gemm.bias.copy_(bias.detach())
        return self

    @property
    def coefficients(self) -> torch.Tensor:
        """The deployed (masked) coefficients ``L``, ``(O, C, k*k)``."""
        o, c = self.out_channels, self.in_channels
        return self.gemm.weight.detach().reshape(o, -1, c).permute(0, 2, 1)

    def forward(self, x):
        return self.gemm(self.basis_conv(x.unsqueeze(1)).flatten(1, 2))

    def extra_repr(self):
        return f'{self.in_channels}, {self.out_channels}: basis conv + 1x1 GEMM (interspace)'


def coefficient_learner(method: str, pruning: str, kwargs: dict) -> Tuple[str, dict]:
    """The learner (name and options, for :func:`~spre_mmdet.sparsity.learners.build_learner`)
    of the coefficients: ``method`` itself for N:M pruning; for unstructured pruning the
    ``'unstructured'`` learner, one-shot (``interval=0``) for ``'asp'`` and recomputed every
    ``interval`` iterations (default 1) for ``'srste'``."""
    if pruning == 'nm':
        return method, kwargs
    if pruning != 'unstructured':
        raise ConfigError(f'Unknown pruning {pruning!r}; choose one of {PRUNING_MODES}.')
    kwargs = dict(kwargs)
    if method == 'asp':
        kwargs.setdefault('interval', 0)
    elif method == 'srste':
        kwargs.setdefault('interval', 1)
        if kwargs['interval'] < 1:
            raise ConfigError("pruning='unstructured' with method='srste' needs interval>=1")
    else:
        raise ConfigError(f"pruning='unstructured' supports method 'asp' (one-shot) or "
                          f"'srste' (recomputed), got {method!r}.")
    return 'unstructured', kwargs


def interspace_incompatibility(conv: nn.Module, m: int, pruning: str = 'nm') -> Optional[str]:
    """Why ``conv`` cannot become an :class:`InterspaceConv2d`, or ``None`` if it can."""
    if not isinstance(conv, nn.Conv2d):
        return f'not a Conv2d ({type(conv).__name__})'
    if tuple(conv.kernel_size) == (1, 1):
        return '1x1 conv: interspace applies to k x k convs (k > 1) only'
    if conv.groups != 1:
        return f'grouped conv (groups={conv.groups})'
    if pruning == 'nm':
        return nm_incompatibility(conv.weight.shape, m)
    return None
