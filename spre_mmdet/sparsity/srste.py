"""SR-STE: sparse-refined straight-through estimator (Zhou et al., ICLR 2021).

Forward uses ``W~ = W * mask``; the gradient passes straight through to the dense latent weight,
and the sparse-refined decay is added on the pruned weights (docs/methods/srste_asp.md,
SR-STE)::

    dL/dW = dL/dW~ + lambda_w * (1 - mask) * W

The two terms are applied at different times, so that the decay is independent of how the loss
gradient was produced:

* :func:`masked_ste` (the layer's forward and backward) gives ``dL/dW~`` to ``W``;
* :func:`add_srste_decay_` adds ``lambda_w * (1 - mask) * W`` to ``W.grad`` once per optimizer
  step, right before it (:func:`register_srste_decay` installs that on an optimizer). Under
  mixed precision the gradient is unscaled by then (``GradScaler.step`` unscales before calling
  the optimizer, and skips the step and the decay on an overflow; a fused optimizer, which
  unscales inside its step, gets the decay scaled like its gradient), and with gradient
  accumulation it is the accumulated gradient: the decay counts once per update, as in fp32
  training without accumulation. It is added after gradient clipping.
"""
from typing import Iterable, Optional, Tuple

import torch
from torch import nn


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight * mask`` for a bool ``mask``, read as 0/1 bytes: the same values, but torch's
    float-by-uint8 multiply is several times faster than its float-by-bool one on CPU."""
    return weight * (mask.view(torch.uint8) if mask.dtype == torch.bool else mask)


class MaskedSTE(torch.autograd.Function):
    """``W * mask`` in forward; the gradient straight through to ``W`` in backward. ``mask`` is
    a constant (no gradient)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return apply_mask(weight, mask)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


def masked_ste(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SR-STE's forward: see :class:`MaskedSTE`."""
    return MaskedSTE.apply(weight, mask)


@torch.no_grad()
def add_srste_decay_(weight: torch.Tensor, mask: torch.Tensor, decay: float,
                     grad_scale: Optional[torch.Tensor] = None) -> None:
    """``weight.grad += decay * (1 - mask) * weight``, in place (nothing if ``weight`` has no
    gradient or ``decay`` is 0). Call it once per optimizer step.

    Args:
        grad_scale: the factor the gradient still carries, if any: a fused optimizer under
            ``GradScaler`` gets scaled gradients and unscales them inside its step
            (``optimizer.grad_scale``); the decay is then scaled alike (a tensor product: no
            sync).
    """
    if not decay or weight.grad is None:
        return
    pruned = mask.logical_not()
    if pruned.dtype == torch.bool:
        pruned = pruned.view(torch.uint8)  # no bool -> float temporary
    if grad_scale is None:
        weight.grad.addcmul_(weight, pruned, value=decay)
    else:
        weight.grad.addcmul_(weight * pruned, grad_scale.to(weight.grad.dtype) * decay)


def srste_decay_pairs(model: nn.Module) -> Iterable[Tuple[nn.Module, torch.Tensor]]:
    """``(learner, weight)`` of every sparse layer of ``model`` whose learner adds the SR-STE
    decay (a ``decay_gradient_`` method)."""
    for module in model.modules():
        learner = getattr(module, 'sparsity', None)
        if learner is not None and hasattr(learner, 'decay_gradient_') and \
                isinstance(getattr(module, 'weight', None), torch.Tensor):
            yield learner, module.weight


def register_srste_decay(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Add SR-STE's decay of every sparse layer of ``model`` to its weight's gradient right
    before each ``optimizer.step()``. Training loops call this once per optimizer (mmengine's
    ``SparsityHook`` does); plain PyTorch users call it after building the optimizer.

    Only weights that ``optimizer`` updates get the decay from it, so that with one optimizer
    per part of the model each weight gets it once.

    Returns:
        The hook's handle (``handle.remove()`` undoes it).
    """
    updated = {id(p) for group in optimizer.param_groups for p in group['params']}
    pairs = [(learner, weight) for learner, weight in srste_decay_pairs(model)
             if id(weight) in updated]

    def add_decay(optimizer, args, kwargs):
        # set by GradScaler.step for optimizers that unscale inside their step (fused ones)
        grad_scale = getattr(optimizer, 'grad_scale', None)
        for learner, weight in pairs:
            learner.decay_gradient_(weight, grad_scale)
    return optimizer.register_step_pre_hook(add_decay)
