"""Every shipped config: it builds its model, a sparse one deploys to a config that builds a
model taking the re-parameterized weights strictly, and the COCO / ImageNet configs point at
their datasets."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import spre_mmdet.classification  # noqa: F401  (registers NMResNet for the mmpretrain configs)
from spre_mmdet.deploy import INTERSPACE_FORMS, SPARSE_RESNETS, build_model, deploy_config
from spre_mmdet.sparsity import (InterspaceConv2d, check_nm_tensor, refresh_masks,
                                 reparameterize, sparse_layers)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)
#: the R-50 COCO / ImageNet configs take 5-10 s each to build and deploy: `make test` only
PARAMS = [pytest.param(p, marks=pytest.mark.slow) if '/toy/' not in p else p for p in CONFIGS]


def build(cfg):
    cfg.model.backbone.init_cfg = None  # no pretrained weights here; they do not matter
    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    return model


def finish_masks(model):
    refresh_masks(model, 0)
    for _, layer in sparse_layers(model):
        if not layer.sparsity.is_final:  # LBC before t_f
            layer.sparsity.finish_by_magnitude(layer.weight)


def expects_sparse(cfg) -> bool:
    backbone = cfg.model.backbone
    return backbone.type in SPARSE_RESNETS and any(
        (backbone.get('sparsity') or {}).get('stages', (True, ) * 4))


def test_all_configs_are_listed():
    """The parametrization below sees every config (guards the glob)."""
    assert len(CONFIGS) >= 40 and 'configs/mask_rcnn_r50_spre_2x4.py' in CONFIGS


@pytest.mark.parametrize('path', PARAMS)
def test_config_builds_and_deploys(path):
    """The model builds; a sparse one has sparse backbone layers, and each deploy config (both
    interspace forms) builds a model that loads the re-parameterized state dict strictly, with
    every N:M layer exactly N:M."""
    cfg = Config.fromfile(str(REPO / path))
    if path.startswith('configs/imagenet/'):
        assert cfg.train_dataloader.dataset.data_root == 'data/imagenet'
    elif 'toy' not in path:  # toy configs (configs/toy/, *_toy.py) run the synthetic sets
        assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
        assert cfg.model.backbone.depth == 50
    model = build(cfg)
    layers = dict(sparse_layers(model))
    if not expects_sparse(cfg):
        assert not layers
        return
    assert any(name.startswith('backbone.layer') for name in layers)
    finish_masks(model)
    model.eval()
    interspace = any(isinstance(layer, InterspaceConv2d) for layer in layers.values())
    for form in INTERSPACE_FORMS if interspace else INTERSPACE_FORMS[:1]:
        deployed = reparameterize(model, interspace_form=form)
        target = build_model(deploy_config(cfg, form))
        target.load_state_dict(deployed.state_dict(), strict=True)
        modules = dict(target.named_modules())
        for name, layer in layers.items():
            if (isinstance(layer, InterspaceConv2d) and form == 'merged') or \
                    layer.sparsity.method == 'unstructured':  # not N:M by design
                continue
            weight = getattr(modules[name], 'gemm', modules[name]).weight
            assert check_nm_tensor(weight, layer.sparsity.n, layer.sparsity.m).ok, name


def _data_roots(cfg):
    roots = set()
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = (cfg.get(key) or {}).get('dataset') or {}
        while 'dataset' in dataset:  # wrappers (e.g. RepeatDataset)
            dataset = dataset['dataset']
        if dataset.get('data_root'):
            roots.add(dataset['data_root'].rstrip('/'))
    return roots


@pytest.mark.parametrize('path', [p for p in CONFIGS if 'toy' in p])
def test_toy_config_names_the_generator_of_its_data(path):
    """A toy config declares (``synthetic_data``) the generator command that writes exactly the
    data/toy_* folder it reads: the missing-data error quotes it."""
    cfg = Config.fromfile(str(REPO / path))
    roots = {r for r in _data_roots(cfg) if r.startswith(('data/toy_', 'data/natural_'))}
    assert roots, f'{path} is a toy config but reads no data/toy_* or data/natural_* set'
    command = cfg.get('synthetic_data')
    assert command and command.startswith(('python tools/make_toy_',
                                           'python tools/make_natural_')), path
    out = command.split('--out ')[1].split()[0].rstrip('/')
    assert roots == {out}, (path, roots, command)
