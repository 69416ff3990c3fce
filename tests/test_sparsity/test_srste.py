"""SR-STE and the ASP fixed-mask baseline (docs/methods/srste_asp.md)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from helpers import assert_nm_pattern, reference_nm_mask
from spre_mmdet.sparsity import (FixedMask, SparseConv2d, SparseLinear, SRSTEMask,
                                 add_srste_decay_, apply_mask, build_learner, masked_ste, nm_mask,
                                 refresh_masks, register_srste_decay, sparsify_layer)


def _sparse_conv(method='srste', seed=0, **kwargs):
    torch.manual_seed(seed)
    return SparseConv2d.from_dense(nn.Conv2d(8, 6, 3, padding=1), method, 2, 4, **kwargs)


# ------------------------------------------------------------------------------------- SR-STE

def test_masked_weights_do_not_contribute():
    """Perturbing a masked latent weight leaves the output unchanged; a kept one changes it."""
    layer = _sparse_conv()
    layer.refresh(0)
    x = torch.randn(2, 8, 5, 5)
    y = layer(x)
    mask = layer.sparsity.mask
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight) * 10 * ~mask)
    assert torch.equal(layer(x), y)
    with torch.no_grad():
        layer.weight.add_(mask.float())
    assert not torch.allclose(layer(x), y)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 16), st.sampled_from([0.0, 2e-4, 0.5]))
def test_srste_gradient_formula(seed, decay):
    """dL/dW = dL/dW~ + lambda * (1 - mask) * W, with L = (W~ * G).sum() so dL/dW~ = G."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(4, 8, 3, 3, generator=gen, requires_grad=True)
    grad_out = torch.randn(4, 8, 3, 3, generator=gen)
    mask = torch.from_numpy(reference_nm_mask(weight, 2, 4))
    masked = masked_ste(weight, mask)
    assert torch.equal(masked, weight.detach() * mask)
    (masked * grad_out).sum().backward()
    add_srste_decay_(weight, mask, decay)
    expected = grad_out + decay * (~mask).float() * weight.detach()
    torch.testing.assert_close(weight.grad, expected, rtol=0, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 16), st.sampled_from([2e-4, 0.5, 3.0]))
def test_srste_gradient_is_bitwise_the_formula(seed, decay):
    """The SR-STE gradient equals grad + decay * (1 - mask) * W bit for bit (same rounding)."""
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(8, 16, 3, 3, generator=gen) * 10).requires_grad_()
    grad_out = torch.randn(8, 16, 3, 3, generator=gen) * 100
    mask = nm_mask(weight, 2, 4)
    masked_ste(weight, mask).backward(grad_out)
    add_srste_decay_(weight, mask, decay)
    assert torch.equal(weight.grad, grad_out + decay * (~mask).float() * weight.detach())


def test_apply_mask_equals_multiplication_by_the_bool_mask():
    """apply_mask(W, mask) equals W * mask, NaN/inf weights and non-contiguous masks included."""
    weight = torch.randn(6, 8, 3, 3)
    weight[0, 0] = float('nan')
    weight[1, 1] = float('inf')
    mask = torch.rand(6, 8, 3, 3) > 0.5
    for m in (mask, mask.transpose(2, 3)):
        w = weight if m is mask else weight.transpose(2, 3)
        torch.testing.assert_close(apply_mask(w, m), w * m, equal_nan=True, rtol=0, atol=0)


def test_masked_ste_is_pure_ste():
    """Backward alone passes the gradient straight through, pruned positions included."""
    weight = torch.randn(4, 8, requires_grad=True)
    grad_out = torch.randn(4, 8)
    mask = nm_mask(weight, 1, 4)
    (masked_ste(weight, mask) * grad_out).sum().backward()
    assert torch.equal(weight.grad, grad_out)
    assert (weight.grad[~mask] != 0).all()


def test_sparse_conv_backward_matches_hand_computation():
    """Through a SparseConv2d and an optimizer step with register_srste_decay, the gradient the
    optimizer sees is the grad w.r.t. W~ (same conv on a leaf W~) + the decay term."""
    decay = 0.1
    layer = _sparse_conv(decay=decay)
    layer.refresh(0)
    x = torch.randn(2, 8, 5, 5)
    target = torch.randn(2, 6, 5, 5)
    seen = []
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)
    register_srste_decay(layer, opt)
    opt.register_step_pre_hook(lambda *args: seen.append(layer.weight.grad.clone()))
    F.mse_loss(layer(x), target).backward()
    opt.step()
    masked = (layer.weight.detach() * layer.sparsity.mask).requires_grad_()
    F.mse_loss(F.conv2d(x, masked, layer.bias.detach(), padding=1), target).backward()
    expected = masked.grad + decay * (~layer.sparsity.mask) * layer.weight.detach()
    torch.testing.assert_close(seen[0], expected)
    assert layer.sparsity.mask.grad is None and not layer.sparsity.mask.requires_grad


def test_srste_mask_follows_latent_weights():
    """After SGD steps the refreshed SR-STE mask is the magnitude N:M mask of the latent weight."""
    layer = SparseLinear.from_dense(nn.Linear(16, 8), 'srste', 2, 4, decay=2e-4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9)
    masks = []
    for it in range(6):
        layer.refresh(it)
        assert torch.equal(layer.sparsity.mask, torch.from_numpy(reference_nm_mask(
            layer.weight, 2, 4)))
        assert_nm_pattern(layer.weight * layer.sparsity.mask, 2, 4)
        masks.append(layer.sparsity.mask.clone())
        opt.zero_grad()
        layer(torch.randn(32, 16)).pow(2).mean().backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(masks, masks[1:])), 'mask never moved'


def test_srste_interval():
    """SRSTEMask with interval k recomputes its mask only at iterations that are multiples of k."""
    learner = SRSTEMask((4, 8), 2, 4, interval=3)
    weight = torch.randn(4, 8)
    learner.refresh(weight, 1)  # first refresh initializes even off-interval
    assert torch.equal(learner.mask, nm_mask(weight, 2, 4))
    current = learner.mask.clone()
    for it in range(2, 10):
        weight = torch.randn(4, 8)
        learner.refresh(weight, it)
        if it % 3 == 0:
            current = nm_mask(weight, 2, 4)
        assert torch.equal(learner.mask, current), it


def test_learner_argument_errors():
    """Unknown types and interval < 1 raise ValueError naming the choices / constraint."""
    with pytest.raises(ValueError, match="'SRSTEMask'"):
        build_learner('nope', (4, 8), 2, 4)
    with pytest.raises(ValueError, match='interval'):
        SRSTEMask((4, 8), 2, 4, interval=0)
    with pytest.raises(ValueError, match='n=2, m=4'):
        build_learner('SRSTEMask', (4, 8), 4, 4)


def test_learners_are_chosen_by_registered_type():
    """Configs choose a learner by its class name (or its method name); a class decorated with
    register_learner is buildable at once, and a name cannot be taken twice."""
    from spre_mmdet.sparsity import MaskLearner, register_learner
    from spre_mmdet.sparsity.learners import LEARNERS
    assert isinstance(build_learner('SRSTEMask', (4, 8), 2, 4, decay=0.0), SRSTEMask)
    assert isinstance(build_learner('asp', (4, 8), 2, 4), FixedMask)

    class HalfMask(MaskLearner):
        method = 'half_test'

        def forward(self, weight):
            return weight * 0.5
    try:
        register_learner(HalfMask)
        learner = build_learner('HalfMask', (4, 8), 2, 4)
        assert torch.equal(learner(torch.ones(4, 8)), torch.full((4, 8), 0.5))
        twin = type('HalfMask', (MaskLearner,), {'method': 'other_test'})
        with pytest.raises(KeyError, match='already registered'):
            register_learner(twin)
    finally:
        for name in ('HalfMask', 'half_test', 'other_test'):
            LEARNERS.pop(name, None)


def test_mask_all_ones_before_first_refresh():
    """A fresh learner's mask is all ones (the layer computes the dense function)."""
    layer = _sparse_conv()
    assert layer.sparsity.mask.all() and layer.sparsity.needs_init
    x = torch.randn(1, 8, 4, 4)
    dense = F.conv2d(x, layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(layer(x), dense)


# ---------------------------------------------------------------------------------------- ASP

def test_asp_mask_from_loaded_weights_and_zeroed():
    """ASP computes its mask once from the loaded weights and zeroes the pruned ones."""
    layer = _sparse_conv('asp')
    pretrained = torch.randn_like(layer.weight)
    with torch.no_grad():
        layer.weight.copy_(pretrained)
    layer.refresh(0)
    expected = torch.from_numpy(reference_nm_mask(pretrained, 2, 4))
    assert torch.equal(layer.sparsity.mask, expected)
    assert torch.equal(layer.weight.detach(), pretrained * expected)
    assert_nm_pattern(layer.weight, 2, 4)


def test_asp_pruned_weights_stay_zero_under_sgd():
    """Pruned weights stay exactly zero through SGD with momentum and weight decay; mask fixed."""
    layer = _sparse_conv('asp')
    layer.refresh(0)
    mask = layer.sparsity.mask.clone()
    start = layer.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for it in range(1, 6):
        layer.refresh(it)
        opt.zero_grad()
        layer(torch.randn(2, 8, 5, 5)).pow(2).mean().backward()
        opt.step()
    assert torch.equal(layer.sparsity.mask, mask)
    assert (layer.weight.detach()[~mask] == 0).all()
    assert not torch.equal(layer.weight.detach()[mask], start[mask])
    assert_nm_pattern(layer.weight, 2, 4)


def test_asp_refresh_keeps_mask():
    """Once initialized, refresh never changes an ASP mask, even if the weights change."""
    learner = FixedMask((4, 8), 2, 4)
    weight = torch.randn(4, 8)
    learner.refresh(weight, 0)
    mask = learner.mask.clone()
    for it in range(1, 4):
        learner.refresh(torch.randn(4, 8), it)
        assert torch.equal(learner.mask, mask)


def _dense_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))


def _asp_model(seed):
    model = _dense_model(seed)
    for name in ('0', '2'):
        assert sparsify_layer(model, name, 'asp', 2, 4) is None
    return model


def test_asp_loads_dense_state_dict_and_rederives_mask():
    """A dense checkpoint loads strictly (mask not missing); the mask is derived at next refresh."""
    dense = _dense_model(1)
    model = _asp_model(2)
    refresh_masks(model, 0)  # masks of the *old* weights
    result = model.load_state_dict(dense.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert model[0].sparsity.needs_init
    refresh_masks(model, 7)
    for name in ('0', '2'):
        expected = torch.from_numpy(reference_nm_mask(dense.get_submodule(name).weight, 2, 4))
        assert torch.equal(model.get_submodule(name).sparsity.mask, expected)
        assert_nm_pattern(model.get_submodule(name).weight, 2, 4)


def test_asp_loads_sparse_state_dict_keeps_mask():
    """A sparse checkpoint's mask is kept, even when it is not the magnitude mask of the weights."""
    source = _asp_model(3)
    refresh_masks(source, 0)
    with torch.no_grad():  # make the saved mask differ from the magnitude mask of saved weights
        source[0].sparsity.mask.copy_(~source[0].sparsity.mask)
    state = source.state_dict()
    target = _asp_model(4)
    target.load_state_dict(state, strict=True)
    assert not target[0].sparsity.needs_init
    refresh_masks(target, 0)
    assert torch.equal(target[0].sparsity.mask, state['0.sparsity.mask'])
    assert torch.equal(target[2].sparsity.mask, state['2.sparsity.mask'])
    assert torch.equal(target[0].weight, state['0.weight'])


# ------------------------------------------------------------ refreshes follow every change

OPTIMIZERS = {
    'sgd': lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, foreach=False),
    'sgd_foreach': lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, foreach=True),
    'sgd_fused': lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, fused=True),
    'adamw_foreach': lambda p: torch.optim.AdamW(p, lr=0.5, foreach=True),
    'adam_fused': lambda p: torch.optim.Adam(p, lr=0.5, fused=True),
}


def _expected_mask(layer):
    return torch.from_numpy(reference_nm_mask(layer.weight, 2, 4))


@pytest.mark.parametrize('name', list(OPTIMIZERS))
def test_refresh_follows_every_optimizer_step(name):
    """After any optimizer's step (fused ones included) the refreshed mask is the magnitude
    mask of the new weight."""
    layer = _sparse_conv(seed=3)
    opt = OPTIMIZERS[name](layer.parameters())
    layer.refresh(0)
    changed = False
    for it in range(1, 4):
        before = layer.sparsity.mask.clone()
        opt.zero_grad()
        layer(torch.randn(2, 8, 5, 5)).pow(2).mean().backward()
        opt.step()
        layer.refresh(it)
        assert torch.equal(layer.sparsity.mask, _expected_mask(layer))
        changed |= not torch.equal(before, layer.sparsity.mask)
    assert changed  # lr 0.5 moves weights across group ranks: the test sees a change


def test_refresh_follows_loads_and_writes_torch_does_not_record():
    """A loaded checkpoint, a write through ``.data`` and a dtype conversion are all seen by the
    next due refresh."""
    layer = _sparse_conv(seed=4)
    layer.refresh(0)
    other = _sparse_conv(seed=5)
    layer.load_state_dict({k: v for k, v in other.state_dict().items() if 'mask' not in k},
                          strict=False)
    layer.refresh(1)
    assert torch.equal(layer.sparsity.mask, _expected_mask(other))
    layer.weight.data.copy_(torch.randn_like(layer.weight))
    layer.refresh(2)
    assert torch.equal(layer.sparsity.mask, _expected_mask(layer))
    layer.double()
    layer.refresh(3)
    assert torch.equal(layer.sparsity.mask, _expected_mask(layer))


def test_refresh_masks_refreshes_every_layer():
    """refresh_masks gives every layer of a model the magnitude mask of its own weight."""
    model = nn.Sequential(_sparse_conv(seed=9), _sparse_conv(seed=10), _sparse_conv(seed=11))
    refresh_masks(model, 0)
    for layer in model:
        assert torch.equal(layer.sparsity.mask, _expected_mask(layer))


def test_refresh_off_interval_keeps_the_mask():
    """Between due iterations the mask stays what it was, however the weight changed."""
    layer = _sparse_conv(interval=3)
    layer.refresh(0)
    first = layer.sparsity.mask.clone()
    for it in (1, 2):
        with torch.no_grad():
            layer.weight.mul_(torch.rand_like(layer.weight))
        layer.refresh(it)
        assert torch.equal(layer.sparsity.mask, first)
    assert not torch.equal(_expected_mask(layer), first)
    layer.refresh(3)
    assert torch.equal(layer.sparsity.mask, _expected_mask(layer))
