"""spre_mmdet.checkpoint.matching: a checkpoint loads only into a model it fits."""
import pytest
import torch
from mmdet.registry import MODELS

from spre_mmdet.checkpoint import load_state_checked, resnet_layout, state_dict_of
from spre_mmdet.errors import CheckpointError, CheckpointMismatchError
from spre_mmdet.sparsity import nm_mask, refresh_masks, sparse_layers


def backbone(depth=18, **sparsity):
    model = MODELS.build(dict(type='SparseResNet', depth=depth,
                              sparsity=dict(dict(n=2, m=4), **sparsity)))
    model.init_weights()
    return model


def test_sparse_checkpoint_of_the_same_config_loads_exactly():
    """A checkpoint of the same config loads, masks and S included."""
    source = backbone(spre=dict())
    target = backbone(spre=dict())
    load_state_checked(target, source.state_dict(), 'ckpt')
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_state_dict_of_every_checkpoint_form():
    """A runner checkpoint, another framework's 'model' entry and a bare state dict give their
    tensors; DataParallel's 'module.' is stripped when every key has it; no state dict is an
    error naming what was found."""
    w = torch.ones(2)
    assert state_dict_of({'meta': {}, 'state_dict': {'a.weight': w}}) == {'a.weight': w}
    assert state_dict_of({'epoch': 1, 'model': {'module.a': w, 'module.b': w}}) == {'a': w,
                                                                                    'b': w}
    assert state_dict_of({'a': w, 'module.b': w, 'step': 3}) == {'a': w, 'module.b': w}
    with pytest.raises(CheckpointError, match=r"x\.pth holds no state dict.*\['meta'\]"):
        state_dict_of({'meta': {}}, 'x.pth')
    with pytest.raises(CheckpointError, match='found a list'):
        state_dict_of([w])


def test_dense_checkpoint_loads_and_masks_are_derived():
    """A dense ResNet checkpoint fits a sparse model; at the next refresh every mask becomes the
    magnitude 2:4 mask of the loaded weight (not the one of the model's own init)."""
    torch.manual_seed(0)
    dense = MODELS.build(dict(type='ResNet', depth=18)).state_dict()
    model = backbone()
    before = {name: layer.sparsity.mask.clone() for name, layer in sparse_layers(model)}
    load_state_checked(model, dense, 'dense.pth')
    refresh_masks(model, 0)
    assert len(before) == 19
    for name, layer in sparse_layers(model):
        weight = dense[f'{name}.weight']
        assert torch.equal(layer.weight, weight), name
        assert torch.equal(layer.sparsity.mask, nm_mask(weight, 2, 4)), name
        assert not torch.equal(layer.sparsity.mask, before[name]), name


def test_spre_checkpoint_into_srste_config_names_the_branch():
    """An SR-STE config given a SpRe checkpoint is refused, naming the branch keys and fix."""
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_checked(backbone(), backbone(spre=dict()).state_dict(), 'spre.pth')
    message = str(info.value)
    assert 'spre.pth' in message and 'weight_rep' in message
    assert "the checkpoint has SpRe's extra branch" in message
    assert 'use the config the checkpoint was trained with' in message


def test_srste_checkpoint_into_spre_config_names_the_missing_branch():
    """A SpRe config given an SR-STE checkpoint is refused (its branch would stay random)."""
    with pytest.raises(CheckpointMismatchError, match="the config has SpRe's extra branch"):
        load_state_checked(backbone(spre=dict()), backbone().state_dict(), 'srste.pth')


def test_other_depth_is_named():
    """A ResNet-50 checkpoint given to a ResNet-18 config names both depths."""
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_checked(backbone(18), backbone(50).state_dict(), 'r50.pth')
    assert 'ResNet-50' in str(info.value) and 'ResNet-18' in str(info.value)


def test_other_pattern_is_a_shape_mismatch():
    """An LBC checkpoint of another N:M (scores of another shape) is refused by shape."""
    with pytest.raises(CheckpointMismatchError, match='differ in shape'):
        load_state_checked(backbone(learner=dict(type='lbc', t_f=10)),
                           backbone(learner=dict(type='lbc', t_f=10), n=1, m=8).state_dict(),
                           'lbc18.pth')


def test_resnet_layout_from_keys():
    """Blocks per stage and bottleneck-ness are read from state-dict keys."""
    assert resnet_layout(list(backbone(50).state_dict())) == ((3, 4, 6, 3), True)
    assert resnet_layout(list(backbone(18).state_dict())) == ((2, 2, 2, 2), False)
    assert resnet_layout(['head.fc.weight']) is None
