"""Bad input through the real tools: refused with one clear message, before any work, and
nothing the user had is lost.

One tiny SpRe 2:4 run (1 epoch, 8 images) is shared by the module; every other step drives
tools/train.py, tools/test.py, tools/reparameterize.py or tools/benchmark_sparse.py in a
subprocess, as a user would.
"""
import os
import shutil

import pytest
import torch

from e2e_tools import REPO, check, run, tiny_config, tiny_run_config, tool_env

pytestmark = pytest.mark.slow  # trains detectors through the tools (minutes)

TOY = REPO / 'configs' / 'toy'
SPRE_TOY = TOY / 'mask_rcnn_r18_spre_2x4_toy.py'
ONE_EPOCH = 'train_cfg = dict(max_epochs=1, val_interval=100)\n'


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A 1-epoch SpRe run on the tiny set: its work dir, config and environment."""
    root = tmp_path_factory.mktemp('reliability')
    config = tiny_run_config(root, SPRE_TOY, ONE_EPOCH, seed=4)
    env = tool_env()
    work = root / 'work'
    check(run(['tools/train.py', config, '--work-dir', work], env))
    return dict(root=root, config=config, env=env, work=work, ckpt=work / 'epoch_1.pth')


def refused(result, *phrases):
    """The tool failed with one ERROR line (no traceback) holding every phrase."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert 'ERROR:' in result.stderr, result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr[-3000:])
    return result.stderr


def listing(folder):
    return sorted((p.name, p.stat().st_size) for p in folder.iterdir())


# ------------------------------------------------------------------------------ export
def test_export_into_the_work_dir_deletes_nothing(world):
    """--out <work dir> --force (which holds the input checkpoint) is refused; every training
    file stays."""
    before = listing(world['work'])
    refused(run(['tools/reparameterize.py', world['config'], world['ckpt'], '--out',
                 world['work'], '--force'], world['env']), 'Refusing to export')
    assert listing(world['work']) == before


def test_export_into_the_current_folder_deletes_nothing(world, tmp_path):
    """--out . --force from a folder with the user's files is refused; the files stay."""
    (tmp_path / 'thesis.tex').write_text('years of work')
    refused(run([REPO / 'tools' / 'reparameterize.py', world['config'], world['ckpt'], '--out',
                 '.', '--force'], world['env'], cwd=tmp_path), 'the current folder')
    assert (tmp_path / 'thesis.tex').read_text() == 'years of work'


def test_export_below_a_file_is_a_clear_error(world, tmp_path):
    """An --out that cannot be created (below a regular file) gives one clear error."""
    (tmp_path / 'file').write_text('x')
    refused(run(['tools/reparameterize.py', world['config'], world['ckpt'], '--out',
                 tmp_path / 'file' / 'deploy'], world['env']), 'Cannot create')


def test_export_with_another_methods_config_names_the_mismatch(world, tmp_path):
    """The SR-STE config on a SpRe checkpoint is refused, naming the branch keys and the fix
    (before: exit 0 with the branch silently dropped); nothing is written."""
    srste = tiny_config(world['root'], TOY / 'mask_rcnn_r18_srste_2x4_toy.py', ONE_EPOCH)
    out = tmp_path / 'out'
    refused(run(['tools/reparameterize.py', srste, world['ckpt'], '--out', out], world['env']),
            'does not match', 'weight_rep', "SpRe's extra branch",
            'use the config the checkpoint was trained with')
    assert not out.exists()


def test_export_with_another_depth_names_both_depths(world, tmp_path):
    """An R-50 config on the R-18 checkpoint names both depths (before: "not from a sparse
    run")."""
    r50 = tiny_config(world['root'], TOY / 'mask_rcnn_r50_spre_2x4_on_toy.py', ONE_EPOCH)
    out = tmp_path / 'out'
    refused(run(['tools/reparameterize.py', r50, world['ckpt'], '--out', out], world['env']),
            'ResNet-18', 'ResNet-50')
    assert not out.exists()


# ------------------------------------------------------------------ corrupt checkpoints
@pytest.mark.parametrize('damage', ['truncated', 'empty', 'text'])
def test_corrupt_checkpoint_is_called_corrupt_by_every_tool(world, tmp_path, damage):
    """A truncated, empty or text epoch_2.pth is reported as corrupt (not unsafe) by test,
    reparameterize and --resume, naming the file and the previous checkpoint."""
    folder = tmp_path / 'ckpts'
    folder.mkdir()
    good = folder / 'epoch_1.pth'
    shutil.copy(world['ckpt'], good)
    bad = folder / 'epoch_2.pth'
    data = good.read_bytes()
    bad.write_bytes({'truncated': data[:len(data) // 3], 'empty': b'',
                     'text': b'{"not": "a checkpoint"}\n'}[damage])
    later = good.stat().st_mtime + 10
    os.utime(bad, (later, later))
    commands = [['tools/test.py', world['config'], bad, '--work-dir', tmp_path / 't']]
    if damage == 'truncated':  # the classification itself is unit-tested per kind
        commands += [['tools/reparameterize.py', world['config'], bad, '--out', tmp_path / 'o'],
                     ['tools/train.py', world['config'], '--work-dir', tmp_path / 'r',
                      '--resume', bad]]
    for command in commands:
        message = refused(run(command, world['env']), 'corrupt or truncated', str(bad),
                          str(good))
        assert 'SPRE_MMDET_TRUST_CHECKPOINTS=1' not in message
    assert not (tmp_path / 'o').exists()


def test_benchmark_refuses_a_hostile_checkpoint_in_one_line(world, tmp_path):
    """benchmark_sparse.py prints the unsafe-checkpoint refusal as one line."""
    marker = tmp_path / 'PWNED'

    class Boom:
        def __reduce__(self):
            return (os.system, (f'touch {marker}', ))

    hostile = tmp_path / 'hostile.pth'
    torch.save({'state_dict': {}, 'meta': Boom()}, hostile)
    refused(run(['tools/benchmark_sparse.py', world['config'], hostile, '--out-dir',
                 tmp_path / 'bench'], world['env']), 'Refusing to load checkpoint')
    assert not marker.exists()


# ------------------------------------------------- misconfigurations fail before training
@pytest.mark.parametrize('case', ['dense_with_export', 'lbc_after_run', 'spre_interval',
                                  'empty_annotations'])
def test_misconfiguration_fails_before_the_first_iteration(world, tmp_path, case):
    """Each misconfiguration stops tools/train.py before any training iteration, with the
    fix in the message."""
    overrides, base, phrases = {
        'dense_with_export': (
            "custom_hooks = [dict(type='ReparameterizeHook')]\n",
            REPO / 'configs' / 'mask_rcnn_r18_dense_toy.py', ['no sparse layers']),
        'lbc_after_run': (
            'model = dict(backbone=dict(sparsity=dict(learner=dict(_delete_=True, type=\'lbc\', '
            't_f=29320))))\n', TOY / 'mask_rcnn_r18_lbc_2x4_toy.py',
            ['t_f=29320', '4-iteration run', 'span=']),
        'spre_interval': (
            'model = dict(backbone=dict(sparsity=dict(spre=dict(interval=50))))\n', SPRE_TOY,
            ["Unknown spre option(s) ['interval']"]),
        'empty_annotations': (
            # (one assignment: a second `train_dataloader =` in a file replaces the first)
            'train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, '
            f"ann_file='{tmp_path}/empty.json'))\n",
            SPRE_TOY, ['empty.json', 'the file is empty']),
    }[case]
    (tmp_path / 'empty.json').write_text('')
    config = tiny_config(world['root'], base, ONE_EPOCH + overrides, name=f'bad_{case}')
    work = tmp_path / 'work'
    result = run(['tools/train.py', config, '--work-dir', work], world['env'])
    refused(result, *phrases)
    assert 'Epoch(train)' not in result.stdout + result.stderr
    assert not list(work.rglob('*.pth'))


def test_benchmark_asked_for_cuda_without_a_gpu_is_a_clear_error(world, tmp_path):
    """--device cuda where no CUDA GPU is visible is one clear error, not a silent CPU run."""
    deploy = world['work'] / 'deploy'
    env = dict(world['env'], CUDA_VISIBLE_DEVICES='')
    refused(run(['tools/benchmark_sparse.py', deploy / 'deploy_config.py', deploy / 'deploy.pth',
                 '--device', 'cuda', '--out-dir', tmp_path / 'bench'], env),
            'no CUDA GPU is available')
