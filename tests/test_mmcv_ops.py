"""The pre-training check of mmcv's compiled ops (spre_mmdet.mmcv_ops), on CPU: a GPU machine is
simulated by patching torch.cuda.is_available and what mmcv reports."""
import runpy
import sys

import pytest
import torch

from spre_mmdet import mmcv_ops
from spre_mmdet.errors import StackError
from spre_mmdet.mmcv_ops import check_mmcv_ops, mmcv_ops_problem


@pytest.fixture
def gpu_machine(monkeypatch):
    """torch sees a GPU; returns a setter for what mmcv's ops report."""
    import mmcv.ops
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.version, 'cuda', '13.0')
    calls = []
    monkeypatch.setattr(mmcv_ops, '_run_cuda_op', lambda: calls.append('nms'))

    def set_compiled(version):
        monkeypatch.setattr(mmcv.ops, 'get_compiling_cuda_version', lambda: version)
    return set_compiled, calls


def test_cpu_run_needs_no_cuda_ops():
    """On CPU the installed ops (CPU build here) are enough."""
    assert mmcv_ops_problem(cuda=False) is None


def test_cpu_only_mmcv_refused_on_gpu(gpu_machine):
    set_compiled, calls = gpu_machine
    set_compiled('not available')
    problem = mmcv_ops_problem()
    assert 'built without CUDA ops' in problem and "'not available'" in problem
    assert 'scripts/install.sh' in problem and 'scripts/build_mmcv_cuda.sh' in problem
    assert 'SPRE_MMDET_CPU=1 CUDA_VISIBLE_DEVICES=""' in problem
    with pytest.raises(StackError, match='built without CUDA ops'):
        check_mmcv_ops()
    assert calls == []  # refused before touching the GPU


def test_cuda_mmcv_accepted_after_one_op(gpu_machine):
    set_compiled, calls = gpu_machine
    set_compiled('13.0')
    assert mmcv_ops_problem() is None
    assert calls == ['nms']
    assert mmcv_ops_problem(run_op=False) is None and calls == ['nms']


def test_cuda_major_mismatch_refused(gpu_machine):
    set_compiled, _ = gpu_machine
    set_compiled('12.1')
    assert 'built with CUDA 12.1' in mmcv_ops_problem()


def test_op_failing_on_this_gpu_refused(gpu_machine, monkeypatch):
    set_compiled, _ = gpu_machine
    set_compiled('13.0')

    def no_kernel():
        raise RuntimeError('CUDA error: no kernel image is available for execution on the '
                           'device\nmore lines')
    monkeypatch.setattr(mmcv_ops, '_run_cuda_op', no_kernel)
    problem = mmcv_ops_problem()
    assert 'no kernel image is available' in problem and 'TORCH_CUDA_ARCH_LIST' in problem
    assert 'more lines' not in problem


def test_classification_configs_need_no_ops(gpu_machine):
    from mmengine.config import Config
    set_compiled, _ = gpu_machine
    set_compiled('not available')
    check_mmcv_ops(Config(dict(default_scope='mmpretrain')))
    with pytest.raises(StackError):
        check_mmcv_ops(Config(dict(default_scope='mmdet')))


@pytest.mark.parametrize('tool,args', [
    ('train.py', ['configs/mask_rcnn_r18_dense_toy.py']),
    ('test.py', ['configs/mask_rcnn_r18_dense_toy.py', 'missing.pth'])])
def test_tools_refuse_before_the_runner(gpu_machine, repo_root, monkeypatch, capsys, tmp_path,
                                        tool, args):
    """tools/train.py and tools/test.py print the refusal as one ERROR line and exit 1 before
    the dataset, the checkpoint or the runner is looked at."""
    set_compiled, _ = gpu_machine
    set_compiled('not available')
    from mmengine.runner import Runner

    def no_runner(*a, **k):
        raise AssertionError('the runner was built')
    monkeypatch.setattr(Runner, 'from_cfg', no_runner)
    monkeypatch.chdir(repo_root)
    monkeypatch.setattr(sys, 'argv', [tool, *args, '--work-dir', str(tmp_path)])
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(repo_root / 'tools' / tool), run_name='__main__')
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith('ERROR: mmcv') and 'built without CUDA ops' in err
