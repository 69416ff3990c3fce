"""SpRe: spatial re-parameterization for N:M sparse convolutions (docs/methods/spre.md).

Training-time block for a k x k conv followed by BatchNorm::

    y = BN_main(conv(x, W * B)) + BN_rep(conv(x, W_rep * B * S))

It is built from two drop-in modules that replace the conv and its norm in place, so the main
branch keeps the dense layer's state-dict keys:

* :class:`SpReConv2d` (replaces the conv) runs both branches as ONE conv with ``2 * O`` output
  channels, ``[main | rep]``: stacking the two weights costs one kernel launch instead of two.
* :class:`SpReBatchNorm2d` (replaces the norm) normalizes each half with its own BN and sums.

When both BNs normalize with running statistics (eval mode; in detection fine-tuning that is
every training step, since mmdet's ResNet keeps its BNs in eval with ``norm_eval=True``), the
block is linear after the conv. The pair then runs as one ``O``-channel conv with the weight
``K_main + K_rep`` and the bias ``c_main + c_rep`` folded from the live parameters, and the BN
passes its output on: the same function and the same gradients as the two branches, at the
cost of the plain N:M conv.

After training, :meth:`SpReBatchNorm2d.fold` merges the pair into a plain conv whose weight is
exactly N:M (its support lies inside ``B``) and a BN that only adds the folded bias.
"""
from typing import Tuple

import torch
from torch import nn

from ..errors import ConfigError
from .layers import SparseConv2d
from .learners import DerivedStateMixin
from .nm import unstructured_mask

#: the options of SpRe's branch (``SparseResNet``'s ``sparsity.spre``); ``rep_bn_train`` keeps
#: the branch BN on batch statistics while ``norm_eval`` freezes the others (the backbone's)
SPRE_OPTIONS = ('rep_gamma', 'spatial_interval', 'rep_bn_train')


def spatial_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The layer-wide ``kh x kw`` mask ``S`` of SpRe (docs/methods/spre.md, steps 1-4).

    An unstructured magnitude mask at density ``n/m`` is taken over the whole layer
    (:func:`~spre_mmdet.sparsity.nm.unstructured_mask`: ties at its threshold keep the lowest
    flat indices); a kernel position gets ``S = 1`` where that mask removes *less* than
    ``p = 1 - n/m`` of the position's weights. The counts are integers and the comparison is
    exact, on any device and under autocast; nothing is read back to the host.

    Args:
        weight: the ``(O, C, kh, kw)`` weight.
        n, m: the N:M pattern.

    Returns:
        ``S`` as 0/1 in ``weight``'s dtype, shape ``(kh, kw)``.
    """
    out_c, in_c = weight.shape[:2]
    total = out_c * in_c
    # int32 sums (fewer than 2**31 rows), widened before the products below
    kept = unstructured_mask(weight, n / m).reshape(total, -1).sum(dim=0, dtype=torch.int32).long()
    # pruned / total < (m - n) / m, in integers (float32 would misjudge the equality case)
    spatial = (total - kept) * m < (m - n) * total
    return spatial.to(weight.dtype).reshape(weight.shape[2:])


def batchnorm_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BN as ``y = x * scale + shift`` (differentiable in ``gamma``, ``beta``)."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - bn.running_mean * scale


def fold_batchnorm(weight: torch.Tensor, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN into the preceding bias-free conv: ``(K, c)``."""
    scale, shift = batchnorm_affine(bn)
    return weight * scale.reshape(-1, 1, 1, 1), shift


class SpReConv2d(DerivedStateMixin, SparseConv2d, nn.Conv2d):
    """Main N:M conv plus SpRe's extra branch; outputs ``[main | rep]`` (``2 * O`` channels), or,
    while its paired BN uses running statistics, the ``O``-channel conv with the folded weight.

    Attributes:
        weight_rep: the extra branch's full ``k x k`` weight (kaiming normal, fan_in).
        spatial: the ``kh x kw`` mask ``S``, all ones until its first refresh.
        spatial_interval: refresh ``S`` every this many iterations.
        spatial_changes: kernel positions whose ``S`` entry flipped at a refresh, counted since
            the layer was built (not saved): how unsettled ``S`` is. Every flip moves the
            extra branch's support, so its BN statistics and ``W_rep`` must re-adapt.
    """

    #: attribute names (and state-dict key suffixes) of the extra weight and of ``S``
    REP_WEIGHT = 'weight_rep'
    SPATIAL = 'spatial'
    derived_state = (SPATIAL,)
    structure = 'spre'
    # flips of S so far: a tensor on the weight's device once counted, so that a refresh never
    # waits for the device (read it through spatial_changes, e.g. when logging)
    _spatial_flips = 0
    # nn.Conv2d is listed among the direct bases so that mmengine's init_cfg (layer='Conv2d'),
    # which matches direct base names only, initializes the main weight like a dense conv.

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, method: str, n: int, m: int, spatial_interval: int = 1,
                   **learner_kwargs):
        if conv.bias is not None or conv.groups != 1:
            raise ValueError('SpRe needs a bias-free, ungrouped conv followed by BatchNorm; got '
                             f'{conv}.')
        if isinstance(spatial_interval, bool) or int(spatial_interval) != spatial_interval or \
                spatial_interval < 1:
            raise ConfigError(f'SpRe spatial_interval must be a whole number >= 1 (refresh S '
                              f'every this many iterations), got {spatial_interval!r}.')
        layer = super().from_dense(conv, method, n, m, **learner_kwargs)
        layer.spatial_interval = int(spatial_interval)
        layer.register_parameter(cls.REP_WEIGHT, nn.Parameter(torch.empty_like(conv.weight)))
        nn.init.kaiming_normal_(layer.weight_rep, mode='fan_in')
        layer.register_buffer(cls.SPATIAL, torch.ones(conv.kernel_size, dtype=conv.weight.dtype,
                                                      device=conv.weight.device))
        return layer

    def refresh(self, iteration: int) -> None:
        super().refresh(iteration)
        self._refresh_spatial(iteration)

    def _refresh_spatial(self, iteration: int) -> None:
        if self.needs_init or iteration % self.spatial_interval == 0:
            spatial = spatial_mask(self.weight.detach(), self.sparsity.n, self.sparsity.m)
            if not self.needs_init:
                self._spatial_flips = self._spatial_flips + (spatial != self.spatial).sum()
            self.spatial.copy_(spatial)
            self.needs_init = False

    @property
    def spatial_changes(self) -> int:
        """Entries of ``S`` flipped at refreshes since the layer was built (not saved). Reading
        it waits for the device: read it when logging."""
        return int(self._spatial_flips)

    def rep_weight(self) -> torch.Tensor:
        """``W_rep * B * S``; ``B`` and ``S`` are constants (no gradient flows through them)."""
        return self.weight_rep * (self.sparsity.mask * self.spatial)

    def pair(self, norm: 'SpReBatchNorm2d') -> None:
        """Link the BN that follows this conv, so that the pair can run as one conv while that
        BN uses running statistics. Not a submodule: no state-dict keys, no double visits."""
        object.__setattr__(self, '_paired_norm', norm)

    def forward(self, x):
        norm = self.__dict__.get('_paired_norm')
        if norm is not None and norm.uses_running_stats:
            return self._conv_forward(x, *norm.fused_weight_and_bias(self))  # O channels
        weight = torch.cat([self.sparsity(self.weight), self.rep_weight()])
        return self._conv_forward(x, weight, None)  # 2 * O channels: [main | rep]

    def to_deploy(self, interspace_form: str = 'basis'):
        raise RuntimeError('A SpReConv2d is deployed together with its SpReBatchNorm2d: use '
                           'SpReBatchNorm2d.fold (reparameterize() does).')


class SpReBatchNorm2d(nn.BatchNorm2d):
    """The main branch's BN (same parameters and keys as the dense BN) plus ``rep_bn``.

    Args:
        num_features: channels of each branch.
        conv_name: attribute name of the paired :class:`SpReConv2d` in the same parent module.
        rep_gamma: initial ``gamma`` of ``rep_bn``. ``0`` makes the block start exactly as the
            main branch (the right default when fine-tuning a pretrained dense network).
    """

    def __init__(self, num_features: int, conv_name: str, eps: float = 1e-5,
                 momentum: float = 0.1, rep_gamma: float = 0.0, **kwargs):
        super().__init__(num_features, eps, momentum, **kwargs)
        self.conv_name = conv_name
        self.rep_bn = nn.BatchNorm2d(num_features, eps, momentum, **kwargs)
        nn.init.constant_(self.rep_bn.weight, rep_gamma)

    @classmethod
    def from_dense(cls, bn: nn.BatchNorm2d, conv_name: str, rep_gamma: float = 0.0):
        norm = cls(bn.num_features, conv_name, bn.eps, bn.momentum, rep_gamma,
                   affine=bn.affine, track_running_stats=bn.track_running_stats,
                   device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        norm.load_state_dict(bn.state_dict(), strict=False)
        if bn.affine:  # share the parameters, as the sparse conv does
            norm.weight, norm.bias = bn.weight, bn.bias
        norm.train(bn.training)
        return norm

    @property
    def uses_running_stats(self) -> bool:
        """Both BNs normalize with running statistics (eval mode, statistics tracked)."""
        return all(not bn.training and bn.running_mean is not None
                   for bn in (self, self.rep_bn))

    def _scales_and_bias(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``gamma / std`` of each BN and the summed folded bias, differentiable in the BN
        parameters (running statistics are constants)."""
        main_scale, main_shift = batchnorm_affine(self)
        rep_scale, rep_shift = batchnorm_affine(self.rep_bn)
        return main_scale, rep_scale, main_shift + rep_shift

    def fused_weight_and_bias(self, conv: SpReConv2d) -> Tuple[torch.Tensor, torch.Tensor]:
        """``K_main + K_rep`` and ``c_main + c_rep`` from the live parameters: the fused path's
        conv weight and bias (the conv adds the bias in its own pass over the output)."""
        main_scale, rep_scale, bias = self._scales_and_bias()
        return (conv.sparsity(conv.weight) * main_scale.view(-1, 1, 1, 1) +
                conv.rep_weight() * rep_scale.view(-1, 1, 1, 1)), bias

    def forward(self, x):
        if x.shape[1] == self.num_features:  # the paired conv already applied both BNs
            if not self.uses_running_stats:
                raise RuntimeError('SpReBatchNorm2d got the fused O-channel output while a BN is '
                                   'in training mode; the paired conv decides the same way, so '
                                   'the pair was changed between conv and BN.')
            return x
        main, rep = x.chunk(2, dim=1)
        return super().forward(main) + self.rep_bn(rep)

    @torch.no_grad()
    def branch_ratio(self, conv: SpReConv2d) -> float:
        """How much the extra branch contributes: ``||K_rep|| / ||K_main||`` of the folded
        kernels (Frobenius norms, running statistics). 0 while ``gamma_rep`` is 0: the block is
        then exactly the plain N:M conv."""
        mask = conv.sparsity.mask
        k_main, _ = fold_batchnorm(conv.weight * mask, self)
        k_rep, _ = fold_batchnorm(conv.weight_rep * (mask * conv.spatial), self.rep_bn)
        return float(k_rep.norm() / k_main.norm().clamp_min(1e-12))

    @torch.no_grad()
    def fold(self, conv: SpReConv2d) -> Tuple[nn.Conv2d, nn.BatchNorm2d]:
        """Merge both branches into one plain conv + a BN that adds the folded bias.

        ``K = K_main + K_rep``, ``c = c_main + c_rep``. The BN is an identity plus bias
        (``gamma=1, beta=c, mean=0, var=1-eps``) so the result is an ordinary conv-BN pair.
        """
        mask = conv.sparsity.deploy_mask(conv.weight)
        k_main, c_main = fold_batchnorm(conv.weight * mask, self)
        k_rep, c_rep = fold_batchnorm(conv.weight_rep * (mask * conv.spatial), self.rep_bn)
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, bias=False, device=conv.weight.device,
                          dtype=conv.weight.dtype)
        plain.weight.copy_((k_main + k_rep) * mask)  # * mask: exact zeros off the N:M support
        bn = nn.BatchNorm2d(self.num_features, self.eps, device=conv.weight.device,
                            dtype=conv.weight.dtype)
        bn.weight.fill_(1.0)
        bn.bias.copy_(c_main + c_rep)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - self.eps)
        bn.eval()
        return plain, bn
