"""SR-STE: sparse-refined straight-through estimator (Zhou et al., ICLR 2021).

Forward uses ``W~ = W * mask``; backward passes the gradient straight through to the dense
latent weight and adds the sparse-refined decay on the pruned weights (SPEC section 2)::

    dL/dW = dL/dW~ + lambda_w * (1 - mask) * W
"""
import torch


class SRSTEFunction(torch.autograd.Function):
    """``W * mask`` with the SR-STE backward. ``mask`` is a constant (no gradient)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        weight, mask = ctx.saved_tensors
        grad = grad_output
        if ctx.decay:
            grad = grad + ctx.decay * weight * mask.logical_not()
        return grad, None, None


def srste(weight: torch.Tensor, mask: torch.Tensor, decay: float = 2e-4) -> torch.Tensor:
    """Apply SR-STE: see :class:`SRSTEFunction`."""
    return SRSTEFunction.apply(weight, mask, decay)
