"""Model conversion: sparsify in place, drive masks, report, re-parameterize.

See docs/methods/srste_asp.md (N:M layout), docs/methods/spre.md (re-parameterization) and
docs/configs.md (where N:M applies)."""
import io

import pytest
import torch
from torch import nn

from helpers import assert_nm_pattern, reference_nm_mask, reference_spatial_mask
from spre_mmdet.errors import ExportError
from spre_mmdet.sparsity import (NotFinalError, SparseConv2d, SparseLinear, SpReConv2d,
                                 SRSTEMask, format_report, initialize_masks, refresh_masks,
                                 reparameterize, sparse_layer_records, sparse_layers, sparsify_layer,
                                 sparsity_report)


class Net(nn.Module):
    """A tiny detector-like backbone: 3-channel stem, 3x3 conv+BN, 1x1 conv, grouped conv, FC."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        x = self.dw(torch.relu(self.conv1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _net(seed):
    torch.manual_seed(seed)
    return Net()


def _sparsify(net, method='srste', rep_gamma=0.5):
    reasons = {
        'stem': sparsify_layer(net, 'stem', method, 2, 4),
        'conv3': sparsify_layer(net, 'conv3', method, 2, 4, norm_name='bn3', rep_gamma=rep_gamma),
        'conv1': sparsify_layer(net, 'conv1', method, 2, 4),
        'dw': sparsify_layer(net, 'dw', method, 2, 4),
        'fc': sparsify_layer(net, 'fc', method, 2, 4),
    }
    return reasons


def _train(net, steps=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    for it in range(steps):
        refresh_masks(net, it)
        opt.zero_grad()
        net(torch.randn(4, 3, 8, 8, generator=gen)).pow(2).mean().backward()
        opt.step()


def test_sparsify_layer_keeps_parameters_and_keys():
    """sparsify_layer swaps in place, keeping the Parameter objects (an optimizer built before
    still updates them) and the dense state-dict keys (plus the derived mask)."""
    net = _net(0)
    dense_keys = set(net.state_dict())
    conv_w, fc_w, fc_b = net.conv1.weight, net.fc.weight, net.fc.bias
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    assert sparsify_layer(net, 'conv1', 'srste', 2, 4) is None
    assert sparsify_layer(net, 'fc', 'asp', 2, 4) is None
    assert isinstance(net.conv1, SparseConv2d) and isinstance(net.fc, SparseLinear)
    assert net.conv1.weight is conv_w and net.fc.weight is fc_w and net.fc.bias is fc_b
    assert set(net.state_dict()) == dense_keys | {'conv1.sparsity.mask', 'fc.sparsity.mask'}
    refresh_masks(net, 0)
    before = conv_w.detach().clone()
    opt.zero_grad()
    net(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    assert not torch.equal(conv_w.detach(), before)


def test_incompatible_layers_stay_dense_with_reason():
    """C % M != 0 (stem) and grouped convs stay plain nn.Conv2d and return why."""
    net = _net(0)
    reasons = _sparsify(net)
    assert '3 input channels' in reasons['stem'] and type(net.stem) is nn.Conv2d
    assert 'groups=4' in reasons['dw'] and type(net.dw) is nn.Conv2d
    assert reasons['conv3'] is None and reasons['conv1'] is None and reasons['fc'] is None
    assert {name for name, _ in sparse_layers(net)} == {'conv3', 'conv1', 'fc'}


def test_sparsify_layer_argument_errors():
    """Non conv/linear layers raise TypeError; invalid N:M raises ValueError."""
    net = _net(0)
    with pytest.raises(TypeError):
        sparsify_layer(net, 'bn3', 'srste', 2, 4)
    with pytest.raises(ValueError, match='n=2, m=4'):
        sparsify_layer(net, 'conv1', 'srste', 4, 4)
    with pytest.raises(TypeError, match='BatchNorm2d'):
        sparsify_layer(net, 'conv3', 'srste', 2, 4, norm_name='conv1')


def test_reparameterize_refuses_dense_model():
    """reparameterize on a model without sparse layers raises ExportError naming the fix."""
    with pytest.raises(ExportError, match='sparse config'):
        reparameterize(_net(0))


def test_reparameterize_gives_plain_torch_model_with_same_outputs():
    """The deploy model holds only torch.nn modules, N:M weights, and the same eval outputs."""
    net = _net(1)
    _sparsify(net)
    _train(net)
    net.eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = net(x)
        deployed = reparameterize(net)
        got = deployed(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for name, module in deployed.named_modules():
        if module is deployed:
            continue
        assert type(module).__module__.startswith('torch.nn'), (name, type(module))
        assert 'spre_mmdet' not in type(module).__module__
    for name in ('conv3', 'conv1', 'fc'):
        assert_nm_pattern(deployed.get_submodule(name).weight, 2, 4)
    assert isinstance(net.conv3, SpReConv2d), 'inplace=False must leave the model untouched'


def test_reparameterize_names_the_not_final_layer():
    """NotFinalError names the layer (and its method) that is not exactly N:M yet."""

    class Unfinished(SRSTEMask):
        method = 'unfinished'

        @property
        def is_final(self):
            return False

    net = _net(0)
    _sparsify(net)
    net.fc.sparsity = Unfinished(net.fc.weight.shape, 2, 4)
    with pytest.raises(NotFinalError) as info:
        reparameterize(net)
    assert 'fc' in str(info.value) and 'unfinished' in str(info.value)


def test_sparsity_report_rows():
    """Every conv/linear is listed once; sparse layers carry their record (method, own N:M) and
    are valid, dense ones say why not."""
    net = _net(2)
    _sparsify(net)
    refresh_masks(net, 0)
    rows = {row.name: row for row in sparsity_report(net)}
    expected = {name for name, mod in net.named_modules()
                if isinstance(mod, (nn.Conv2d, nn.Linear))}
    assert set(rows) == expected == {'stem', 'conv3', 'conv1', 'dw', 'fc'}
    assert rows['stem'].method == 'dense' and rows['stem'].valid is None
    assert '3 input channels are not divisible by M=4' in rows['stem'].status
    assert rows['dw'].method == 'dense' and rows['dw'].valid is None
    assert rows['dw'].status.startswith('dense (not selected)')
    assert rows['conv3'].method == 'srste+spre' and rows['conv1'].method == 'srste'
    for name in ('conv3', 'conv1', 'fc'):
        assert rows[name].valid and 'valid' in rows[name].status
        assert rows[name].pattern == '2:4' and rows[name].density <= 0.5
        assert rows[name].shape == tuple(net.get_submodule(name).weight.shape)
    assert rows['stem'].density == 1.0
    text = format_report(list(rows.values()))
    assert all(name in text for name in rows)


def test_each_layer_reports_its_own_pattern():
    """Layers of different N:M in one model are each checked against their own pattern."""
    net = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.Conv2d(8, 8, 1, bias=False))
    sparsify_layer(net, '0', 'srste', 2, 4)
    sparsify_layer(net, '1', 'srste', 1, 8)
    refresh_masks(net, 0)
    rows = {row.name: row for row in sparsity_report(net)}
    assert (rows['0'].pattern, rows['1'].pattern) == ('2:4', '1:8')
    assert rows['0'].valid and rows['1'].valid
    assert rows['1'].density == pytest.approx(1 / 8)
    records = {r.name: r for r in sparse_layer_records(net)}
    assert (records['1'].n, records['1'].m, records['1'].tensor) == (1, 8, '1.weight')
    deployed = reparameterize(net.eval())
    deploy_rows = {row.name: row for row in sparsity_report(deployed, list(records.values()))}
    assert deploy_rows['1'].pattern == '1:8' and deploy_rows['1'].valid


def test_refresh_masks_recomputes_stale_masks():
    """After the latent weights move, refresh_masks recomputes B (and S) from them."""
    net = _net(3)
    _sparsify(net)
    refresh_masks(net, 0)
    with torch.no_grad():
        for _, layer in sparse_layers(net):
            layer.weight.copy_(torch.randn_like(layer.weight))
    stale = [name for name, layer in sparse_layers(net) if not torch.equal(
        layer.sparsity.mask, torch.from_numpy(reference_nm_mask(layer.weight, 2, 4)))]
    assert stale, 'weights moved but no mask went stale: test is vacuous'
    refresh_masks(net, 1)
    for name, layer in sparse_layers(net):
        assert torch.equal(layer.sparsity.mask,
                           torch.from_numpy(reference_nm_mask(layer.weight, 2, 4))), name
    assert torch.equal(net.conv3.spatial.double(), torch.from_numpy(
        reference_spatial_mask(net.conv3.weight, 2, 4)))


def test_initialize_masks_rederives_fixed_masks():
    """initialize_masks recomputes even ASP masks from the current weights."""
    net = _net(4)
    _sparsify(net, method='asp')
    refresh_masks(net, 0)
    with torch.no_grad():
        net.conv1.weight.copy_(torch.randn_like(net.conv1.weight))
    fresh = net.conv1.weight.detach().clone()
    initialize_masks(net)
    assert torch.equal(net.conv1.sparsity.mask,
                       torch.from_numpy(reference_nm_mask(fresh, 2, 4)))


@pytest.mark.parametrize('method', ['srste', 'asp'])
def test_state_dict_round_trip(method):
    """A trained sparse model saved and loaded into a fresh one: same outputs, masks, S."""
    net = _net(5)
    _sparsify(net, method)
    _train(net)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = _net(6)
    _sparsify(fresh, method)
    fresh.load_state_dict(torch.load(buffer), strict=True)
    for (name, a), (_, b) in zip(sparse_layers(net), sparse_layers(fresh)):
        assert torch.equal(a.sparsity.mask, b.sparsity.mask), name
        assert not b.sparsity.needs_init, name
    assert torch.equal(net.conv3.spatial, fresh.conv3.spatial)
    assert not fresh.conv3.needs_init
    net.eval(), fresh.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)
        refresh_masks(fresh, 4)  # the next iteration keeps the state consistent
        refresh_masks(net, 4)
        torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize('structure', ['plain', 'spre', 'interspace'])
def test_sparsify_residual_block_builds_each_structure_and_names_what_stays_dense(structure):
    """A ResNet block's k x k conv becomes the chosen structure (SpRe pairs with its BN), 1x1
    and downsample convs become plain sparse convs, and a conv N:M cannot cover stays dense,
    reported under the block's prefix."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from spre_mmdet.sparsity import (InterspaceConv2d, SparseConv2d, SpReBatchNorm2d, SpReConv2d,
                                     sparsify_residual_block)
    options = dict(spre=dict(rep_gamma=0.5) if structure == 'spre' else None,
                   interspace=dict(pruning='nm') if structure == 'interspace' else None)
    block = Bottleneck(64, 16, downsample=nn.Sequential(nn.Conv2d(64, 64, 1, bias=False),
                                                       nn.BatchNorm2d(64)))
    pairs = [('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3')]
    assert sparsify_residual_block(block, pairs, 'srste', 2, 4, prefix='layer1.0',
                                   **options) == {}
    expected = dict(plain=SparseConv2d, spre=SpReConv2d, interspace=InterspaceConv2d)[structure]
    assert type(block.conv2) is expected
    assert (type(block.bn2) is SpReBatchNorm2d) == (structure == 'spre')
    assert type(block.conv1) is type(block.conv3) is type(block.downsample[0]) is SparseConv2d
    stem_like = BasicBlock(3, 8, downsample=nn.Sequential(nn.Conv2d(3, 8, 1, bias=False),
                                                         nn.BatchNorm2d(8)))
    dense = sparsify_residual_block(stem_like, [('conv1', 'bn1'), ('conv2', 'bn2')], 'srste', 2,
                                    4, prefix='layer0.1', **options)
    assert set(dense) == {'layer0.1.conv1', 'layer0.1.downsample.0'}
    assert type(stem_like.conv1) is nn.Conv2d and type(stem_like.downsample[0]) is nn.Conv2d
    assert type(stem_like.conv2) is expected


def test_sparsify_residual_block_refuses_a_downsample_conv_it_cannot_convert():
    """A downsample conv that is not a plain nn.Conv2d (here a subclass) is refused with the
    layer named, not left dense without a word; pooling and norm there are skipped."""
    from torchvision.models.resnet import Bottleneck
    from spre_mmdet.sparsity import sparsify_residual_block

    class WeightStandardizedConv2d(nn.Conv2d):
        pass

    pooled = Bottleneck(64, 16, downsample=nn.Sequential(
        nn.AvgPool2d(2), nn.Conv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64)))
    pairs = [('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3')]
    assert sparsify_residual_block(pooled, pairs, 'srste', 2, 4) == {}
    assert type(pooled.downsample[1]) is SparseConv2d
    odd = Bottleneck(64, 16, downsample=nn.Sequential(
        WeightStandardizedConv2d(64, 64, 1, bias=False), nn.BatchNorm2d(64)))
    with pytest.raises(TypeError, match='WeightStandardizedConv2d'):
        sparsify_residual_block(odd, pairs, 'srste', 2, 4)
