"""Sparse drop-in layers: ``nn.Conv2d`` / ``nn.Linear`` whose forward weight comes from a mask
learner. They keep the dense layer's parameters (same objects, same state-dict keys), so dense
checkpoints load unchanged and an optimizer built before the swap keeps working.
"""
import torch
from torch import nn
import torch.nn.functional as F

from .learners import MaskLearner, build_learner
from .record import SparseLayerRecord


class SparseLayerMixin:
    """What every sparse layer offers: its learner, a mask refresh and a deploy form."""

    sparsity: MaskLearner
    #: attribute name (and state-dict key prefix) of the learner submodule
    LEARNER = 'sparsity'
    #: the layer's structure in its record (:class:`~spre_mmdet.sparsity.record.SparseLayerRecord`)
    structure = 'plain'

    def refresh(self, iteration: int) -> None:
        """Advance the mask schedule (called once per training iteration)."""
        self.sparsity.refresh(self.weight, iteration)

    def deploy_weight(self) -> torch.Tensor:
        """The exactly N:M weight a deployed layer uses."""
        return (self.weight * self.sparsity.deploy_mask(self.weight)).detach()

    def record(self, name: str, interspace_form: str = 'basis') -> SparseLayerRecord:
        """This layer's description, as module ``name`` (``interspace_form`` concerns
        interspace convs only: their deploy tensor depends on it)."""
        learner = self.sparsity
        return SparseLayerRecord(name, learner.method, self.structure, learner.n, learner.m,
                                 learner.nm, f'{name}.weight', learner.not_nm_note)

    def _copy_dense(self, dense: nn.Module) -> None:
        self.weight = dense.weight
        self.bias = dense.bias
        self.train(dense.training)


class SparseConv2d(SparseLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` with an N:M-masked weight in forward.

    Build it with :meth:`from_dense`; ``sparsity`` is the :class:`MaskLearner`.
    """

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, method: str, n: int, m: int, **learner_kwargs):
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        layer._copy_dense(conv)
        layer.add_module(cls.LEARNER, build_learner(method, conv.weight.shape, n, m,
                                                    **learner_kwargs))
        layer.sparsity.to(conv.weight.device)
        return layer

    def forward(self, x):
        return self._conv_forward(x, self.sparsity(self.weight), self.bias)

    def to_deploy(self, interspace_form: str = 'basis') -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the exactly N:M weight (``interspace_form``: for
        interspace convs only)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, self.groups, self.bias is not None,
                         self.padding_mode, device=self.weight.device, dtype=self.weight.dtype)
        conv.weight.data.copy_(self.deploy_weight())
        if self.bias is not None:
            conv.bias.data.copy_(self.bias.detach())
        return conv


class SparseLinear(SparseLayerMixin, nn.Linear):
    """``nn.Linear`` with an N:M-masked weight (groups along in-features)."""

    @classmethod
    def from_dense(cls, linear: nn.Linear, method: str, n: int, m: int, **learner_kwargs):
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        layer._copy_dense(linear)
        layer.add_module(cls.LEARNER, build_learner(method, linear.weight.shape, n, m,
                                                    **learner_kwargs))
        layer.sparsity.to(linear.weight.device)
        return layer

    def forward(self, x):
        return F.linear(x, self.sparsity(self.weight), self.bias)

    def to_deploy(self, interspace_form: str = 'basis') -> nn.Linear:
        """A plain ``nn.Linear`` holding the exactly N:M weight."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        linear.weight.data.copy_(self.deploy_weight())
        if self.bias is not None:
            linear.bias.data.copy_(self.bias.detach())
        return linear
