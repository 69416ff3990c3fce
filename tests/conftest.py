"""Shared pytest set-up for spre-mmdet.

* ``spre_mmdet`` is imported first so its compat fixes are active in every test.
* Tests marked ``cuda`` are skipped when no CUDA GPU is available.
* ``SPRE_MMDET_CPU=1``: CPU training is asked for (also by the tools the tests launch).
* Under pytest-xdist (``make test`` runs ``-n auto``) each worker runs torch on one thread
  (``OMP_NUM_THREADS=1`` unless set): the workers share the cores instead of oversubscribing
  them.
* Fixtures: ``repo_root`` (checkout root), ``free_port`` (an unused TCP port on localhost),
  ``toy_runner_case`` (mmengine's RunnerTestCase set up/torn down around a test).
"""
import os
import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if 'PYTEST_XDIST_WORKER' in os.environ:  # before torch is imported
    os.environ.setdefault('OMP_NUM_THREADS', '1')
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import spre_mmdet  # noqa: E402,F401  (applies spre_mmdet.compat)

# The tests train on this machine's CPU on purpose, distributed runs included (gloo); the tests
# of the refusal to train on CPU unasked remove it (spre_mmdet.device).
os.environ.setdefault('SPRE_MMDET_CPU', '1')


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def toy_runner_case():
    """mmengine's RunnerTestCase (toy model/dataset/metric registered, globals cleaned)."""
    from mmengine.testing import RunnerTestCase
    case = RunnerTestCase()
    case.setUp()
    try:
        yield case
    finally:
        case.tearDown()


@pytest.fixture
def subprocess_env(repo_root):
    """Environment for running the tools in a subprocess (repo on PYTHONPATH, 1 thread)."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (str(repo_root), env.get('PYTHONPATH', '')) if p)
    env.setdefault('OMP_NUM_THREADS', '1')
    env.pop('SPRE_MMDET_TRUST_CHECKPOINTS', None)
    return env
