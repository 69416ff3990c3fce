"""Interspace pruning + SR-STE 2:4 Mask R-CNN end to end through the user tools, on a tiny
synthetic COCO set: train (ReparameterizeHook exports the basis form) -> evaluate the basis
form with tools/test.py -> export the merged form with tools/reparameterize.py -> evaluate it
with stock mmdet (spre_mmdet import blocked).

Tolerance: deploy vs training-time predictions on the same images, boxes within 1e-2 px and
scores within 1e-4 (float32, the same function summed in a different order).
"""
import pytest
import torch

from e2e_tools import (REPO, check, load_predictions, load_state, logged_metric, run,
                       run_stock, stock_metrics, tiny_run_config, tool_env)
from spre_mmdet.sparsity import check_nm_tensor

pytestmark = pytest.mark.slow  # trains detectors through the tools (minutes)

IP_TOY = REPO / 'configs' / 'toy' / 'mask_rcnn_r18_ip_srste_2x4_toy.py'

OVERRIDES = '''
train_cfg = dict(max_epochs=1, val_interval=100)
custom_hooks = [
    dict(type='SparsityHook', log_interval=1),
    dict(type='ReparameterizeHook', out_dir='deploy'),
]
'''
METRICS = ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50')
MISMATCH = 'do not match exactly'  # mmengine's warning for missing/unexpected keys


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A 1-epoch IP run on 8 images, and the evaluation of its training-time checkpoint."""
    root = tmp_path_factory.mktemp('ip_e2e')
    config = tiny_run_config(root, IP_TOY, OVERRIDES, seed=5)
    env = tool_env()
    work = root / 'train'
    trained = check(run(['tools/train.py', config, '--work-dir', work], env))
    sparse = check(run(['tools/test.py', config, work / 'epoch_1.pth', '--work-dir',
                        root / 'sparse_test', '--out', root / 'sparse.pkl'], env))
    return dict(root=root, config=config, env=env, work=work, train_log=trained,
                sparse=sparse)


def assert_same_predictions(expected_pkl, actual_pkl):
    expected, actual = load_predictions(expected_pkl), load_predictions(actual_pkl)
    assert len(expected) == len(actual) == 4
    num_boxes = 0
    for a, b in zip(expected, actual):
        a, b = a['pred_instances'], b['pred_instances']
        assert torch.equal(a['labels'], b['labels'])
        torch.testing.assert_close(b['bboxes'], a['bboxes'], rtol=0, atol=1e-2)
        torch.testing.assert_close(b['scores'], a['scores'], rtol=0, atol=1e-4)
        num_boxes += len(a['bboxes'])
    assert num_boxes > 0  # the comparison is not vacuous


def test_hook_exports_basis_form_evaluated_by_tools_test(run_dir):
    """The hook writes the basis form (2:4 1x1 weights) and logs it; tools/test.py loads it
    without key mismatch and gives the training-time model's predictions and mAP."""
    deploy = run_dir['work'] / 'deploy'
    log = run_dir['train_log'].stdout + run_dir['train_log'].stderr
    assert '16 interspace convs exported in BASIS form' in log
    state = load_state(deploy / 'deploy.pth')
    gemms = [k for k in state if k.endswith('.gemm.weight')]
    assert len(gemms) == 16 and all(check_nm_tensor(state[k], 2, 4).ok for k in gemms)
    ours = check(run(['tools/test.py', deploy / 'deploy_config.py', deploy / 'deploy.pth',
                      '--work-dir', run_dir['root'] / 'basis_test',
                      '--out', run_dir['root'] / 'basis.pkl'], run_dir['env']))
    assert MISMATCH not in ours.stdout + ours.stderr
    assert_same_predictions(run_dir['root'] / 'sparse.pkl', run_dir['root'] / 'basis.pkl')
    for key in METRICS:
        assert abs(logged_metric(ours, key) - logged_metric(run_dir['sparse'], key)) < 1e-3


def test_merged_form_via_tool_is_evaluated_by_stock_mmdet(run_dir):
    """tools/reparameterize.py --interspace-form merged writes a stock ResNet detector that
    stock mmdet evaluates with the training-time model's mAP; the report says MERGED."""
    out = run_dir['root'] / 'merged'
    exported = check(run(['tools/reparameterize.py', run_dir['config'],
                          run_dir['work'] / 'epoch_1.pth', '--out', out,
                          '--interspace-form', 'merged'], run_dir['env']))
    assert 'exported in MERGED form' in exported.stdout
    assert 'spre_mmdet' not in (out / 'deploy_config.py').read_text()
    stock = check(run_stock([out / 'deploy_config.py', out / 'deploy.pth', '--work-dir',
                             run_dir['root'] / 'stock_test'], run_dir['env']))
    assert MISMATCH not in stock.stdout + stock.stderr
    metrics = stock_metrics(stock.stdout)
    for key in METRICS:
        assert abs(metrics[key] - logged_metric(run_dir['sparse'], key)) < 1e-3, key
