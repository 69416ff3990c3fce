"""Run a script of ``tools/`` as ``python tools/<name>.py ARGS`` would, in a new process, without
paying for the interpreter start and the torch / mmengine / mmdet imports on every run.

On a machine where torch sees no CUDA GPU (CI), each run is a process forked from a server
that has imported those libraries once (the standard library's ``forkserver`` start method
with preloaded modules). The run is still a process of its own: its own ``sys.argv``,
``sys.path`` (the script's folder, then ``PYTHONPATH``, then the interpreter's), working
folder, environment, stdout/stderr and exit status; the script runs as ``__main__``. What a
forked run shares with the server is what the imports fixed: the modules themselves and the
thread count they read (reset here from ``OMP_NUM_THREADS``).

Where torch sees a GPU each run is a fresh interpreter (``subprocess``): mmengine and mmcv ask
CUDA for devices at import, and a process forked after that cannot use CUDA.

Tests of the interpreter start itself (a non-editable install, ``python -m`` launchers,
``torchrun``, shell scripts) use ``subprocess`` directly.
"""
import json
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

#: imported once by the fork server: only what every tool of this project imports itself at
#: start (through ``spre_mmdet``), so that a preloaded module never registers something a
#: config forgot to import. A script that must not see these (tools/test_stock_mmdet.py) runs
#: with ``fresh=True``.
PRELOAD = ['torch', 'torchvision', 'mmengine.runner', 'mmcv.ops', 'mmdet.models',
           'mmdet.datasets', 'mmdet.evaluation', 'mmpretrain.models', 'pycocotools.coco',
           'spre_mmdet', 'spre_mmdet.models', 'spre_mmdet.hooks', 'spre_mmdet.deploy',
           'spre_mmdet.checkpoint']

_state: Dict[str, object] = {}


def _forking() -> bool:
    if 'forking' not in _state:
        import torch
        _state['forking'] = not torch.cuda.is_available()
    return bool(_state['forking'])


def _interpreter_path() -> List[str]:
    """``sys.path`` of a plain ``python script.py`` after the script's folder (no
    ``PYTHONPATH``), measured once."""
    if 'path' not in _state:
        env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
        out = subprocess.run([sys.executable, '-c', 'import json, sys; print(json.dumps('
                              'sys.path[1:]))'], env=env, capture_output=True, text=True,
                             check=True, cwd=tempfile.gettempdir()).stdout
        _state['path'] = json.loads(out)
    return _state['path']  # type: ignore[return-value]


def _context():
    if 'context' not in _state:
        context = multiprocessing.get_context('forkserver')
        context.set_forkserver_preload(PRELOAD)
        _state['context'] = context
    return _state['context']


def _run_script(script: str, args: Sequence[str], env: Dict[str, str], cwd: str,
                out_path: str, err_path: str, interpreter_path: List[str]) -> None:
    """In the forked process: become ``python script args`` and run it."""
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    import torch
    torch.set_num_threads(int(env['OMP_NUM_THREADS']))
    script = os.path.abspath(script)
    python_path = [os.path.abspath(p) for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    sys.path[:] = [os.path.dirname(script), *python_path, *interpreter_path]
    sys.argv = [script, *args]
    runpy.run_path(script, run_name='__main__')


def run_tool_process(command: Sequence[object], env: Dict[str, str], cwd: Optional[object] = None,
                     timeout: float = 900, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run ``python *command`` (``command[0]`` a script, relative to ``cwd`` or absolute) with
    ``env`` (which must set ``OMP_NUM_THREADS``) in ``cwd``; return its exit status and
    output as :func:`subprocess.run` with ``capture_output=True, text=True`` would.
    ``fresh=True``: always a fresh interpreter (for a script that must not find
    :data:`PRELOAD` imported)."""
    command = [str(c) for c in command]
    cwd = str(cwd or os.getcwd())
    if 'OMP_NUM_THREADS' not in env:
        raise ValueError('run_tool_process: set OMP_NUM_THREADS in env (a forked run cannot '
                         'take the default thread count of a fresh interpreter).')
    if fresh or not _forking():
        return subprocess.run([sys.executable, *command], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix='tool_process_') as folder:
        out_path, err_path = os.path.join(folder, 'stdout'), os.path.join(folder, 'stderr')
        for path in (out_path, err_path):
            open(path, 'w').close()
        script = command[0] if os.path.isabs(command[0]) else os.path.join(cwd, command[0])
        process = _context().Process(
            target=_run_script,
            args=(script, command[1:], dict(env), cwd, out_path, err_path, _interpreter_path()))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired([sys.executable, *command], timeout)
        code = process.exitcode
        process.close()
        with open(out_path) as out, open(err_path) as err:
            return subprocess.CompletedProcess([sys.executable, *command], code, out.read(),
                                               err.read())
