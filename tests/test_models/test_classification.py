"""The ImageNet stage: NMResNet / NMResNet_CIFAR in mmpretrain's registry, and the hand-off of a
sparse checkpoint to the detection backbone (SparsePretrained)."""
import pytest
import torch
from mmengine.model import initialize
from mmengine.registry import MODELS, WEIGHT_INITIALIZERS

import spre_mmdet.classification  # noqa: F401  (registers NMResNet into mmpretrain)
from spre_mmdet.models import SparsePretrainedInit
from spre_mmdet.errors import CheckpointError, CheckpointMismatchError
from spre_mmdet.sparsity import SpReBatchNorm2d, check_nm_tensor, sparse_layers, spre_pairs


def classifier(backbone, num_classes=10):
    with MODELS.switch_scope_and_registry('mmpretrain') as registry:
        model = registry.build(dict(
            type='ImageClassifier', backbone=backbone, neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=num_classes,
                      in_channels=512 * (4 if backbone['depth'] >= 50 else 1) //
                      (4 if backbone['type'] == 'NMResNet_CIFAR' else 1))))
    model.init_weights()
    return model


def detection_backbone(**kwargs):
    with MODELS.switch_scope_and_registry('mmdet') as registry:
        return registry.build(dict(type='SparseResNet', depth=18, **kwargs))


def test_nmresnet_has_the_mmdet_backbone_keys_and_sparse_layers():
    """NMResNet-18 (mmpretrain) and SparseResNet-18 (mmdet) have the same state-dict keys, so a
    classification checkpoint fits the detection backbone; 19 layers are 2:4."""
    sparsity = dict(n=2, m=4, spre=dict(rep_gamma=1.0))
    cls = classifier(dict(type='NMResNet', depth=18, sparsity=sparsity))
    det = detection_backbone(sparsity=sparsity)
    assert {k[len('backbone.'):] for k in cls.state_dict() if k.startswith('backbone.')} == \
        set(det.state_dict())
    assert len(list(sparse_layers(cls))) == 19
    for _, layer in sparse_layers(cls):
        assert check_nm_tensor(layer.weight * layer.sparsity.mask, 2, 4).ok


def test_resnet10_cifar_and_an_explicitly_dense_network():
    """Depth 10 is one BasicBlock per stage; stages all False gives a dense network."""
    dense = classifier(dict(type='NMResNet_CIFAR', depth=10, base_channels=16,
                            stem_channels=16, sparsity=dict(stages=(False,) * 4)))
    assert not list(sparse_layers(dense))
    assert [len(getattr(dense.backbone, f'layer{i}')) for i in range(1, 5)] == [1, 1, 1, 1]
    sparse = classifier(dict(type='NMResNet_CIFAR', depth=10, base_channels=16,
                             stem_channels=16, sparsity=dict(n=1, m=16)))
    assert len(list(sparse_layers(sparse))) == 11  # 8 block convs + 3 downsamples; stem dense
    out = sparse(torch.rand(2, 3, 32, 32), mode='tensor')
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_branch_starts_off_exactly_where_zero_init_residual_starts_the_main_branch_off():
    """From scratch with zero_init_residual, rep_bn's gamma is 0 in the blocks' last BN (main
    gamma 0) and rep_gamma elsewhere: no head start for SpRe over plain N:M."""
    model = classifier(dict(type='NMResNet', depth=18, zero_init_residual=True,
                            sparsity=dict(spre=dict(rep_gamma=1.0))))
    pairs = list(spre_pairs(model))
    assert pairs
    for name, _, norm in pairs:
        assert isinstance(norm, SpReBatchNorm2d)
        last = name.endswith('conv2')  # BasicBlock: conv2 closes the residual branch
        assert bool((norm.weight == 0).all()) == last, name
        expected = torch.zeros_like(norm.weight) if last else torch.ones_like(norm.weight)
        assert torch.equal(norm.rep_bn.weight.detach(), expected), name


@pytest.fixture(scope='module')
def stage1(tmp_path_factory):
    """A SpRe 2:4 ResNet-18 classification checkpoint whose state moved off its init."""
    torch.manual_seed(0)
    model = classifier(dict(type='NMResNet', depth=18,
                            sparsity=dict(n=2, m=4, spre=dict(rep_gamma=1.0))))
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(0.05 * torch.randn_like(param))
        for _, conv, norm in spre_pairs(model):
            norm.rep_bn.running_mean.uniform_(-0.5, 0.5)
    from spre_mmdet.sparsity import refresh_masks
    refresh_masks(model, 1)
    path = tmp_path_factory.mktemp('stage1') / 'epoch_1.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return model, path


def test_sparse_pretrained_loads_masks_s_branch_and_both_bns(stage1):
    """SparsePretrained gives the detection backbone exactly the stage-1 backbone state:
    weights, masks, S, W_rep, both BNs (nothing re-initialized)."""
    model, path = stage1
    det = detection_backbone(sparsity=dict(n=2, m=4, spre=dict()), init_cfg=dict(
        type='SparsePretrained', checkpoint=str(path), prefix='backbone.'))
    det.init_weights()
    source = {k[len('backbone.'):]: v for k, v in model.state_dict().items()
              if k.startswith('backbone.')}
    for key, value in det.state_dict().items():
        assert torch.equal(value, source[key]), key


def test_sparse_pretrained_is_a_registered_weight_initializer(stage1):
    """'SparsePretrained' is built from mmengine's WEIGHT_INITIALIZERS and loads like any
    initializer through mmengine's ``initialize``."""
    model, path = stage1
    init = WEIGHT_INITIALIZERS.build(dict(type='SparsePretrained', checkpoint=str(path)))
    assert isinstance(init, SparsePretrainedInit) and init.prefix == 'backbone.'
    det = detection_backbone(sparsity=dict(n=2, m=4, spre=dict()))
    initialize(det, dict(type='SparsePretrained', checkpoint=str(path), prefix='backbone.'))
    for key, value in det.state_dict().items():
        assert torch.equal(value, model.state_dict()['backbone.' + key]), key


def test_sparse_pretrained_classification_backbone_keeps_the_loaded_bns(stage1):
    """An mmpretrain NMResNet (zero_init_residual=True by default) given SparsePretrained keeps
    the loaded last BN of each block, as mmpretrain does for Pretrained."""
    model, path = stage1
    loaded = classifier(dict(type='NMResNet', depth=18, zero_init_residual=True,
                             sparsity=dict(n=2, m=4, spre=dict(rep_gamma=1.0)),
                             init_cfg=dict(type='SparsePretrained', checkpoint=str(path),
                                           prefix='backbone.')))
    assert loaded.backbone.zero_init_residual
    source = model.state_dict()
    assert not torch.equal(source['backbone.layer1.0.bn2.weight'],
                           torch.zeros_like(source['backbone.layer1.0.bn2.weight']))
    for key, value in loaded.backbone.state_dict().items():
        assert torch.equal(value, source['backbone.' + key]), key


@pytest.mark.parametrize('sparsity, error, phrase', [
    (dict(n=2, m=4), CheckpointMismatchError, "the checkpoint has SpRe's extra branch"),
    (dict(n=1, m=8, spre=dict()), CheckpointMismatchError, 'another N:M pattern'),
])
def test_sparse_pretrained_refuses_a_checkpoint_of_another_config(stage1, sparsity, error,
                                                                   phrase):
    """A SpRe checkpoint into an SR-STE config, or 2:4 masks into a 1:8 config, is refused
    naming the cause."""
    _, path = stage1
    det = detection_backbone(sparsity=sparsity, init_cfg=dict(
        type='SparsePretrained', checkpoint=str(path), prefix='backbone.'))
    with pytest.raises(error, match=phrase):
        det.init_weights()


def test_sparse_pretrained_refuses_dense_missing_and_wrong_prefix(tmp_path):
    """A dense checkpoint (use Pretrained), a missing file and a prefix with no keys are
    refused with the fix."""
    dense = tmp_path / 'dense.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               detection_backbone(sparsity=dict(stages=(False,) * 4))
                               .state_dict().items()}}, dense)
    cases = [(str(dense), 'backbone.', CheckpointError, "use init_cfg=dict\\(type='Pretrained'"),
             (str(tmp_path / 'none.pth'), 'backbone.', CheckpointError, 'does not exist'),
             (str(dense), 'encoder.', CheckpointMismatchError, "no keys starting with 'encoder.'")]
    for checkpoint, prefix, error, phrase in cases:
        det = detection_backbone(init_cfg=dict(type='SparsePretrained', checkpoint=checkpoint,
                                               prefix=prefix))
        with pytest.raises(error, match=phrase):
            det.init_weights()
