"""SpRe 2:4 Mask R-CNN end to end through the user tools, on a tiny synthetic COCO set:
train -> re-parameterize -> stock mmdet loads and evaluates the deploy model (resume: see
test_resume.py).

The training runs are shared by the tests of this module (module-scoped fixtures) to keep the
suite fast; each test asserts one property.
"""
import json
import subprocess
import sys

import pytest
import torch

from e2e_tools import (REPO, check, load_state, logged_metric, run, run_stock,
                       stock_metrics, tiny_run_config, tool_env)

pytestmark = pytest.mark.slow  # trains detectors through the tools (minutes)

SPRE_TOY = REPO / 'configs' / 'toy' / 'mask_rcnn_r18_spre_2x4_toy.py'

OVERRIDES = '''
custom_imports = dict(imports=['spre_mmdet', 'rank_dump_hook'], allow_failed_imports=False)
train_cfg = dict(max_epochs=2, val_interval=100)
custom_hooks = [
    dict(type='EpochSeedHook'),
    dict(type='SparsityHook', log_interval=1),
    dict(type='ReparameterizeHook', out_dir='deploy'),
    dict(type='RankDumpHook'),
]
'''


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Tiny dataset, test config and environment shared by this module."""
    root = tmp_path_factory.mktemp('e2e')
    config = tiny_run_config(root, SPRE_TOY, OVERRIDES, seed=3)
    return dict(root=root, config=config, env=tool_env())


@pytest.fixture(scope='module')
def trained(world):
    """An uninterrupted 2-epoch run."""
    full = world['root'] / 'full'
    check(run(['tools/train.py', world['config'], '--work-dir', full], world['env']))
    return dict(full=full)


def test_training_writes_report_and_exactly_nm_deploy(trained):
    """The run ends with a per-layer report and a deploy checkpoint whose backbone is 2:4."""
    from spre_mmdet.sparsity import check_nm_tensor
    report = (trained['full'] / 'sparsity_report.txt').read_text()
    assert 'backbone.conv1' in report and 'not divisible by M=4' in report
    rows = json.loads((trained['full'] / 'sparsity_report.json').read_text())
    sparse = [r for r in rows if r['method'] != 'dense']
    assert sparse and all(r['valid'] for r in sparse)
    assert any(r['method'] == 'srste+spre' for r in sparse)
    deploy = load_state(trained['full'] / 'deploy' / 'deploy.pth')
    assert not any('sparsity' in k or 'rep' in k or 'spatial' in k for k in deploy)
    convs = [k for k in deploy if k.startswith('backbone.layer') and k.endswith('weight')
             and deploy[k].dim() == 4]
    assert len(convs) == len(sparse)
    for key in convs:
        assert check_nm_tensor(deploy[key], 2, 4).ok, key


@pytest.fixture(scope='module')
def exported(world, trained):
    out = world['root'] / 'exported'
    check(run(['tools/reparameterize.py', world['config'], trained['full'] / 'epoch_2.pth',
               '--out', out], world['env']))
    return out


def test_deploy_equals_training_model(world, trained, exported):
    """Deploy detector (stock ResNet) == training-time SpRe detector on the same batch:
    FPN features within 1e-4 relative, identical detections within 1e-3 px."""
    from mmengine.config import Config
    from mmengine.runner import load_checkpoint
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()

    def build(config, ckpt):
        cfg = Config.fromfile(str(config))
        cfg.model.backbone.init_cfg = None
        model = MODELS.build(cfg.model)
        load_checkpoint(model, str(ckpt), map_location='cpu', strict=True, logger='silent')
        return model.eval()

    train_model = build(world['config'], trained['full'] / 'epoch_2.pth')
    deploy_model = build(exported / 'deploy_config.py', exported / 'deploy.pth')
    assert type(deploy_model.backbone).__name__ == 'ResNet'
    torch.manual_seed(0)
    images = torch.rand(2, 3, 128, 128) * 255
    with torch.no_grad():
        batch = train_model.data_preprocessor(dict(inputs=list(images)), False)['inputs']
        feats_train = train_model.extract_feat(batch)
        feats_deploy = deploy_model.extract_feat(batch)
        for a, b in zip(feats_train, feats_deploy):
            assert (a - b).abs().max() <= 1e-4 * a.abs().max()
        from mmdet.structures import DetDataSample
        samples = [DetDataSample(metainfo=dict(img_shape=(128, 128), ori_shape=(128, 128),
                                               scale_factor=(1.0, 1.0))) for _ in range(2)]
        preds_train = train_model.predict(batch, samples)
        preds_deploy = deploy_model.predict(batch, [s.clone() for s in samples])
    for a, b in zip(preds_train, preds_deploy):
        torch.testing.assert_close(b.pred_instances.bboxes, a.pred_instances.bboxes,
                                   rtol=0, atol=1e-3)
        assert torch.equal(a.pred_instances.labels, b.pred_instances.labels)


def test_stock_mmdet_evaluates_deploy_with_same_map(world, trained, exported):
    """Stock mmdet (spre_mmdet import blocked) loads the deploy checkpoint; its COCO bbox/segm
    mAP equals tools/test.py's on the training-time sparse checkpoint."""
    stock = check(run_stock([exported / 'deploy_config.py', exported / 'deploy.pth',
                             '--work-dir', world['root'] / 'stock_test'], world['env']))
    ours = check(run(['tools/test.py', world['config'], trained['full'] / 'epoch_2.pth',
                      '--work-dir', world['root'] / 'sparse_test'], world['env']))
    stock_map = stock_metrics(stock.stdout)
    assert 'coco/bbox_mAP' in stock_map and 'coco/segm_mAP' in stock_map
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50'):
        value = logged_metric(ours, key)
        assert abs(value - stock_map[key]) < 1e-3, (key, value, stock_map[key])


def test_reparameterize_refuses_bad_input(world, trained, exported, tmp_path):
    """Non-empty target without --force, a dense checkpoint and a missing file are refused
    with a message naming the fix, and nothing is written."""
    before = sorted(p.name for p in exported.iterdir())
    result = run(['tools/reparameterize.py', world['config'], trained['full'] / 'epoch_2.pth',
                  '--out', exported], world['env'])
    assert result.returncode != 0 and '--force' in result.stderr
    assert 'Traceback' not in result.stderr
    assert sorted(p.name for p in exported.iterdir()) == before

    dense = {k: v for k, v in load_state(trained['full'] / 'epoch_2.pth').items()
             if not k.endswith(('.sparsity.mask', '.spatial'))}
    torch.save({'state_dict': dense}, tmp_path / 'dense.pth')
    out = tmp_path / 'out'
    result = run(['tools/reparameterize.py', world['config'], tmp_path / 'dense.pth',
                  '--out', out], world['env'])
    assert result.returncode != 0 and 'not from a sparse training run' in result.stderr
    assert 'Traceback' not in result.stderr and not out.exists()

    result = run(['tools/reparameterize.py', world['config'], tmp_path / 'missing.pth',
                  '--out', out], world['env'])
    assert result.returncode != 0 and 'does not exist' in result.stderr


def test_distributed_training_keeps_masks_and_s_identical_on_ranks(world, free_port):
    """2-process CPU (gloo) SpRe training via tools/dist_train.sh: every rank ends with the same
    N:M masks and spatial masks S, and they are the ones in the saved checkpoint."""
    work = world['root'] / 'dist'
    env = dict(world['env'], PORT=str(free_port), PYTHON=sys.executable)
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', str(world['config']), '2', '--work-dir', str(work),
         '--cfg-options', 'train_cfg.max_epochs=1'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(work / 'sparsity_rank0.pth', weights_only=True)
    rank1 = torch.load(work / 'sparsity_rank1.pth', weights_only=True)
    spatial = [k for k in rank0 if k.endswith('.spatial')]
    assert len(spatial) >= 8 and rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    saved = load_state(work / 'epoch_1.pth')
    for key in rank0:
        assert torch.equal(saved['model.' + key if 'model.' + key in saved else key],
                           rank0[key]), key
