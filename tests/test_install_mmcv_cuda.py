"""scripts/install.sh on a GPU machine, simulated on CPU: an interpreter wrapper makes torch see a
GPU and mmcv report how its ops were compiled (sitecustomize), and takes every ``-m pip`` call
(recorded, never run: nothing is installed). Checks that a CPU-only mmcv is not accepted where
torch sees a GPU: the install goes to scripts/build_mmcv_cuda.sh for the local architecture and,
when that cannot build, stops with the reason and the fix; a CUDA mmcv is left alone."""
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow,  # a dozen interpreter starts importing torch and mmcv
              pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')]

SITECUSTOMIZE = textwrap.dedent('''\
    import os
    if os.environ.get('FAKE_GPU_MMCV_CUDA'):
        import torch
        torch.cuda.is_available = lambda: True
        torch.cuda.device_count = lambda: 1
        torch.cuda.get_device_name = lambda *a: 'Fake H100'
        torch.cuda.get_device_capability = lambda *a: (9, 0)
        import mmcv.ops
        mmcv.ops.get_compiling_cuda_version = lambda: os.environ['FAKE_GPU_MMCV_CUDA']
''')

FAKE_PYTHON = textwrap.dedent('''\
    #!/usr/bin/env bash
    # the real interpreter, except that `-m pip ...` is recorded and answered (download: no
    # prebuilt wheel found; anything else: success)
    if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
        echo "${{*:3}}" >> "$FAKE_PIP_LOG"
        [ "$3" = "download" ] && exit 1
        exit 0
    fi
    exec {python} "$@"
''')


@pytest.fixture
def fake_gpu_env(tmp_path, subprocess_env):
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    python = tmp_path / 'python'
    python.write_text(FAKE_PYTHON.format(python=sys.executable))
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    env = dict(subprocess_env)
    env['PYTHONPATH'] = os.pathsep.join([str(site), env['PYTHONPATH']])
    env.update(PYTHON=str(python), FAKE_PIP_LOG=str(tmp_path / 'pip.log'))
    for key in ('TORCH_CUDA_ARCH_LIST', 'CUDA_VISIBLE_DEVICES', 'MMCV_SDIST', 'BUILD_DIR'):
        env.pop(key, None)
    return env, tmp_path / 'pip.log'


def _install(repo_root, env):
    return subprocess.run(['bash', str(repo_root / 'scripts' / 'install.sh')], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=600)


def test_cpu_only_mmcv_on_gpu_goes_to_the_cuda_build_and_refuses_with_the_fix(
        repo_root, fake_gpu_env):
    env, pip_log = fake_gpu_env
    env['FAKE_GPU_MMCV_CUDA'] = 'not available'
    res = _install(repo_root, env)
    err = res.stderr
    assert res.returncode == 1, err[-3000:]
    assert 'mmcv.ops: built without CUDA ops, but torch sees a GPU' in err
    assert "torch sees a GPU: mmcv needs CUDA ops" in err
    assert "has no CUDA ops (get_compiling_cuda_version() is 'not available')" in err
    assert 'BUILDING mmcv 2.1.0 WITH CUDA OPS for this GPU' in err
    # the builder targets the local GPU's architecture and finds nvcc, or says why not
    if shutil.which('nvcc') or os.path.exists('/usr/local/cuda/bin/nvcc'):
        assert '[build-mmcv-cuda] TORCH_CUDA_ARCH_LIST=9.0 ' in err
        assert 'could not download the mmcv 2.1.0 source archive' in err
    assert 'mmcv 2.1.0 with CUDA ops could not be built' in err
    assert 'CUDA_VISIBLE_DEVICES=""' in err and 'PIP_FIND_LINKS' in err
    pip_calls = pip_log.read_text().splitlines()
    # no CPU mmcv was installed on the GPU machine, and nothing after the refusal
    assert not any(c.startswith('install') and 'mmcv' in c for c in pip_calls), pip_calls
    assert not any('mmdet' in c for c in pip_calls), pip_calls


def test_cuda_mmcv_on_gpu_is_left_alone(repo_root, fake_gpu_env):
    env, pip_log = fake_gpu_env
    env['FAKE_GPU_MMCV_CUDA'] = '13.0'
    res = _install(repo_root, env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'nothing to do' in res.stderr
    assert not pip_log.exists()
