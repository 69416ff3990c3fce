"""SR-STE: sparse-refined straight-through estimator (Zhou et al., ICLR 2021).

Forward uses ``W~ = W * mask``; backward passes the gradient straight through to the dense
latent weight and adds the sparse-refined decay on the pruned weights (SPEC section 2)::

    dL/dW = dL/dW~ + lambda_w * (1 - mask) * W
"""
import torch


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight * mask`` for a bool ``mask``, read as 0/1 bytes: the same values, but torch's
    float-by-uint8 multiply is several times faster than its float-by-bool one on CPU."""
    return weight * (mask.view(torch.uint8) if mask.dtype == torch.bool else mask)


class SRSTEFunction(torch.autograd.Function):
    """``W * mask`` with the SR-STE backward. ``mask`` is a constant (no gradient)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        masked = apply_mask(weight, mask)
        # the pruned part of W is W - W~ (exactly: W - W*1 = 0, W - W*0 = W), so the backward
        # needs no mask; W~ costs nothing to keep, the conv that consumes it keeps it anyway
        ctx.save_for_backward(weight, masked)
        ctx.decay = decay
        return masked

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        weight, masked = ctx.saved_tensors
        if not ctx.decay:
            return grad_output, None, None
        # grad + decay * (1 - mask) * W, rounded as that formula is (decay * W, then + grad),
        # in three in-place-friendly passes instead of bool -> float temporaries
        grad = torch.sub(weight, masked)
        grad.mul_(ctx.decay).add_(grad_output)
        return grad, None, None


def srste(weight: torch.Tensor, mask: torch.Tensor, decay: float = 2e-4) -> torch.Tensor:
    """Apply SR-STE: see :class:`SRSTEFunction`."""
    return SRSTEFunction.apply(weight, mask, decay)
