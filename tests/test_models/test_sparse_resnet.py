"""SparseResNet: mmdet's ResNet made N:M sparse from config alone."""
import pytest
import torch
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS

from spre_mmdet.errors import ConfigError

from spre_mmdet.sparsity import (InterspaceConv2d, InterspaceDeployConv2d, SparseConv2d,
                                 SpReBatchNorm2d, SpReConv2d, check_nm_tensor, nm_mask,
                                 refresh_masks, reparameterize, sparse_layers)


def build(**kwargs):
    return MODELS.build(dict(type='SparseResNet', **kwargs))


def test_dense_checkpoint_loads_unchanged_and_masks_come_from_it():
    """A dense ResNet state dict loads strictly (same keys); masks are derived from it."""
    dense = ResNet(depth=18)
    state = dense.state_dict()
    sparse = build(depth=18, sparsity=dict(learner=dict(type='asp')))
    result = sparse.load_state_dict(state, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == []
    refresh_masks(sparse, 0)
    for name, layer in sparse_layers(sparse):
        assert torch.equal(layer.sparsity.mask, nm_mask(state[name + '.weight'], 2, 4)), name


def test_spre_adds_branch_to_kxk_convs_only_and_reports_new_params_missing():
    """SpRe pairs every 3x3 conv with its BN; 1x1/downsample convs are plain sparse; a dense
    checkpoint reports only the new branch parameters as missing."""
    model = build(depth=50, sparsity=dict(spre=dict(rep_gamma=0.0)))
    for name, module in model.named_modules():
        if isinstance(module, SpReConv2d):
            assert module.kernel_size == (3, 3)
        elif isinstance(module, SparseConv2d):
            assert module.kernel_size == (1, 1)
    block = model.layer1[0]
    assert isinstance(block.conv2, SpReConv2d) and isinstance(block.bn2, SpReBatchNorm2d)
    missing = model.load_state_dict(ResNet(depth=50).state_dict(), strict=False).missing_keys
    assert missing and all(k.endswith('weight_rep') or '.rep_bn.' in k for k in missing)


def test_frozen_stage_gets_no_spre_branch_and_is_logged(monkeypatch):
    """A frozen stage keeps plain N:M convs (no SpRe branch) and says so in the log."""
    import spre_mmdet.models.sparse_resnet as module
    messages = []
    monkeypatch.setattr(module, 'print_log', lambda msg, **kwargs: messages.append(msg))
    model = build(depth=18, frozen_stages=1, sparsity=dict(spre=dict()))
    assert not any(isinstance(m, SpReConv2d) for m in model.layer1.modules())
    assert any(isinstance(m, SpReConv2d) for m in model.layer2.modules())
    assert any('layer1 is frozen' in m and 'frozen_stages=0' in m for m in messages)


def test_resnet_v1d_and_interspace_and_stages_option():
    """ResNet-V1d (deep stem, avg-pool downsample), interspace k x k convs and per-stage
    selection build, run and re-parameterize to exactly 2:4."""
    model = build(depth=18, deep_stem=True, avg_down=True, norm_eval=False,
                  sparsity=dict(interspace=dict(pruning='nm'),
                                stages=(False, True, True, True)))
    model.init_weights()
    assert not any(True for _ in sparse_layers(model.layer1))
    assert isinstance(model.layer2[0].conv1, InterspaceConv2d)
    assert isinstance(model.layer2[0].downsample[1], SparseConv2d)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    deployed = reparameterize(model)
    for a, b in zip(model(x), deployed(x)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('pruning', ['nm', 'unstructured'])
def test_deploy_structure_takes_the_interspace_basis_form(pruning):
    """sparsity.deploy=True builds exactly the structure reparameterize gives (interspace convs
    as InterspaceDeployConv2d in the same places, everything else plain): the deploy state dict
    loads strictly and the output equals the training-time backbone (rtol 1e-4, atol 1e-5)."""
    learner = dict(type='srste' if pruning == 'nm' else 'asp')
    sparsity = dict(interspace=dict(pruning=pruning), stages=(False, True, True, True),
                    learner=learner)
    model = build(depth=18, frozen_stages=2, sparsity=sparsity)
    model.init_weights()
    with torch.no_grad():  # a trained basis, not the pixel basis
        for layer in model.modules():
            if isinstance(layer, InterspaceConv2d):
                layer.basis.add_(0.1 * torch.randn_like(layer.basis))
    model.eval()
    deployed = reparameterize(model)
    shell = build(depth=18, frozen_stages=2, sparsity=dict(sparsity, deploy=True))
    shell.eval()  # mmdet's ResNet.train returns None
    assert not any(True for _ in sparse_layers(shell))
    kinds = {name: type(module).__name__ for name, module in deployed.named_modules()}
    assert kinds == {name: type(module).__name__ for name, module in shell.named_modules()}
    assert sum(k == 'InterspaceDeployConv2d' for k in kinds.values()) == 12  # layer2-4 3x3s
    shell.load_state_dict(deployed.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), shell(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    if pruning == 'nm':
        for module in shell.modules():
            if isinstance(module, InterspaceDeployConv2d):
                assert check_nm_tensor(module.gemm.weight, 2, 4).ok


def test_deploy_structure_without_interspace_is_the_stock_resnet():
    """Without interspace, sparsity.deploy=True has the stock ResNet's modules and keys."""
    shell = build(depth=18, sparsity=dict(spre=dict(), deploy=True))
    stock = ResNet(depth=18)
    assert shell.state_dict().keys() == stock.state_dict().keys()
    assert not any(isinstance(m, (InterspaceDeployConv2d, SparseConv2d, SpReBatchNorm2d))
                   for m in shell.modules())


@pytest.mark.parametrize('sparsity, message', [
    (dict(n=4, m=4), '1 <= N < M'),
    (dict(n=0, m=4), '1 <= N < M'),
    (dict(nm='2:4'), 'Unknown sparsity options'),
    (dict(spre=dict(), interspace=dict()), 'set one of them to None'),
    (dict(learner=dict(type='magic')), 'Unknown mask learner'),
    (dict(stages=(True,)), '4 entries'),
    # each sub-dict is checked against its own options, and the section is named
    (dict(spre=dict(interval=50)), r"Unknown spre option\(s\) \['interval'\]"),
    (dict(spre=dict(spatial_interval=0)), 'spatial_interval must be a whole number >= 1'),
    (dict(learner=dict(type='srste', rep_gamma=1.0)),
     r"Unknown learner \('srste'\) option\(s\) \['rep_gamma'\]"),
    (dict(learner=dict(type='srste', interval=0)), 'interval must be a whole number >= 1'),
    (dict(learner=dict(type='lbc', t_f=100, span=(0, 0.5))), 'not both'),
    (dict(learner=dict(type='lbc', span=(0.5, 0.2))), '0 <= begin < end <= 1'),
    (dict(interspace=dict(density=0.5)), r"Unknown interspace \(pruning='nm'\) option"),
    (dict(interspace=dict(pruning='magic')), 'Unknown interspace pruning'),
])
def test_bad_sparsity_config_is_refused_with_the_fix(sparsity, message):
    """Invalid N:M and options raise ConfigError (a ValueError) naming the fix."""
    with pytest.raises(ConfigError, match=message):
        build(depth=18, sparsity=sparsity)


def test_dcn_is_refused():
    """Deformable convs cannot be N:M: a clear error instead of a silent dense layer."""
    with pytest.raises(ValueError, match='dcn'):
        build(depth=50, dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
              stage_with_dcn=(False, True, True, True))


def test_m_that_divides_no_layer_is_refused():
    """An M that divides the input channels of no selected layer is an error, not a dense run."""
    with pytest.raises(ValueError, match='M=3 divides the input channels of no'):
        build(depth=18, sparsity=dict(n=1, m=3))


def test_interspace_with_lbc_learner_finishes_and_deploys_exactly_nm():
    """Interspace + LBC on the coefficients: after t_f every mask is final, the deployed 1x1
    weights are exactly 2:4 and the deploy backbone equals the trained one (atol 1e-5)."""
    torch.manual_seed(0)
    model = build(depth=18, base_channels=16,  # a narrow R-18: LBC is costly on CPU
                  sparsity=dict(interspace=dict(pruning='nm'),
                                learner=dict(type='lbc', t_i=0, t_f=4)))
    model.init_weights()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for iteration in range(6):
        refresh_masks(model, iteration)
        loss = sum(out.square().mean() for out in model(torch.randn(2, 3, 32, 32)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    layers = dict(sparse_layers(model))
    assert sum(isinstance(layer, InterspaceConv2d) for layer in layers.values()) == 16
    assert all(layer.sparsity.is_final for layer in layers.values())
    model.eval()
    deployed = reparameterize(model)
    for module in deployed.modules():
        if isinstance(module, InterspaceDeployConv2d):
            assert check_nm_tensor(module.gemm.weight, 2, 4).ok
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(model(x), deployed(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
