"""The published two-stage pipeline end to end on CPU, through the user tools: SpRe 2:4
classification pretraining (mmpretrain) -> Mask R-CNN fine-tuned from that checkpoint ->
exactly 2:4 deploy models, evaluated by stock mmpretrain / mmdet.

Tiny data (40 classification images at 64x64, 8 COCO images), one epoch per stage.
"""
import pytest
import torch

from e2e_tools import (REPO, check, load_state, logged_metric, run, run_stock, stock_metrics,
                       tiny_config, tiny_run_config, tool_env)
from spre_mmdet.datasets.synthetic_cls import generate_synthetic_classification
from spre_mmdet.sparsity import check_nm_tensor

pytestmark = pytest.mark.slow  # trains detectors through the tools (minutes)

STAGE1 = REPO / 'configs' / 'toy' / 'cls' / 'resnet18_spre_2x4_toy_cls64.py'
STAGE2 = REPO / 'configs' / 'toy' / 'mask_rcnn_r18_spre_2x4_from_cls_toy.py'
STAGE2_SRSTE = REPO / 'configs' / 'toy' / 'mask_rcnn_r18_srste_2x4_from_cls_toy.py'

CLS_TINY = '''
_base_ = {base!r}
data_root = {data_root!r}
train_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=10, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=1)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=3)]
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
'''


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory):
    """Stage 1 (classification) and stage 2 (detection from its checkpoint), trained once."""
    root = tmp_path_factory.mktemp('pipeline')
    env = tool_env()
    cls_data = root / 'toy_cls64'
    generate_synthetic_classification(str(cls_data), num_train=40, num_val=20, size=64, seed=1)
    cls_config = root / 'stage1.py'
    cls_config.write_text(CLS_TINY.format(base=str(STAGE1), data_root=str(cls_data) + '/'))
    stage1 = root / 'stage1'
    check(run(['tools/train.py', cls_config, '--work-dir', stage1], env))
    checkpoint = stage1 / 'epoch_1.pth'
    # score_thr 0: one epoch on 8 images may leave every score under mmdet's 0.05, and COCO
    # evaluation of no detections returns no metrics at all
    handoff = (f"model = dict(backbone=dict(init_cfg=dict(checkpoint='{checkpoint}')),\n"
               "             test_cfg=dict(rcnn=dict(score_thr=0.0)))\n"
               'train_cfg = dict(max_epochs=1, val_interval=1)\n')
    det_config = tiny_run_config(root, STAGE2, handoff, seed=2)
    stage2 = root / 'stage2'
    trained = check(run(['tools/train.py', det_config, '--work-dir', stage2], env))
    return dict(root=root, env=env, cls_config=cls_config, stage1=stage1, checkpoint=checkpoint,
                det_config=det_config, stage2=stage2, handoff=handoff,
                log=trained.stdout + trained.stderr)


def _layer_convs(state):
    return [k for k in state if k.startswith('backbone.layer') and k.endswith('weight')
            and state[k].dim() == 4]


def test_classification_deploy_is_a_stock_2x4_resnet_with_the_same_accuracy(pipeline):
    """Stage 1 exports a stock mmpretrain ResNet-18 classifier (no spre_mmdet import) whose
    layer convs are exactly 2:4, and stock mmpretrain measures the same top-1/top-5 as
    tools/test.py on the training-time checkpoint."""
    deploy = pipeline['stage1'] / 'deploy'
    config = (deploy / 'deploy_config.py').read_text()
    assert "type='ResNet'" in config and 'spre_mmdet' not in config
    state = load_state(deploy / 'deploy.pth')
    convs = _layer_convs(state)
    assert len(convs) == 19
    for key in convs:
        assert check_nm_tensor(state[key], 2, 4).ok, key
    stock = stock_metrics(check(run_stock([deploy / 'deploy_config.py', deploy / 'deploy.pth',
                                           '--work-dir', pipeline['root'] / 'stock_cls'],
                                          pipeline['env'])).stdout)
    ours = check(run(['tools/test.py', pipeline['cls_config'], pipeline['checkpoint'],
                      '--work-dir', pipeline['root'] / 'test_cls'], pipeline['env']))
    for key in ('accuracy/top1', 'accuracy/top5'):
        assert abs(stock[key] - logged_metric(ours, key)) < 1e-6, key


def test_detection_starts_from_the_stage1_backbone_and_deploys_exactly_2x4(pipeline):
    """Stage 2 loads the stage-1 backbone (masks, S, branch, BNs), trains with masks moving,
    and its deploy Mask R-CNN is stock mmdet with a 2:4 backbone, evaluated with COCO mAP."""
    assert 'loaded the sparse backbone' in pipeline['log']
    stage1 = load_state(pipeline['checkpoint'])
    final = load_state(pipeline['stage2'] / 'epoch_1.pth')
    spatial = [k for k in stage1 if k.endswith('.spatial') and k.startswith('backbone.')]
    assert spatial and all(k in final for k in spatial)
    deploy = pipeline['stage2'] / 'deploy'
    state = load_state(deploy / 'deploy.pth')
    convs = _layer_convs(state)
    assert len(convs) == 19
    for key in convs:
        assert check_nm_tensor(state[key], 2, 4).ok, key
    stock = stock_metrics(check(run_stock([deploy / 'deploy_config.py', deploy / 'deploy.pth',
                                           '--work-dir', pipeline['root'] / 'stock_det'],
                                          pipeline['env'])).stdout)
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(stock)


def test_a_checkpoint_of_another_method_is_refused_before_training(pipeline, tmp_path):
    """The SR-STE stage-2 config given the SpRe stage-1 checkpoint stops before training,
    naming the branch keys; a dense checkpoint given to SparsePretrained is refused too."""
    config = tiny_config(pipeline['root'], STAGE2_SRSTE, pipeline['handoff'], name='wrong')
    result = run(['tools/train.py', config, '--work-dir', tmp_path / 'wrong'], pipeline['env'])
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert 'weight_rep' in result.stderr and "SpRe's extra branch" in result.stderr
    assert not list((tmp_path / 'wrong').rglob('*.pth'))
    dense = {k: v for k, v in load_state(pipeline['checkpoint']).items()
             if not k.endswith(('.sparsity.mask', '.spatial')) and '_rep' not in k}
    torch.save({'state_dict': dense}, tmp_path / 'dense.pth')
    config = tiny_config(pipeline['root'], STAGE2_SRSTE,
                         f"model = dict(backbone=dict(init_cfg=dict(checkpoint="
                         f"'{tmp_path / 'dense.pth'}')))\n", name='dense_start')
    result = run(['tools/train.py', config, '--work-dir', tmp_path / 'dense'], pipeline['env'])
    assert result.returncode == 1 and "type='Pretrained'" in result.stderr, result.stderr[-2000:]
