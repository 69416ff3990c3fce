"""tools/slurm_train.sh and tools/slurm_test.sh (mmdet's slurm scripts) with a stand-in ``srun``.

The stand-in records what the scripts hand to srun (its options, the command of every task and
the environment) and, when asked, runs the tasks itself the way srun does on one node: one
process per task with ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` /
``SLURM_NODELIST`` set, and a stand-in ``scontrol`` resolving the node list. So the whole path
(script -> srun -> tools/train.py --launcher slurm -> mmengine's slurm launcher) runs on CPU.
"""
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')

FAKE_SRUN = textwrap.dedent('''\
    #!{python}
    """srun stand-in: records argv/env; with FAKE_SRUN_EXEC=1 runs --ntasks tasks on this host."""
    import json, os, subprocess, sys
    args = sys.argv[1:]
    opts, i = {{}}, 0
    while i < len(args) and args[i].startswith('-'):
        if args[i] == '-p':
            opts['partition'] = args[i + 1]
            i += 2
            continue
        key, _, value = args[i].lstrip('-').partition('=')
        opts[key] = value
        i += 1
    command = args[i:]
    with open(os.environ['FAKE_SRUN_RECORD'], 'w') as f:
        json.dump(dict(options=opts, command=command, cwd=os.getcwd(),
                       pythonpath=os.environ.get('PYTHONPATH', '')), f)
    if os.environ.get('FAKE_SRUN_EXEC') != '1':
        sys.exit(0)
    ntasks = int(opts['ntasks'])
    assert int(opts['ntasks-per-node']) >= ntasks, 'the stand-in runs one node only'
    procs = []
    for rank in range(ntasks):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS=str(ntasks),
                   SLURM_LOCALID=str(rank), SLURM_NODELIST='fakenode[1]',
                   SLURM_JOB_NAME=opts['job-name'])
        procs.append(subprocess.Popen(command, env=env))
    sys.exit(max(p.wait() for p in procs))
''')

FAKE_SCONTROL = textwrap.dedent('''\
    #!/usr/bin/env bash
    # scontrol stand-in: `scontrol show hostname NODELIST` -> this host
    echo 127.0.0.1
''')


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake_slurm(tmp_path, subprocess_env):
    """(env, record path): PATH with the srun/scontrol stand-ins first."""
    bin_dir = tmp_path / 'fake_bin'
    bin_dir.mkdir()
    _executable(bin_dir / 'srun', FAKE_SRUN.format(python=sys.executable))
    _executable(bin_dir / 'scontrol', FAKE_SCONTROL)
    env = dict(subprocess_env)
    env['PATH'] = os.pathsep.join([str(bin_dir), env.get('PATH', '')])
    env['PYTHON'] = sys.executable
    record = tmp_path / 'srun.json'
    env['FAKE_SRUN_RECORD'] = str(record)
    for key in ('GPUS', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'SRUN_ARGS'):
        env.pop(key, None)
    return env, record


def _run(repo_root, script, args, env, cwd, timeout=60):
    res = subprocess.run(['bash', str(repo_root / 'tools' / script), *map(str, args)], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    return res


def _parse_tool_args(tool: Path, argv, monkeypatch):
    """The tool's own argument parser applied to the command srun was given."""
    spec = importlib.util.spec_from_file_location(f'_slurm_{tool.stem}', tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, 'argv', [str(tool), *argv])
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    return module.parse_args()


def test_slurm_train_hands_srun_the_train_command(tmp_path, repo_root, fake_slurm, monkeypatch):
    """Defaults as mmdet's (8 tasks, 8 per node, 5 CPUs each); tools/train.py of this checkout
    with --launcher slurm, the checkout first on PYTHONPATH, from any working directory;
    extra arguments keep their quoting and reach the tool's parser."""
    env, record = fake_slurm
    env['PYTHONPATH'] = '/some/where' + os.pathsep + env['PYTHONPATH']
    cwd = tmp_path / 'elsewhere'
    cwd.mkdir()
    _run(repo_root, 'slurm_train.sh',
         ['gpu', 'spre_r50', 'configs/mask_rcnn_r50_spre_2x4.py', 'work_dirs/x',
          '--cfg-options', 'train_dataloader.batch_size=4', 'work_dir=a b', '--amp'], env, cwd)
    rec = json.loads(record.read_text())
    assert rec['options'] == {
        'partition': 'gpu', 'job-name': 'spre_r50', 'gres': 'gpu:8', 'ntasks': '8',
        'ntasks-per-node': '8', 'cpus-per-task': '5', 'kill-on-bad-exit': '1'}
    python, unbuffered, tool, *tool_argv = rec['command']
    assert python == sys.executable and unbuffered == '-u'
    assert Path(tool) == repo_root / 'tools' / 'train.py'
    assert tool_argv == ['configs/mask_rcnn_r50_spre_2x4.py', '--work-dir=work_dirs/x',
                         '--launcher=slurm', '--cfg-options', 'train_dataloader.batch_size=4',
                         'work_dir=a b', '--amp']
    paths = rec['pythonpath'].split(os.pathsep)
    assert Path(paths[0]).resolve() == repo_root.resolve()
    assert '/some/where' in paths
    assert rec['cwd'] == str(cwd)
    args = _parse_tool_args(Path(tool), tool_argv, monkeypatch)
    assert (args.launcher, args.work_dir, args.amp) == ('slurm', 'work_dirs/x', True)
    assert args.cfg_options['train_dataloader.batch_size'] == 4
    assert set(args.cfg_options) == {'train_dataloader.batch_size', 'work_dir'}


def test_slurm_test_multi_node(tmp_path, repo_root, fake_slurm, monkeypatch):
    """GPUS=16 GPUS_PER_NODE=8: 16 tasks over 2 nodes; SRUN_ARGS split into srun options;
    tools/test.py gets CONFIG CHECKPOINT --launcher=slurm and the extra arguments."""
    env, record = fake_slurm
    env.update(GPUS='16', GPUS_PER_NODE='8', CPUS_PER_TASK='10',
               SRUN_ARGS='--quotatype=auto --exclusive')
    _run(repo_root, 'slurm_test.sh',
         ['gpu', 'eval', 'cfg.py', 'ckpt.pth', '--out', 'results.pkl'], env, tmp_path)
    rec = json.loads(record.read_text())
    assert rec['options'] == {
        'partition': 'gpu', 'job-name': 'eval', 'gres': 'gpu:8', 'ntasks': '16',
        'ntasks-per-node': '8', 'cpus-per-task': '10', 'kill-on-bad-exit': '1',
        'quotatype': 'auto', 'exclusive': ''}
    python, unbuffered, tool, *tool_argv = rec['command']
    assert Path(tool) == repo_root / 'tools' / 'test.py'
    assert tool_argv == ['cfg.py', 'ckpt.pth', '--launcher=slurm', '--out', 'results.pkl']
    args = _parse_tool_args(Path(tool), tool_argv, monkeypatch)
    assert (args.config, args.checkpoint, args.launcher, args.out) == (
        'cfg.py', 'ckpt.pth', 'slurm', 'results.pkl')


@pytest.mark.parametrize('script,args', [('slurm_train.sh', ['p', 'j', 'cfg.py']),
                                         ('slurm_test.sh', ['p', 'j', 'cfg.py'])])
def test_slurm_scripts_usage(repo_root, fake_slurm, tmp_path, script, args):
    env, record = fake_slurm
    res = subprocess.run(['bash', str(repo_root / 'tools' / script), *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and 'Usage:' in res.stderr
    assert not record.exists()


@pytest.mark.slow  # 2 training processes
def test_slurm_train_two_tasks_cpu(tmp_path, repo_root, fake_slurm, free_port):
    """srun's environment -> mmengine's slurm launcher -> 2-process training (gloo on CPU):
    rank and world size come from SLURM_PROCID / SLURM_NTASKS."""
    spec = importlib.util.spec_from_file_location(
        '_dist_train_cases', Path(__file__).with_name('test_dist_train.py'))
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    (tmp_path / 'dist_toy_module.py').write_text(textwrap.dedent(cases.TOY_MODULE))
    cfg = tmp_path / 'dist_toy_cfg.py'
    cfg.write_text(textwrap.dedent(cases.TOY_CONFIG))
    work_dir = tmp_path / 'work_dir'
    env, record = fake_slurm
    env['PYTHONPATH'] = os.pathsep.join([str(tmp_path), env['PYTHONPATH']])
    env.update(FAKE_SRUN_EXEC='1', GPUS='2', GPUS_PER_NODE='2', MASTER_PORT=str(free_port))
    env.pop('MASTER_ADDR', None)
    res = _run(repo_root, 'slurm_train.sh', ['cpu', 'toy', cfg, work_dir], env, tmp_path,
               timeout=300)
    out = res.stdout + res.stderr
    expected_backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    for rank in (0, 1):
        info = json.loads((work_dir / f'rank{rank}.json').read_text())
        assert (info['rank'], info['world_size'], info['backend']) == (rank, 2, expected_backend)
        assert info['iter'] == 4 and info['seen'] == 8
    assert 'Distributed training: True' in out
    assert (work_dir / 'iter_4.pth').is_file()
