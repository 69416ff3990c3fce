"""Helpers shared by the end-to-end tests: run the user tools in a process of their own
(:mod:`tool_process`), read results."""
import ast
import os
import pickle
from pathlib import Path

import torch

from spre_mmdet.datasets.synthetic_coco import generate_synthetic_coco
from tool_process import run_tool_process

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

#: what every e2e config adds to its toy base: the tiny dataset, a short warm-up, logs every iter
TINY_RUN = '''
_base_ = {base!r}
data_root = {data_root!r}
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3), logger=dict(interval=1))
'''


def tiny_run_config(root: Path, base: Path, overrides: str, seed: int) -> Path:
    """Write a synthetic COCO set (8 train, 4 val images) under ``root`` and a config that runs
    ``base`` on it with :data:`TINY_RUN` and ``overrides``; return the config's path."""
    data = root / 'toy_coco'
    generate_synthetic_coco(str(data), num_train=8, num_val=4, seed=seed)
    return tiny_config(root, base, overrides)


def tiny_config(root: Path, base: Path, overrides: str = '', name: str = None) -> Path:
    """A config running ``base`` on the tiny set already under ``root`` (see
    :func:`tiny_run_config`), with ``overrides``; written as ``root/<name>.py``."""
    config = root / f'{name or base.stem + "_tiny"}.py'
    config.write_text(TINY_RUN.format(base=str(base), data_root=str(root / 'toy_coco') + '/')
                      + overrides)
    return config


def tool_env():
    """The environment of a tool run: this checkout and the test hooks importable, one thread,
    no trust override for checkpoints."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), str(HERE), env.get('PYTHONPATH', '')])
    env['OMP_NUM_THREADS'] = '1'
    env.pop('SPRE_MMDET_TRUST_CHECKPOINTS', None)
    return env


def run(args, env, cwd=REPO, timeout=900):
    """``python *args`` in ``cwd`` with ``env`` (:func:`tool_process.run_tool_process`)."""
    return run_tool_process(args, env, cwd=cwd, timeout=timeout)


def run_stock(args, env):
    """``python tools/test_stock_mmdet.py *args`` in a fresh interpreter (no spre_mmdet)."""
    return run_tool_process(['tools/test_stock_mmdet.py', *args], env, cwd=REPO, fresh=True)


def check(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def stock_metrics(stdout):
    """The metrics tools/test_stock_mmdet.py prints."""
    line = [l for l in stdout.splitlines() if l.startswith('STOCK_MMDET_METRICS')][-1]
    return ast.literal_eval(line.split(' ', 1)[1])


def logged_metric(result, key):
    """A metric as tools/test.py logs it (``coco/bbox_mAP: 0.123``)."""
    printed = [l for l in (result.stdout + result.stderr).splitlines() if f'{key}:' in l]
    assert printed, key
    return float(printed[-1].split(f'{key}:')[1].split()[0])


def load_state(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


def load_predictions(path):
    """Predictions dumped by ``tools/test.py --out`` (our own file, written by this test)."""
    with open(path, 'rb') as f:
        return pickle.load(f)
