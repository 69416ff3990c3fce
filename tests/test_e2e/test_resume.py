"""Resume is exact with the shipped configs: a run resumed from its epoch-1 checkpoint ends
with the same weights, masks, S, LBC state and optimizer state as the uninterrupted run.

The run is SpRe + LBC, whose state is the union of SpRe's (N:M masks, the spatial masks S, the
branch weights) and LBC's (scores, alive subsets), with the removal still under way at the
epoch-1 checkpoint. No test-only hook: the shipped config's own hooks (EpochSeedHook among
them) are used as they are; the tiny-run overrides only shrink the data and the schedule, and
load the data with persistent workers, as mmdet's configs do (the augmentation then runs in
worker processes that live across epochs in the uninterrupted run and start anew in the
resumed one). Expected: bit-identical tensors (same process set-up, CPU, one thread).
"""
import pytest
import torch

from e2e_tools import REPO, check, run, tiny_run_config, tool_env
from spre_mmdet.checkpoint import safe_torch_load

pytestmark = pytest.mark.slow  # trains detectors through the tools (minutes)

CONFIG = REPO / 'configs' / 'toy' / 'mask_rcnn_r18_spre_lbc_2x4_toy.py'
#: 2 epochs x 4 iterations; removal over the first 6: the epoch-1 checkpoint is mid-removal
OVERRIDES = ('model = dict(backbone=dict(sparsity=dict(learner=dict(span=(0, 0.75)))))\n'
             'train_cfg = dict(max_epochs=2, val_interval=100)\n'
             'train_dataloader = dict(batch_size=2, num_workers=2, persistent_workers=True, '
             'dataset=dict(data_root=data_root))\n')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """An uninterrupted 2-epoch run, and a run resumed from its epoch-1 checkpoint."""
    root = tmp_path_factory.mktemp('resume')
    config = tiny_run_config(root, CONFIG, OVERRIDES, seed=5)
    env = tool_env()
    full, resumed = root / 'full', root / 'resumed'
    check(run(['tools/train.py', config, '--work-dir', full], env))
    check(run(['tools/train.py', config, '--work-dir', resumed, '--resume',
               full / 'epoch_1.pth'], env))
    return safe_torch_load(full / 'epoch_1.pth'), safe_torch_load(full / 'epoch_2.pth'), \
        safe_torch_load(resumed / 'epoch_2.pth')


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


def test_resumed_run_equals_uninterrupted_run(runs):
    """Every model tensor (weights, masks, S, branch weights, LBC scores/alive), the optimizer
    state and the schedulers are identical after resuming at the epoch-1 checkpoint."""
    _, full, resumed = runs
    state = full['state_dict']
    for suffix in ('.sparsity.mask', '.spatial', '.weight_rep', '.sparsity.scores',
                   '.sparsity.alive'):
        assert sum(k.endswith(suffix) for k in state) >= 8, suffix
    _assert_same(full['state_dict'], resumed['state_dict'], 'state_dict')
    _assert_same(full['optimizer'], resumed['optimizer'], 'optimizer')
    _assert_same(full['param_schedulers'], resumed['param_schedulers'], 'param_schedulers')
    assert full['meta']['iter'] == resumed['meta']['iter'] == 8


def test_checkpoint_was_taken_mid_removal(runs):
    """The run really resumed mid-removal: 2 of 6 subsets alive at epoch 1, 1 at the end."""
    epoch1, full, _ = runs
    alive = [k for k in epoch1['state_dict'] if k.endswith('.sparsity.alive')]
    assert alive
    for key in alive:
        assert int(epoch1['state_dict'][key].sum(1).max()) == 2, key
        assert int(full['state_dict'][key].sum(1).max()) == 1, key
