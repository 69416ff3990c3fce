"""The installed package, not the checkout: spre-mmdet installed non-editable into a fresh
virtual environment (``--system-site-packages``: torch, mmcv and mmdet come from this
interpreter) runs the user commands from a folder that is not the checkout.

What it shows: the package holds everything configs and the tools import (no module is found
only because the checkout is on ``sys.path``), nothing in it locates files of the source
checkout, and the tools of ``tools/`` import the installed package rather than the checkout
next to them.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: what ``pip install`` needs of the checkout (copied, so that the build's ``build/`` and
#: ``*.egg-info`` are not written into the checkout)
PACKAGING = ('pyproject.toml', 'setup.cfg', 'setup.py', 'MANIFEST.in', 'README.md')

#: in the venv, from the work folder: runs each ``tools/<name>.py`` given (with its arguments,
#: ``--`` between tools) as ``python tools/<name>.py`` would (the script's folder first on
#: ``sys.path``, run as ``__main__``; one interpreter start for several tools keeps the test
#: short) and prints the ``sys.path`` entries each added; then checks that the package holds
#: every module configs and the tools import and none of the experiment tooling, and prints
#: where ``spre_mmdet`` was imported from
RUN_TOOLS = textwrap.dedent('''
    import importlib.util, json, os, runpy, sys
    commands, current = [], []
    for arg in sys.argv[1:] + ['--']:
        if arg == '--':
            commands.append(current)
            current = []
        else:
            current.append(arg)
    for command in filter(None, commands):
        sys.argv = command
        sys.path[0] = os.path.dirname(os.path.abspath(command[0]))
        before = list(sys.path)
        try:
            runpy.run_path(command[0], run_name='__main__')
        except SystemExit as e:
            if e.code:
                raise
        print('ADDED_TO_SYS_PATH', json.dumps([p for p in sys.path if p not in before]))
    import spre_mmdet
    import spre_mmdet.benchmark, spre_mmdet.checkpoint, spre_mmdet.datasets, spre_mmdet.deploy
    import spre_mmdet.environment, spre_mmdet.hooks, spre_mmdet.models, spre_mmdet.sparsity
    for name in ('spre_mmdet.sweep', 'spre_mmdet.tracing', 'spre_mmdet.allocator',
                 'spre_mmdet.benchmark.gpu_check', 'spre_mmdet.benchmark.train_cost',
                 'spre_mmdet.benchmark.mask_speed', 'spre_mmdet.benchmark.lbc_memory'):
        assert importlib.util.find_spec(name) is None, name
    print('SPRE_MMDET_FROM', spre_mmdet.__file__)
''')


def _run(args, cwd, env, timeout=300):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f'{" ".join(map(str, args))}\n{proc.stdout[-3000:]}\n'
                                  f'{proc.stderr[-3000:]}')
    return proc.stdout


def _inside(path, folder) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


@pytest.mark.slow  # a venv, a pip install and two tool processes (~40 s on 2 idle cores)
def test_non_editable_install_runs_the_tools_from_another_folder(tmp_path, repo_root):
    src, venv, work = tmp_path / 'src', tmp_path / 'venv', tmp_path / 'work'
    src.mkdir()
    work.mkdir()
    for name in PACKAGING:
        if (repo_root / name).is_file():
            shutil.copy2(repo_root / name, src / name)
    shutil.copytree(repo_root / 'spre_mmdet', src / 'spre_mmdet',
                    ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip',
                    str(venv)], check=True, timeout=120)
    python = venv / 'bin' / 'python'
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='1', PIP_DISABLE_PIP_VERSION_CHECK='1', PIP_NO_INPUT='1')
    env.pop('SPRE_MMDET_TRUST_CHECKPOINTS', None)
    # pip of this interpreter (system site-packages), installing into the venv
    _run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', src],
         tmp_path, env)

    # the user commands, from a folder that is not the checkout, against the installed package
    tools = repo_root / 'tools'
    config = repo_root / 'configs' / 'toy' / 'mask_rcnn_r18_spre_2x4_toy.py'
    runs = [
        [tools / 'make_toy_coco.py', '--out', 'data/toy_coco', '--num-train', '4',
         '--num-val', '2', '--', tools / 'reparameterize.py', '--help', '--',
         tools / 'benchmark_sparse.py', '--help', '--', tools / 'analyze_sparsity.py', '--help'],
        [tools / 'train.py', config, '--work-dir', 'run', '--cfg-options',
         'train_cfg.max_epochs=1', 'train_cfg.val_interval=10', 'train_dataloader.batch_size=2'],
    ]
    outputs = []
    for tool_run in runs:
        out = _run([python, '-c', RUN_TOOLS, *tool_run], work, env)
        added = [json.loads(line.split(' ', 1)[1]) for line in out.splitlines()
                 if line.startswith('ADDED_TO_SYS_PATH ')]
        assert len(added) == tool_run.count('--') + 1, out
        for path in sum(added, []):  # no tool puts the checkout on sys.path
            assert not _inside(path, repo_root), path
        origin = out.splitlines()[-1].split(' ', 1)[1]
        assert _inside(origin, venv) and not _inside(origin, repo_root), origin
        outputs.append(out)
    assert outputs[0].count('usage:') == 3, outputs[0]
    installed = Path(origin).parent
    for path in installed.rglob('*.py'):  # nothing in the package looks for checkout files
        found = re.search(r'repo_root|(?<![A-Z_])ROOT\s*=', path.read_text(encoding='utf-8'))
        assert found is None, f'{path.relative_to(installed)} locates the checkout: {found}'
    assert (work / 'run' / 'epoch_1.pth').is_file()
    for name in ('deploy.pth', 'deploy_config.py'):  # the ReparameterizeHook's export
        assert (work / 'run' / 'deploy' / name).is_file(), name
