"""Every shipped config: it builds its detector, a sparse one deploys to a config that builds a
model taking the re-parameterized weights strictly, and the COCO configs point at COCO."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS

from spre_mmdet.deploy import INTERSPACE_FORMS, deploy_config
from spre_mmdet.sparsity import (InterspaceConv2d, check_nm_tensor, merge_interspace,
                                 refresh_masks, reparameterize, sparse_layers)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)


def build(cfg):
    cfg.model.backbone.init_cfg = None  # no pretrained download; weights do not matter here
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def finish_masks(model):
    refresh_masks(model, 0)
    for _, layer in sparse_layers(model):
        if not layer.sparsity.is_final:  # LBC before t_f
            layer.sparsity.finish_by_magnitude(layer.weight)


def test_all_configs_are_listed():
    """The parametrization below sees every config (guards the glob)."""
    assert len(CONFIGS) >= 20 and 'configs/mask_rcnn_r50_spre_2x4.py' in CONFIGS


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_and_deploys(path):
    """The detector builds; a sparse one has 2:4 backbone layers, and each deploy config (both
    interspace forms) builds a model that loads the re-parameterized state dict strictly."""
    cfg = Config.fromfile(str(REPO / path))
    if not path.startswith('configs/toy/') and 'toy' not in Path(path).stem:
        assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
        assert cfg.model.backbone.depth == 50
    model = build(cfg)
    layers = dict(sparse_layers(model))
    if 'dense' in path:
        assert not layers
        return
    assert any(name.startswith('backbone.layer') for name in layers)
    finish_masks(model)
    model.eval()
    interspace = any(isinstance(layer, InterspaceConv2d) for layer in layers.values())
    for form in INTERSPACE_FORMS if interspace else INTERSPACE_FORMS[:1]:
        deployed = reparameterize(merge_interspace(model) if form == 'merged' else model)
        target = MODELS.build(deploy_config(cfg, form).model)
        target.load_state_dict(deployed.state_dict(), strict=True)
        modules = dict(target.named_modules())
        for name, layer in layers.items():
            if isinstance(layer, InterspaceConv2d) and form == 'merged':
                continue
            weight = getattr(modules[name], 'gemm', modules[name]).weight
            assert check_nm_tensor(weight, layer.sparsity.n, layer.sparsity.m).ok, name
