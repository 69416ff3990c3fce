"""The plain-PyTorch R-50 stand-ins of ``spre_mmdet.benchmark.torchvision_r50`` (what the GPU
check trains and benchmarks without mmdet): the sparsifying walker, the training-mode switch,
LBC's schedule, the GEMM shapes at detection size, the padded input and the 2:4 deploy R-50 +
FPN.
"""
import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from spre_mmdet.benchmark.torchvision_r50 import (GEMM_LAYERS, METHODS, R50_SPARSE_LAYERS,
                                                  MethodSpec, detection_input, padded_size,
                                                  r50_gemm_shapes, set_train_mode,
                                                  sparse_resnet50, sparsify_torchvision_resnet)
from spre_mmdet.sparsity import (InterspaceConv2d, SparseConv2d, SpReBatchNorm2d, SpReConv2d,
                                 sparse_layers)


def small_resnet(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet with Bottleneck blocks (layer1 two blocks, one elsewhere, every
    stage with a downsample) at widths 8..32: R-50's structure at a CPU test's cost."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes)
    model.inplanes = 16
    model.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(16)
    model.layer1 = model._make_layer(Bottleneck, 8, 2)
    model.layer2 = model._make_layer(Bottleneck, 16, 1, stride=2)
    model.layer3 = model._make_layer(Bottleneck, 16, 1, stride=2)
    model.layer4 = model._make_layer(Bottleneck, 32, 1, stride=2)
    model.fc = nn.Linear(32 * Bottleneck.expansion, num_classes)
    return model


def _expected_r50_names():
    names = []
    for stage, blocks in zip(('layer1', 'layer2', 'layer3', 'layer4'), (3, 4, 6, 3)):
        for b in range(blocks):
            names += [f'{stage}.{b}.conv{i}' for i in (1, 2, 3)]
            if b == 0:
                names.append(f'{stage}.0.downsample.0')
    return names


# ------------------------------------------------------------------------------------ walker
@pytest.mark.parametrize('structure', ['plain', 'spre', 'interspace'])
def test_walker_makes_every_r50_stage_conv_sparse_and_nothing_else(structure):
    """On torchvision's R-50 the walker makes exactly the 52 layer1-4 convs sparse (stem and fc
    dense), SpRe/interspace on the 3x3 convs only, SpRe paired with the BN after its conv."""
    import torchvision
    model = torchvision.models.resnet50()
    dense = sparsify_torchvision_resnet(
        model, 'srste', 2, 4, spre=dict(rep_gamma=0.5) if structure == 'spre' else None,
        interspace=dict(pruning='nm') if structure == 'interspace' else None)
    assert dense == {}
    layers = dict(sparse_layers(model))
    assert sorted(layers) == sorted(_expected_r50_names())
    assert len(layers) == R50_SPARSE_LAYERS
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    for name, layer in layers.items():
        spatial = name.endswith('conv2')
        if structure == 'spre' and spatial:
            assert isinstance(layer, SpReConv2d)
            block = model.get_submodule(name.rpartition('.')[0])
            assert isinstance(block.bn2, SpReBatchNorm2d) and block.bn2.conv_name == 'conv2'
            assert block.bn2.rep_bn.weight.detach().eq(0.5).all()
        elif structure == 'interspace' and spatial:
            assert isinstance(layer, InterspaceConv2d)
        else:
            assert type(layer) is SparseConv2d
        assert layer.sparsity.method == 'srste'


def test_walker_matches_mmdet_sparse_resnet_layer_for_layer():
    """The torchvision walker gives the same sparse layers (names and types) as the package's
    mmdet SparseResNet-50 does, for SpRe and for interspace."""
    pytest.importorskip('mmdet')
    import torchvision
    from spre_mmdet.models import SparseResNet
    for extra in (dict(spre=dict(rep_gamma=0.0)), dict(interspace=dict(pruning='nm'))):
        ours = torchvision.models.resnet50()
        sparsify_torchvision_resnet(ours, 'srste', 2, 4, **extra)
        theirs = SparseResNet(depth=50, frozen_stages=0, init_cfg=None,
                              sparsity=dict(learner=dict(type='srste'), **extra))
        assert {n: type(m) for n, m in sparse_layers(ours)} == \
            {n: type(m) for n, m in sparse_layers(theirs)}


def test_walker_checks_options_before_changing_anything():
    """A misplaced option is refused by the package's own check, the model left dense."""
    model = small_resnet()
    with pytest.raises(ValueError, match='spre'):
        sparsify_torchvision_resnet(model, 'srste', spre=dict(interval=5))
    assert not list(sparse_layers(model))


def test_set_train_mode_bn_eval_puts_every_bn_on_running_stats():
    """bn_eval: the model trains while every BN (SpRe's branch BN too) uses running stats, so
    SpRe pairs take the fused path; without it they run both branches."""
    spec = MethodSpec('spre', 'srste', spre=True, bn_eval=True)
    model = sparse_resnet50(spec, 3, base=small_resnet())
    set_train_mode(model, True)
    norms = [norm for m in model.modules() if isinstance(m, SpReBatchNorm2d) for norm in (m,)]
    assert model.training and norms and all(n.uses_running_stats for n in norms)
    set_train_mode(model, False)
    assert not any(n.uses_running_stats for n in norms)


def test_lbc_schedule_ends_before_the_last_step():
    """LBC's removal ends at t_f = steps - 1: the final mask is trained for one step."""
    spec = next(s for s in METHODS if s.learner == 'lbc')
    assert spec.learner_kwargs(6) == dict(t_i=0, t_f=5)
    assert MethodSpec('x', 'srste').learner_kwargs(6) == {}



# -------------------------------------------------------------------- benchmark model, shapes
def test_r50_gemm_shapes_at_detection_size():
    """The GEMM shapes come from a real (meta-device) forward of R-50 at 800x1333 padded to
    800x1344: layer4 is 25x42 per image, layer3 50x84."""
    assert padded_size(800, 1333) == (800, 1344)
    rows = {r['name']: r for r in r50_gemm_shapes(800, 1333, 8)}
    assert list(rows) == list(GEMM_LAYERS)
    assert (rows['layer4.1.conv2']['M'], rows['layer4.1.conv2']['N'],
            rows['layer4.1.conv2']['K']) == (8 * 25 * 42, 512, 9 * 512)
    assert rows['layer4.1.conv2']['kind'] == 'conv3x3 (im2col)'
    assert (rows['layer4.0.downsample.0']['M'], rows['layer4.0.downsample.0']['N'],
            rows['layer4.0.downsample.0']['K']) == (8 * 25 * 42, 2048, 1024)
    assert (rows['layer4.1.conv1']['N'], rows['layer4.1.conv1']['K']) == (512, 2048)
    assert (rows['layer4.1.conv3']['N'], rows['layer4.1.conv3']['K']) == (2048, 512)
    assert (rows['layer3.1.conv2']['M'], rows['layer3.1.conv2']['K']) == (8 * 50 * 84, 2304)
    assert r50_gemm_shapes(800, 1333, 1)[0]['M'] == 25 * 42


def test_detection_input_is_padded_like_mmdet():
    """The benchmark batch is zero-padded to a multiple of 32, channels-last."""
    x = detection_input(2, 50, 70, 'cpu', torch.float32)
    assert x.shape == (2, 3, 64, 96) and x.is_contiguous(memory_format=torch.channels_last)
    assert x[:, :, 50:].abs().sum() == 0 and x[:, :, :, 70:].abs().sum() == 0
    assert x[:, :, :50, :70].abs().sum() > 0


@pytest.mark.slow  # builds and folds a full SpRe ResNet-50 on the CPU (~10 s)
def test_r50_fpn_deploy_is_2of4_and_its_gemms_match_on_cpu():
    """The fallback benchmark model: 52 exactly-2:4 backbone convs (the stem and the FPN not),
    and with every one of them as an im2col GEMM the backbone+neck output is unchanged (CPU
    fp32 reference of the path the GPU benchmark times)."""
    from spre_mmdet.benchmark import GemmLayer, check_layers, compare_outputs
    from spre_mmdet.benchmark.torchvision_r50 import r50_fpn_deploy
    model, num_sparse = r50_fpn_deploy()
    assert num_sparse == R50_SPARSE_LAYERS
    checks = check_layers(model, ['backbone'])
    valid = [c.name for c in checks if c.valid and c.in_scope]
    assert len(valid) == R50_SPARSE_LAYERS
    assert not any(c.valid for c in checks if c.name.startswith('neck.'))
    assert not next(c for c in checks if c.name == 'backbone.conv1').candidate
    x = detection_input(1, 64, 64, 'cpu', torch.float32)
    gemms = {name: GemmLayer.from_module(model.get_submodule(name)) for name in valid}
    num = compare_outputs(model, lambda: model(x), gemms, torch.float32)
    assert num['ok'], num
