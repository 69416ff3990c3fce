"""Interspace pruning (docs/methods/interspace.md): InterspaceConv2d, its deploy forms and
checkpoints.

Tolerances: float32 comparisons between mathematically identical computations that sum in a
different order (merged conv vs basis conv + 1x1) use ``atol=1e-5, rtol=1e-4`` on outputs of
magnitude ~1; the pixel-basis layer is compared with ``atol=1e-6`` (it is bit-exact in practice:
multiplying by the identity basis is exact).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import assert_nm_pattern
from spre_mmdet.sparsity import (check_nm_tensor, refresh_masks, reparameterize,
                                 sparse_layer_records, sparsify_layer, sparsity_report)
from spre_mmdet.sparsity import UnstructuredMask, register_srste_decay
from spre_mmdet.sparsity.interspace import (InterspaceConv2d, InterspaceDeployConv2d,
                                            pixel_basis)

CLOSE = dict(atol=1e-5, rtol=1e-4)
EXACT = dict(atol=1e-6, rtol=0)

VARIANTS = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=3, stride=2, padding=0, bias=True),
    dict(kernel_size=(3, 5), padding=(1, 2)),
    dict(kernel_size=5, padding=2, padding_mode='reflect'),
]


def make_conv(c=8, o=12, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault('bias', False)
    kwargs.setdefault('kernel_size', 3)
    return nn.Conv2d(c, o, **kwargs)


def perturb_basis(layer, scale=0.2, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.basis.add_(scale * torch.randn(layer.basis.shape, generator=g))


def train_steps(layer, steps=5, c=8, lr=0.05, seed=2):
    """A few SGD steps with a per-iteration mask refresh, as the training hook does."""
    torch.manual_seed(seed)
    model = nn.Sequential(layer)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for it in range(steps):
        refresh_masks(model, it)
        x = torch.randn(2, c, 11, 11)
        loss = (layer(x) ** 2).mean() + layer(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer


@pytest.mark.parametrize('variant', VARIANTS)
def test_pixel_basis_layer_equals_dense_conv(variant):
    """A freshly converted layer (pixel basis, L = W) computes the dense conv (atol 1e-6)."""
    conv = make_conv(**variant)
    layer = InterspaceConv2d.from_dense(conv, 'srste', 2, 4)
    assert torch.equal(layer.basis, pixel_basis(conv.kernel_size))
    x = torch.randn(2, 8, 13, 13)
    torch.testing.assert_close(layer(x), conv(x), **EXACT)


@pytest.mark.parametrize('variant', VARIANTS[:4])
def test_dense_checkpoint_loads_with_same_function(variant):
    """A dense conv's state dict loads strictly (4-D weight -> L, basis reset to pixel)."""
    conv = make_conv(**variant)
    layer = InterspaceConv2d.from_dense(make_conv(seed=5, **variant), 'srste', 2, 4)
    perturb_basis(layer)
    result = layer.load_state_dict(conv.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(layer.basis, pixel_basis(conv.kernel_size))
    assert layer.weight.shape == (12, 8, layer.basis.shape[0])
    x = torch.randn(2, 8, 13, 13)
    torch.testing.assert_close(layer(x), conv(x), **EXACT)


def test_dense_checkpoint_loads_through_mmengine():
    """mmengine's load_state_dict (the init_cfg Pretrained path) reports nothing missing."""
    from mmengine.runner.checkpoint import load_state_dict
    dense = nn.Sequential(nn.Conv2d(8, 8, 1), make_conv(padding=1))
    model = nn.Sequential(nn.Conv2d(8, 8, 1), make_conv(seed=3, padding=1))
    sparsify_layer(model, '1', 'srste', 2, 4, interspace=dict())
    load_state_dict(model, dense.state_dict(), strict=True)  # raises on missing/unexpected
    x = torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(model(x), dense(x), **EXACT)


def test_interspace_checkpoint_round_trip():
    """A trained layer's state dict (3-D weight, basis, mask) restores the same function."""
    layer = train_steps(InterspaceConv2d.from_dense(make_conv(padding=1), 'srste', 2, 4))
    fresh = InterspaceConv2d.from_dense(make_conv(seed=9, padding=1), 'srste', 2, 4)
    result = fresh.load_state_dict(layer.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert not fresh.sparsity.needs_init
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(fresh(x), layer(x), atol=0, rtol=0)


@pytest.mark.parametrize('method', ['srste', 'asp'])
@pytest.mark.parametrize('variant', VARIANTS)
def test_deploy_forms_match_training_layer(method, variant):
    """After training moves the basis, basis conv + N:M 1x1 and the merged conv equal the
    training-time layer in eval (atol 1e-5, rtol 1e-4)."""
    layer = InterspaceConv2d.from_dense(make_conv(**variant), method, 2, 4)
    train_steps(layer)
    assert not torch.allclose(layer.basis, pixel_basis(layer.kernel_size))
    layer.eval()
    x = torch.randn(2, 8, 13, 13)
    with torch.no_grad():
        expected = layer(x)
        torch.testing.assert_close(layer.to_deploy()(x), expected, **CLOSE)
        torch.testing.assert_close(layer.to_dense_conv()(x), expected, **CLOSE)


@pytest.mark.parametrize('n,m', [(2, 4), (1, 4), (2, 8), (4, 8)])
def test_deploy_gemm_weight_is_nm(n, m):
    """The deploy 1x1 weight (O, k*k*C, 1, 1), basis-index major, is exactly N:M by
    check_nm_tensor and by the tests' independent group walk."""
    layer = InterspaceConv2d.from_dense(make_conv(c=16, padding=1), 'srste', n, m)
    train_steps(layer, c=16)
    refresh_masks(nn.Sequential(layer), 5)
    deploy = layer.to_deploy()
    gemm = deploy.gemm
    assert gemm.weight.shape == (12, 16 * 9, 1, 1)
    check = check_nm_tensor(gemm.weight, n, m)
    assert check.ok, check.explain()
    assert_nm_pattern(gemm.weight, n, m, exact=True)  # the tests' own loop-based check
    # the basis is stored once, (k*k, 1, 1, kh, kw), and is the trained F
    torch.testing.assert_close(deploy.basis_conv.weight.reshape(9, 3, 3), layer.basis,
                               atol=0, rtol=0)
    # b-major: input channel b*C + c of the 1x1 holds L[:, c, b]
    torch.testing.assert_close(gemm.weight[:, 3 * 16 + 5, 0, 0], layer.deploy_weight()[:, 5, 3],
                               atol=0, rtol=0)
    torch.testing.assert_close(deploy.coefficients, layer.deploy_weight(), atol=0, rtol=0)


@pytest.mark.parametrize('variant', VARIANTS)
def test_deploy_shell_of_dense_conv_equals_conv(variant):
    """InterspaceDeployConv2d.from_conv (pixel basis, L = W) computes the conv (atol 1e-5)."""
    conv = make_conv(seed=4, **variant)
    deploy = InterspaceDeployConv2d.from_conv(conv)
    x = torch.randn(2, 8, 13, 13)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), conv(x), **CLOSE)


def test_deploy_state_dict_loads_into_shell_of_same_geometry():
    """A trained layer's deploy state dict loads strictly into the shell built from the dense
    conv's geometry (what a deploy checkpoint + config do) and gives the same output."""
    layer = InterspaceConv2d.from_dense(make_conv(stride=2, padding=1, bias=True), 'srste', 2, 4)
    train_steps(layer)
    layer.eval()
    shell = InterspaceDeployConv2d.from_conv(make_conv(seed=7, stride=2, padding=1, bias=True))
    shell.load_state_dict(layer.to_deploy().state_dict(), strict=True)
    x = torch.randn(2, 8, 11, 11)
    with torch.no_grad():
        torch.testing.assert_close(shell(x), layer(x), **CLOSE)


def test_report_of_deploy_model_names_methods_and_checks_gemm():
    """The deploy model's report from the training model's records: the interspace conv is one
    row checking its 1x1 weight, the plain layers that were sparse keep their method, untouched
    layers are dense."""
    model = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 12, 3, padding=1, bias=False),
                          nn.Conv2d(12, 4, 1, bias=False))
    sparsify_layer(model, '2', 'srste', 2, 4, interspace=dict())
    sparsify_layer(model, '3', 'srste', 2, 4)
    train_steps(model[2])
    refresh_masks(model, 10)
    records = sparse_layer_records(model)
    assert [r.tensor for r in records] == ['2.gemm.weight', '3.weight']
    deployed = reparameterize(model.eval())
    rows = {r.name: r for r in sparsity_report(deployed, records)}
    assert sorted(rows) == ['0', '2', '3']  # no rows for the deploy module's parts
    assert rows['2'].method == 'srste+interspace' and rows['2'].valid
    assert rows['2'].shape == (12, 72, 1, 1) and rows['2'].density == pytest.approx(0.5)
    assert rows['3'].method == 'srste' and rows['3'].valid and '2:4 valid' in rows['3'].status
    assert rows['0'].method == 'dense'
    with torch.no_grad():  # a violated deployed GEMM is reported, not hidden
        deployed[2].gemm.weight.fill_(1.0)
    row = {r.name: r for r in sparsity_report(deployed, records)}['2']
    assert row.method == 'srste+interspace' and not row.valid and 'exceed' in row.status


def test_gradients_match_explicit_reference():
    """Basis and coefficient gradients are non-zero and equal autograd of
    conv(x, einsum('ocb,bhw->ochw', L*mask, F)) (plus SR-STE's straight-through term, and its
    decay once register_srste_decay adds it before the optimizer step)."""
    decay = 1e-2
    layer = InterspaceConv2d.from_dense(make_conv(stride=2, padding=1), 'srste', 2, 4,
                                        decay=decay)
    perturb_basis(layer)
    refresh_masks(nn.Sequential(layer), 0)
    mask = layer.sparsity.mask
    x = torch.randn(2, 8, 10, 10)
    target = torch.randn_like(layer(x))
    (layer(x) * target).sum().backward()
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)
    register_srste_decay(layer, opt)
    opt.step()

    coeff = (layer.weight.detach() * mask).requires_grad_()
    basis = layer.basis.detach().clone().requires_grad_()
    weight = torch.einsum('ocb,bhw->ochw', coeff, basis)
    (F.conv2d(x, weight, None, 2, 1) * target).sum().backward()

    assert layer.basis.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0
    torch.testing.assert_close(layer.basis.grad, basis.grad, **CLOSE)
    expected = coeff.grad + decay * layer.weight.detach() * ~mask  # SR-STE backward
    torch.testing.assert_close(layer.weight.grad, expected, **CLOSE)


def test_gradients_match_finite_differences():
    """With a fixed (ASP) mask, autograd of L and F equals finite differences (float64)."""
    conv = make_conv(c=4, o=3, padding=1).double()
    layer = InterspaceConv2d.from_dense(conv, 'asp', 2, 4)
    refresh_masks(nn.Sequential(layer), 0)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    coeff = layer.weight.detach().clone().requires_grad_()
    basis = (layer.basis.detach() + 0.1 * torch.randn_like(layer.basis)).requires_grad_()

    def fn(coeff, basis):
        return torch.func.functional_call(layer, {'weight': coeff, 'basis': basis}, (x,))

    assert torch.autograd.gradcheck(fn, (coeff, basis))


@pytest.mark.parametrize('pruning', ['nm', 'unstructured'])
def test_pruned_coefficients_do_not_affect_forward(pruning):
    """Perturbing pruned coefficients leaves the output bit-identical."""
    kwargs = dict(interval=1) if pruning == 'unstructured' else {}
    layer = InterspaceConv2d.from_dense(make_conv(padding=1), 'srste', 2, 4, pruning, **kwargs)
    perturb_basis(layer)
    refresh_masks(nn.Sequential(layer), 0)
    x = torch.randn(2, 8, 9, 9)
    before = layer(x).detach()
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight) * ~layer.sparsity.mask)
    assert torch.equal(layer(x), before)


@pytest.mark.parametrize('density', [0.1, 0.3, 0.5])
@pytest.mark.parametrize('method', ['asp', 'srste'])
def test_unstructured_density(method, density):
    """Unstructured coefficient pruning keeps exactly round(density * numel) coefficients."""
    layer = InterspaceConv2d.from_dense(make_conv(padding=1), method, 2, 4, 'unstructured',
                                        density=density)
    assert isinstance(layer.sparsity, UnstructuredMask)
    refresh_masks(nn.Sequential(layer), 0)
    numel = layer.weight.numel()
    assert int((layer.deploy_weight() != 0).sum()) == round(density * numel)
    assert int(layer.sparsity.mask.sum()) == round(density * numel)
    if method == 'asp':  # one-shot: pruned latent coefficients are zeroed, mask then fixed
        assert torch.equal(layer.weight != 0, layer.sparsity.mask)


def test_unstructured_is_reported_not_nm():
    """The report flags unstructured interspace layers as not N:M (not hardware-valid)."""
    model = nn.Sequential(InterspaceConv2d.from_dense(make_conv(padding=1), 'asp', 2, 4,
                                                      'unstructured', density=0.3))
    refresh_masks(model, 0)
    (row,) = sparsity_report(model)
    assert row.method == 'unstructured+interspace' and row.valid is None
    assert 'not N:M by design' in row.status
    assert row.density == pytest.approx(0.3, abs=1e-3)


def test_refresh_report_and_reparameterize_integrate():
    """refresh_masks, sparsity_report and reparameterize handle interspace layers unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 12, 3, padding=1, bias=False))
    assert sparsify_layer(model, '0', 'srste', 2, 4, interspace=dict()) is not None  # 1x1
    assert sparsify_layer(model, '2', 'srste', 2, 4, interspace=dict()) is None
    train_steps(model[2])
    refresh_masks(model, 10)
    rows = {r.name: r for r in sparsity_report(model)}
    assert rows['2'].valid and rows['2'].shape == (12, 8, 9)
    assert rows['2'].density == pytest.approx(0.5)
    model.eval()
    deployed = reparameterize(model)
    assert not any(isinstance(mod, InterspaceConv2d) for mod in deployed.modules())
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), **CLOSE)


def test_merged_deploy_form_gives_stock_architecture():
    """reparameterize(interspace_form='merged') keeps module names: the result loads into the
    original dense model and computes the same function; its record says not N:M."""
    dense = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1))
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1))
    sparsify_layer(model, '2', 'srste', 2, 4, interspace=dict())
    train_steps(model[2])
    merged = reparameterize(model, interspace_form='merged')
    assert isinstance(model[2], InterspaceConv2d)  # not in place by default
    dense.load_state_dict(merged.state_dict(), strict=True)
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), **CLOSE)
    (record,) = sparse_layer_records(model, 'merged')
    assert record.tensor == '2.weight' and not record.nm and 'merged' in record.note


def test_incompatible_convs_are_skipped_with_reason():
    """1x1, grouped and C % M != 0 convs are not converted, and the reason is returned."""
    parent = nn.Module()
    parent.a = nn.Conv2d(8, 8, 1)
    parent.b = nn.Conv2d(8, 8, 3, groups=2)
    parent.c = nn.Conv2d(3, 8, 3)
    assert '1x1' in sparsify_layer(parent, 'a', 'srste', 2, 4, interspace=dict())
    assert 'grouped' in sparsify_layer(parent, 'b', 'srste', 2, 4, interspace=dict())
    assert 'not divisible' in sparsify_layer(parent, 'c', 'srste', 2, 4, interspace=dict())
    assert sparsify_layer(parent, 'c', 'asp', 2, 4,
                          interspace=dict(pruning='unstructured')) is None
    assert all(type(getattr(parent, k)) is nn.Conv2d for k in 'ab')
    with pytest.raises(ValueError, match='pruning'):
        InterspaceConv2d.from_dense(nn.Conv2d(8, 8, 3), 'srste', 2, 4, pruning='blocks')
    with pytest.raises(ValueError, match='unstructured'):
        InterspaceConv2d.from_dense(nn.Conv2d(8, 8, 3), 'lbc', 2, 4, pruning='unstructured')


def test_nm_mask_invariant_to_basis_rescaling():
    """Rescaling F[b] by s and L[:, :, b] by 1/s keeps both the function and the N:M mask."""
    layer = InterspaceConv2d.from_dense(make_conv(padding=1), 'srste', 2, 4)
    perturb_basis(layer)
    model = nn.Sequential(layer)
    refresh_masks(model, 0)
    mask, x = layer.sparsity.mask.clone(), torch.randn(1, 8, 7, 7)
    before = layer(x).detach()
    scale = torch.linspace(0.1, 10.0, 9)
    with torch.no_grad():
        layer.basis.mul_(scale.view(9, 1, 1))
        layer.weight.div_(scale)
    refresh_masks(model, 1)
    assert torch.equal(layer.sparsity.mask, mask)
    torch.testing.assert_close(layer(x), before, **CLOSE)


def test_deploy_flops():
    """Deploy cost: basis conv k*k*C*k*k MACs per pixel vs the GEMM's O*C*k*k (N/M if sparse)."""
    layer = InterspaceConv2d.from_dense(nn.Conv2d(64, 64, 3, padding=1), 'srste', 2, 4)
    flops = layer.deploy_flops((10, 10))
    assert flops['dense_conv'] == flops['gemm'] == 100 * 64 * 64 * 9
    assert flops['basis_conv'] == 100 * 64 * 81
    assert flops['sparse_gemm'] == flops['gemm'] // 2


def test_lbc_learner_on_coefficients():
    """The LBC learner builds on L's (O, C, k*k) shape; basis and scores get gradients."""
    layer = InterspaceConv2d.from_dense(make_conv(padding=1), 'lbc', 2, 4)
    refresh_masks(nn.Sequential(layer), 0)
    x = torch.randn(1, 8, 7, 7)
    layer(x).sum().backward()
    assert layer.sparsity.scores.shape[0] == 12 * 9 * 8 // 4  # one row per N:M group of L
    for grad in (layer.basis.grad, layer.weight.grad, layer.sparsity.scores.grad):
        assert grad is not None and grad.abs().sum() > 0
