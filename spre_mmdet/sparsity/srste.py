"""SR-STE: sparse-refined straight-through estimator (Zhou et al., ICLR 2021).

Forward uses ``W~ = W * mask``; backward passes the gradient straight through to the dense
latent weight and adds the sparse-refined decay on the pruned weights
(docs/methods/srste_asp.md, SR-STE)::

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
        ctx.save_for_backward(weight, mask)  # the mask buffer and W are kept anyway
        ctx.decay = decay
        return apply_mask(weight, mask)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        weight, mask = ctx.saved_tensors
        if not ctx.decay:
            return grad_output, None, None
        # grad + decay * (1 - mask) * W in one fused pass (rounded as the formula: decay * W,
        # then + grad), the pruned mask read as 0/1 bytes: no bool -> float temporaries
        pruned = mask.logical_not()
        if pruned.dtype == torch.bool:
            pruned = pruned.view(torch.uint8)
        return torch.addcmul(grad_output, weight, pruned, value=ctx.decay), None, None


def srste(weight: torch.Tensor, mask: torch.Tensor, decay: float = 2e-4) -> torch.Tensor:
    """Apply SR-STE: see :class:`SRSTEFunction`."""
    return SRSTEFunction.apply(weight, mask, decay)
