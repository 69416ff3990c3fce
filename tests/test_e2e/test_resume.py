"""Resume is exact with the shipped configs: a run resumed from its epoch-1 checkpoint ends
with the same weights, masks, S, LBC state and optimizer state as the uninterrupted run.

No test-only hook: the shipped configs' own hooks (EpochSeedHook among them) are used as they
are; the tiny-run overrides only shrink the data and the schedule, and load the data with
persistent workers, as mmdet's configs do (the augmentation then runs in worker processes that
live across epochs in the uninterrupted run and start anew in the resumed one). Expected:
bit-identical tensors (same process set-up, CPU, one thread).
"""
import pytest
import torch

from e2e_tools import REPO, check, run, tiny_run_config, tool_env
from spre_mmdet.checkpoint import safe_torch_load

pytestmark = pytest.mark.slow  # trains detectors through the tools (minutes)

CONFIGS = {
    'spre': (REPO / 'configs' / 'toy' / 'mask_rcnn_r18_spre_2x4_toy.py', ''),
    # 2 epochs x 4 iterations; removal over the first 6: the epoch-1 checkpoint is mid-removal
    'lbc': (REPO / 'configs' / 'toy' / 'mask_rcnn_r18_lbc_2x4_toy.py',
            'model = dict(backbone=dict(sparsity=dict(learner=dict(span=(0, 0.75)))))\n'),
}


@pytest.fixture(scope='module')
def runs(request, tmp_path_factory):
    """An uninterrupted 2-epoch run, and a run resumed from its epoch-1 checkpoint."""
    base, overrides = CONFIGS[request.param]
    root = tmp_path_factory.mktemp(f'resume_{request.param}')
    config = tiny_run_config(root, base, overrides + 'train_cfg = dict(max_epochs=2, '
                             'val_interval=100)\n'
                             'train_dataloader = dict(batch_size=2, num_workers=2, '
                             'persistent_workers=True, dataset=dict(data_root=data_root))\n',
                             seed=5)
    env = tool_env()
    full, resumed = root / 'full', root / 'resumed'
    check(run(['tools/train.py', config, '--work-dir', full], env))
    check(run(['tools/train.py', config, '--work-dir', resumed, '--resume',
               full / 'epoch_1.pth'], env))
    return request.param, safe_torch_load(full / 'epoch_1.pth'), \
        safe_torch_load(full / 'epoch_2.pth'), safe_torch_load(resumed / 'epoch_2.pth')


def _assert_same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


@pytest.mark.parametrize('runs', sorted(CONFIGS), indirect=True)
def test_resumed_run_equals_uninterrupted_run(runs):
    """Every model tensor (weights, masks, S, LBC scores/alive), the optimizer state and the
    schedulers are identical after resuming at the epoch-1 checkpoint."""
    _, _, full, resumed = runs
    masks = [k for k in full['state_dict'] if k.endswith(('.sparsity.mask', '.spatial'))]
    assert len(masks) >= 19
    _assert_same(full['state_dict'], resumed['state_dict'], 'state_dict')
    _assert_same(full['optimizer'], resumed['optimizer'], 'optimizer')
    _assert_same(full['param_schedulers'], resumed['param_schedulers'], 'param_schedulers')
    assert full['meta']['iter'] == resumed['meta']['iter'] == 8


@pytest.mark.parametrize('runs', ['lbc'], indirect=True)
def test_lbc_checkpoint_was_taken_mid_removal(runs):
    """The LBC run really resumed mid-removal: 2 of 6 subsets alive at epoch 1, 1 at the end."""
    _, epoch1, full, _ = runs
    alive = [k for k in epoch1['state_dict'] if k.endswith('.sparsity.alive')]
    assert alive
    for key in alive:
        assert int(epoch1['state_dict'][key].sum(1).max()) == 2, key
        assert int(full['state_dict'][key].sum(1).max()) == 1, key
