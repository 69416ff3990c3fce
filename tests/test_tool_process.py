"""tests/tool_process.py, which the tests run the tools with, behaves as ``python script ARGS``:
the same argv, sys.path, working folder, environment, output and exit status as a fresh
interpreter, and a clean traceback-free exit for a SystemExit message. (Where torch sees a
GPU, run_tool_process starts a fresh interpreter itself, and this compares two of them.)"""
import os
import subprocess
import sys
import textwrap

import pytest

from tool_process import run_tool_process

pytestmark = pytest.mark.slow  # starts the fork server (imports torch, mmengine, mmdet once)

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import helper_module_on_pythonpath
    print(json.dumps(dict(name=__name__, argv=sys.argv, cwd=os.getcwd(), path=sys.path[:3],
                          marker=os.environ.get('TOOL_PROCESS_MARKER'),
                          helper=helper_module_on_pythonpath.__file__)))
    print('to stderr', file=sys.stderr)
    if sys.argv[1] == 'message':
        sys.exit('a message')
    if sys.argv[1] == 'raise':
        raise ValueError('boom')
    sys.exit(int(sys.argv[1]))
''')


@pytest.fixture
def case(tmp_path):
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'lib').mkdir()
    (tmp_path / 'work').mkdir()
    (tmp_path / 'bin' / 'tool.py').write_text(SCRIPT)
    (tmp_path / 'lib' / 'helper_module_on_pythonpath.py').write_text('')
    env = dict(os.environ, PYTHONPATH=str(tmp_path / 'lib'), OMP_NUM_THREADS='1',
               TOOL_PROCESS_MARKER='set for this run only')
    return tmp_path, env


@pytest.mark.parametrize('how', ['0', '3', 'message', 'raise'])
def test_same_as_a_fresh_interpreter(case, how):
    tmp_path, env = case
    script = tmp_path / 'bin' / 'tool.py'
    fresh = subprocess.run([sys.executable, str(script), how, 'x y'], cwd=tmp_path / 'work',
                           env=env, capture_output=True, text=True, timeout=120)
    forked = run_tool_process([script, how, 'x y'], env, cwd=tmp_path / 'work')
    assert forked.returncode == fresh.returncode == {'0': 0, '3': 3}.get(how, 1)
    assert forked.stdout == fresh.stdout and '"marker": "set for this run only"' in fresh.stdout
    if how == 'raise':  # both print the traceback; the forked one has a header line first
        assert fresh.stderr.strip().endswith('ValueError: boom')
        assert forked.stderr.strip().endswith('ValueError: boom')
    else:
        assert forked.stderr == fresh.stderr
    assert os.environ.get('TOOL_PROCESS_MARKER') is None


def test_relative_script_and_missing_thread_count(case):
    tmp_path, env = case
    forked = run_tool_process(['bin/tool.py', '0'], env, cwd=tmp_path)
    assert forked.returncode == 0 and f'"cwd": "{tmp_path}"' in forked.stdout
    with pytest.raises(ValueError, match='OMP_NUM_THREADS'):
        run_tool_process(['bin/tool.py', '0'], {'PATH': os.environ['PATH']}, cwd=tmp_path)


def test_timeout_kills_the_run(case):
    tmp_path, env = case
    pid_file = tmp_path / 'pid'
    (tmp_path / 'bin' / 'sleep.py').write_text(
        f'import os, time\nopen({str(pid_file)!r}, "w").write(str(os.getpid()))\ntime.sleep(60)\n')
    with pytest.raises(subprocess.TimeoutExpired):
        run_tool_process([tmp_path / 'bin' / 'sleep.py'], env, timeout=5)
    with pytest.raises(ProcessLookupError):  # gone, not left running
        os.kill(int(pid_file.read_text()), 0)


def test_stock_tool_refuses_a_process_with_spre_mmdet_imported(case, repo_root):
    """tools/test_stock_mmdet.py guarantees stock mmdet by blocking spre_mmdet imports, which
    cannot work where spre_mmdet is already imported (as in a forked run): it refuses there,
    so the tests must run it fresh (e2e_tools.run_stock)."""
    tmp_path, env = case
    tool = repo_root / 'tools' / 'test_stock_mmdet.py'
    config = repo_root / 'configs' / 'mask_rcnn_r18_dense_toy.py'
    code = ('import runpy, sys; import spre_mmdet; '
            f'sys.argv = [{str(tool)!r}, {str(config)!r}, "x.pth"]; '
            f'runpy.run_path({str(tool)!r}, run_name="__main__")')
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert 'spre_mmdet is already imported' in result.stderr
    assert 'fresh interpreter' in result.stderr and 'Traceback' not in result.stderr
