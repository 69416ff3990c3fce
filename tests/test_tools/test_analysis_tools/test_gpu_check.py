"""The GPU check (``tools/analysis_tools/gpu_check.py``) without a GPU: the step runner with
stand-in steps (order, the JSON after every step, failures, time limits, the budget, SIGTERM),
the command line, the step table and the library calls it makes, and the parts of the steps
that run on a CPU (the AMP iteration with a stand-in wrapper and sync-mode setter, the GEMM
layers, the TensorRT refusal, the CUDA test selection, the shell wrapper). The steps' GPU work
itself (kernels, AmpOptimWrapper, set_sync_debug_mode, TensorRT) runs only on a GPU.
"""
import functools
import inspect
import json
import subprocess
import sys
import time
import warnings

import gpu_check as gc
import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from spre_mmdet.benchmark.torchvision_r50 import GEMM_LAYERS, METHODS, r50_gemm_shapes
from spre_mmdet.sparsity import check_nm_tensor


def small_resnet(num_classes: int = 10) -> nn.Module:
    """torchvision's Bottleneck ResNet at widths 8..32 (R-50's structure at a CPU's cost)."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes)
    model.inplanes = 16
    model.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(16)
    for i, width in enumerate((8, 16, 16, 32)):
        setattr(model, f'layer{i + 1}', model._make_layer(Bottleneck, width, 1,
                                                            stride=1 if i == 0 else 2))
    model.fc = nn.Linear(32 * Bottleneck.expansion, num_classes)
    return model


def read(path):
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------ runner
def test_steps_run_in_order_and_the_json_is_written_after_each(tmp_path):
    """Each step finds the JSON already holding the previous step's final record and its own
    as running; the last write holds every step, with the figures each returned."""
    path = tmp_path / 'out' / 'gpu_check.json'
    seen = []

    def stand_in(name):
        def run(ctx):
            data = read(path)
            seen.append((name, {k: v['status'] for k, v in data['steps'].items()}))
            ctx.setdefault('order', []).append(name)
            return dict(summary=f'{name} done', value=len(ctx['order']))
        return run

    steps = [gc.Step(n, stand_in(n), 10, 0) for n in ('a', 'b', 'c')]
    report = gc.run_steps(steps, str(path), 60, dict(x=1), log=lambda line: None)
    assert seen == [('a', {'a': 'running'}), ('b', {'a': 'ok', 'b': 'running'}),
                    ('c', {'a': 'ok', 'b': 'ok', 'c': 'running'})]
    data = read(path)
    assert data == json.loads(json.dumps(report))
    assert data['status'] == 'passed' and data['order'] == ['a', 'b', 'c']
    assert [data['steps'][n]['result']['value'] for n in 'abc'] == [1, 2, 3]
    assert data['meta']['x'] == 1 and data['meta']['budget_s'] == 60
    assert gc.exit_code(report) == gc.EXIT_OK


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    """An exception is an ``error`` with its traceback, returned problems are ``failed``,
    ``unavailable`` does not fail the run, and the steps after them still run."""
    def broken(ctx):
        raise ValueError('no such kernel')

    def unavailable(ctx):
        raise gc.Unavailable('tensorrt is not installed')

    steps = [gc.Step('broken', broken, 10, 0),
             gc.Step('problems', lambda ctx: dict(problems=['2:4 output off']), 10, 0),
             gc.Step('missing', unavailable, 10, 0),
             gc.Step('last', lambda ctx: dict(summary='fine'), 10, 0)]
    lines = []
    report = gc.run_steps(steps, str(tmp_path / 'r.json'), 60, {}, log=lines.append)
    rec = report['steps']
    assert [rec[n]['status'] for n in ('broken', 'problems', 'missing', 'last')] == [
        'error', 'failed', 'unavailable', 'ok']
    assert rec['broken']['error'] == 'ValueError: no such kernel'
    assert 'raise ValueError' in rec['broken']['traceback']
    assert rec['missing']['reason'] == 'tensorrt is not installed'
    assert report['status'] == 'failed' and gc.exit_code(report) == gc.EXIT_FAILED
    assert any(line.startswith('broken') and 'ERROR' in line for line in lines)
    only_unavailable = gc.run_steps(steps[2:], str(tmp_path / 'u.json'), 60, {},
                                    log=lambda line: None)
    assert only_unavailable['status'] == 'passed'


def test_a_step_past_its_limit_is_stopped_and_the_next_one_runs(tmp_path):
    """A step's own limit stops it (``timeout``) even inside a library's ``except
    Exception``; the run goes on at once."""
    def slow(ctx):
        try:
            time.sleep(5)
        except Exception:  # noqa: BLE001  (what library code does; must not swallow it)
            pass
        return {}

    began = time.monotonic()
    report = gc.run_steps([gc.Step('slow', slow, 0.3, 0),
                           gc.Step('next', lambda ctx: {}, 10, 0)],
                          str(tmp_path / 'r.json'), 60, {}, log=lambda line: None)
    assert time.monotonic() - began < 3
    assert report['steps']['slow']['status'] == 'timeout'
    assert 'time limit of 0s' in report['steps']['slow']['error']
    assert report['steps']['next']['status'] == 'ok'


def test_the_budget_skips_later_steps_with_a_reason(tmp_path):
    """A step that would start with less budget left than it needs is skipped and says why;
    a step's limit is cut to what is left."""
    now = [0.0]

    def takes(seconds):
        def run(ctx):
            now[0] += seconds
            return {}
        return run

    steps = [gc.Step('first', takes(70), 200, 10), gc.Step('second', takes(5), 200, 40),
             gc.Step('third', takes(1), 200, 10)]
    report = gc.run_steps(steps, str(tmp_path / 'r.json'), 100, {}, log=lambda line: None,
                          clock=lambda: now[0])
    rec = report['steps']
    assert rec['first']['limit_s'] == 100 and rec['first']['status'] == 'ok'
    assert rec['second']['status'] == 'skipped'
    assert rec['second']['reason'] == ('time budget: 30s of 100s left, the step needs at '
                                       'least 40s')
    assert rec['third']['status'] == 'ok' and rec['third']['limit_s'] == 30
    assert report['status'] == 'failed'  # work left out is not a pass


def test_sigterm_ends_the_run_and_keeps_what_finished(tmp_path):
    """SIGTERM (the wrapper's limit) in a step: that step is ``terminated``, the rest
    ``not_run``, the steps done stay, and the exit status is 124."""
    def stopped(ctx):
        raise gc.Terminated()

    path = tmp_path / 'r.json'
    report = gc.run_steps([gc.Step('done', lambda ctx: dict(summary='kept'), 10, 0),
                           gc.Step('cut', stopped, 10, 0), gc.Step('after', dict, 10, 0)],
                          str(path), 60, {}, log=lambda line: None)
    data = read(path)
    assert data['status'] == 'terminated' and gc.exit_code(report) == gc.EXIT_TERMINATED
    assert [data['steps'][n]['status'] for n in ('done', 'cut', 'after')] == [
        'ok', 'terminated', 'not_run']
    assert data['steps']['done']['result']['summary'] == 'kept'


# --------------------------------------------------------------------------------------- CLI
def test_main_refuses_without_cuda(tmp_path, monkeypatch, capsys):
    """No CUDA GPU: one line on stderr, exit status 2, no JSON."""
    monkeypatch.setattr(gc, 'cuda_available', lambda: False)
    assert gc.main(['--out', str(tmp_path / 'g.json')]) == gc.EXIT_NO_CUDA
    out = capsys.readouterr()
    assert out.err.strip() == gc.NO_CUDA_MESSAGE and out.out == ''
    assert not (tmp_path / 'g.json').exists()


def test_main_runs_the_chosen_steps_and_prints_the_summary_last(tmp_path, monkeypatch,
                                                                capsys):
    """``--only`` keeps the table's order; the summary (every step, then the problems) is the
    last output; SIGTERM's handler is restored afterwards."""
    def fake_steps(args):
        return [gc.Step(name, lambda ctx, name=name: dict(
            summary=f'{name} figures', problems=['slow'] if name == 'gemm' else []), 10, 0)
            for name in gc.STEP_NAMES]

    monkeypatch.setattr(gc, 'cuda_available', lambda: True)
    monkeypatch.setattr(gc, 'build_steps', fake_steps)
    handler = gc.signal.getsignal(gc.signal.SIGTERM)
    out = tmp_path / 'g.json'
    code = gc.main(['--out', str(out), '--only', 'tensorrt', 'gemm'])
    assert code == gc.EXIT_FAILED and gc.signal.getsignal(gc.signal.SIGTERM) == handler
    data = read(out)
    assert data['order'] == ['gemm', 'tensorrt'] and data['meta']['argv'][-1] == 'gemm'
    text = capsys.readouterr().out.strip().splitlines()
    assert text[-1] == '  PROBLEM gemm: slow'
    assert text[-4].startswith('gpu_check: FAILED') and text[-4].endswith(f'JSON: {out}')
    assert 'tensorrt figures' in text[-2]


def test_parse_args_defaults_and_step_names():
    args = gc.parse_args([])
    assert args.out == 'work_dirs/gpu_check/gpu_check.json' and args.budget_s == 320
    assert args.only is None and (args.warmup, args.repeats) == (5, 15)
    with pytest.raises(SystemExit):
        gc.parse_args(['--only', 'no_such_step'])


# ---------------------------------------------------------------------------- the step table
def test_every_step_is_a_function_of_the_script_with_arguments_it_takes():
    """The table is in priority order, each entry one of the script's step functions bound to
    the command line's values, callable with the run's context; the smallest budgets of all
    steps fit in the default budget."""
    args = gc.parse_args(['--warmup', '3', '--repeats', '7', '--train-batch', '4',
                          '--train-size', '96', '--trt-iters', '11'])
    steps = gc.build_steps(args)
    assert tuple(s.name for s in steps) == gc.STEP_NAMES
    expected = {
        'environment': (gc.step_environment, {}),
        'gemm': (gc.step_gemm, dict(warmup=3, repeats=7)),
        'train_amp': (gc.step_train_amp, dict(batch=4, size=96)),
        'benchmark_b1': (gc.step_benchmark, dict(batch=1, warmup=3, repeats=7)),
        'benchmark_b8': (gc.step_benchmark, dict(batch=8, warmup=3, repeats=7)),
        'tensorrt': (gc.step_tensorrt, dict(warmup=3, iters=11)),
        'cuda_tests': (gc.step_cuda_tests, {}),
    }
    for step in steps:
        func, keywords = expected[step.name]
        run = step.run
        if isinstance(run, functools.partial):
            assert (run.func, run.args, run.keywords) == (func, (), keywords), step.name
        else:
            assert (run, keywords) == (func, {}), step.name
        inspect.signature(func).bind({}, **keywords)
        assert 0 < step.min_s <= step.limit_s
    assert sum(s.min_s for s in steps) <= args.budget_s


def test_the_library_calls_take_the_arguments_the_steps_give():
    """The detector benchmark's arguments are the tool's (parsed by its own parser), and the
    library functions the steps call accept what they are given."""
    from spre_mmdet.benchmark import bench_layer_cuda, sparse_tool
    from spre_mmdet.export import benchmark_tensorrt, benchmark_tensorrt_module
    from spre_mmdet.sparsity import register_srste_decay
    args = sparse_tool.parse_args(gc.detector_argv(
        {'deploy_config.py': 'd/deploy_config.py', 'deploy.pth': 'd/deploy.pth'}, 8, 3, 7, 'o'))
    assert (args.config, args.checkpoint, args.out_dir) == ('d/deploy_config.py',
                                                            'd/deploy.pth', 'o')
    assert (args.input_size, args.dtype, args.batch_size, args.scope, args.device) == (
        [800, 1333], 'fp16', 8, 'detector', 'cuda')
    assert (args.warmup, args.repeats) == (3, 7)
    inspect.signature(bench_layer_cuda).bind(nn.Conv2d(4, 4, 1), [(1, 4, 8, 8)],
                                             torch.float16, 'auto', 3, 7)
    inspect.signature(benchmark_tensorrt_module).bind(nn.Identity(), (800, 1344), 'tmp',
                                                      batch=1, warmup=3, iters=11)
    inspect.signature(benchmark_tensorrt).bind('x.onnx', warmup=3, iters=11)
    inspect.signature(register_srste_decay).bind(nn.Identity(), object())


# ------------------------------------------------------------------- the steps' CPU-side parts
class RecordingModes(list):
    """Stands in for torch.cuda.set_sync_debug_mode (which needs a GPU): records the modes."""

    def __call__(self, mode):
        self.append(mode)


def plain_wrapper(optimizer):
    from mmengine.optim import OptimWrapper
    return OptimWrapper(optimizer=optimizer)


@pytest.mark.parametrize('name', ['srste', 'spre_lbc'])
def test_amp_iteration_trains_and_checks_each_phase(name):
    """The iteration with a stand-in wrapper (AmpOptimWrapper needs a GPU): two finite losses,
    the three phases under 'error', 'warn', 'error' (reset after each), no sync on a CPU, and
    every mask final and exactly 2:4 after the refresh (LBC frozen after iteration 1)."""
    spec = next(s for s in METHODS if s.name == name)
    modes = RecordingModes()
    run = gc.amp_iteration(spec, small_resnet(), 'cpu', 2, 32, plain_wrapper, modes)
    assert run['problems'] == [] and run['num_syncs'] == 0
    assert len(run['losses']) == 2 and all(torch.isfinite(torch.tensor(run['losses'])))
    assert modes == ['error', 0, 'warn', 0, 'error', 0]
    assert list(run['phases']) == ['forward_backward', 'optimizer_step', 'refresh_masks']


@pytest.mark.filterwarnings('ignore::UserWarning', 'ignore::FutureWarning')
def test_the_wrapper_is_mmengines_amp_optim_wrapper_in_fp16(monkeypatch):
    """What the GPU step trains with (mmengine refuses to build it without a GPU, so its check
    is passed here): AmpOptimWrapper, fp16 autocast, a GradScaler."""
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp
    monkeypatch.setattr(amp, 'is_cuda_available', lambda: True)
    wrapper = gc.amp_wrapper(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    assert isinstance(wrapper, amp.AmpOptimWrapper) and wrapper.cast_dtype == torch.float16
    assert isinstance(wrapper.loss_scaler, torch.amp.GradScaler)


def _package_code(name: str, body: str):
    """A function whose code lives (by its file name) inside the spre_mmdet package."""
    namespace = {'warnings': warnings, 'MESSAGE': gc.SYNC_MESSAGE}
    exec(compile(f'def {name}():\n    {body}\n', gc.PACKAGE_DIR + 'sparsity/fake_sync.py',
                 'exec'), namespace)
    return namespace[name]


def _wrapper_with(before_step=None, backward=None):
    """A plain wrapper calling ``before_step()`` at the start of its step (where GradScaler
    checks for inf) or ``backward(loss)`` in place of its backward."""
    def make(optimizer):
        wrapper = plain_wrapper(optimizer)
        if before_step is not None:
            step = wrapper.step
            wrapper.step = lambda: (before_step(), step())
        if backward is not None:
            wrapper.backward = backward
        return wrapper
    return make


@pytest.mark.filterwarnings(f'ignore:{gc.SYNC_MESSAGE}')  # the unguarded warm-up iteration's
def test_syncs_are_recorded_with_their_origin():
    """A sync in the optimizer step ('warn') is recorded; it is a problem only when this
    package's code is on its stack (GradScaler's own inf check is not)."""
    spec = METHODS[0]

    def torch_like_sync():
        warnings.warn(gc.SYNC_MESSAGE)

    run = gc.amp_iteration(spec, small_resnet(), 'cpu', 2, 32,
                           _wrapper_with(before_step=torch_like_sync), RecordingModes())
    (sync,) = run['phases']['optimizer_step']['syncs']
    assert 'test_gpu_check.py' in sync['where'] and sync['package_line'] is None
    assert run['problems'] == [] and run['num_syncs'] == 1
    package_sync = _package_code('decay', 'warnings.warn(MESSAGE)')
    run = gc.amp_iteration(spec, small_resnet(), 'cpu', 2, 32,
                           _wrapper_with(before_step=package_sync), RecordingModes())
    (sync,) = run['phases']['optimizer_step']['syncs']
    assert sync['package_line'].startswith('spre_mmdet/sparsity/fake_sync.py:2 (decay)')
    assert sync['where'] == sync['package_line']
    assert run['problems'] == [f'optimizer_step: sync at {sync["where"]}']


def test_a_sync_error_stops_the_iteration_and_is_a_problem():
    """Under 'error' a sync raises: the phase records it with its origin, the later phases do
    not run, the masks are not checked, and the run has the problem."""
    raise_sync = _package_code('lbc_step', 'raise RuntimeError(MESSAGE)')
    calls = []

    def backward(loss):
        calls.append(1)
        loss.backward()
        if len(calls) > 1:  # the warm-up iteration passes, the checked one syncs
            raise_sync()

    run = gc.amp_iteration(METHODS[0], small_resnet(), 'cpu', 2, 32,
                           _wrapper_with(backward=backward), RecordingModes())
    assert list(run['phases']) == ['forward_backward']
    assert run['phases']['forward_backward']['error'] == gc.SYNC_MESSAGE
    assert len(run['losses']) == 1
    assert run['problems'] == ['forward_backward: sync at spre_mmdet/sparsity/fake_sync.py:2 '
                               '(lbc_step)']


def test_a_skipped_optimizer_step_is_a_problem():
    """A step GradScaler skips leaves SR-STE's decay unexercised: reported."""
    def make(optimizer):
        wrapper = plain_wrapper(optimizer)
        wrapper.step = lambda: None
        return wrapper

    run = gc.amp_iteration(METHODS[0], small_resnet(), 'cpu', 2, 32, make, RecordingModes())
    assert run['problems'] == ['GradScaler skipped the optimizer step (inf/NaN gradients): '
                               'the decay hook did not run']


def test_sync_guarded_passes_other_errors_and_warnings_on():
    """Only torch's sync message is taken; other errors propagate, other warnings are
    shown as usual, and the mode is reset even then."""
    modes = RecordingModes()
    with pytest.raises(RuntimeError, match='CUDA out of memory'):
        gc.sync_guarded('error', lambda: (_ for _ in ()).throw(
            RuntimeError('CUDA out of memory')), modes)
    assert modes == ['error', 0]
    with pytest.warns(UserWarning, match='unrelated'):
        value, rec = gc.sync_guarded('warn', lambda: warnings.warn('unrelated') or 5, modes)
    assert value == 5 and rec == dict(mode='warn', syncs=[], error=None)


def test_train_step_runs_every_method_and_names_each_problem(monkeypatch):
    """The step runs every method in the table (a crash is that method's problem)."""
    seen = []

    def stand_in(spec, base, device, batch, size, **kwargs):
        seen.append((spec.name, device, batch, size))
        if spec.name == 'asp':
            raise RuntimeError('boom')
        return dict(method=spec.name, num_syncs=0, problems=['x'] if spec.name == 'lbc' else [])

    monkeypatch.setattr(gc, 'amp_iteration', stand_in)
    result = gc.step_train_amp({}, 2, 32, device='cpu', base=nn.Linear(1, 1))
    assert seen == [(s.name, 'cpu', 2, 32) for s in METHODS]
    assert result['problems'] == ['asp: crashed: RuntimeError: boom', 'lbc: x']


def test_gemm_layers_are_r50s_with_2of4_weights():
    """The GEMM step's layers: R-50's, 2:4 in the hardware layout, shaped for the inputs
    r50_gemm_shapes gives them."""
    modules = gc.gemm_modules('cpu', torch.float32)
    assert list(modules) == list(GEMM_LAYERS)
    for shape in r50_gemm_shapes(*gc.INPUT_SIZE, 1):
        module = modules[shape['name']]
        assert check_nm_tensor(module.weight, 2, 4).ok
        assert module.in_channels == shape['in_shape'][1]
        assert shape['N'] == module.out_channels


def test_benchmark_problems_name_what_is_missing_or_wrong():
    report = dict(layers=[dict(name='a', sparse_ms=1.0, numerics=dict(ok=True)),
                          dict(name='b', sparse_ms=None, note='no kernel'),
                          dict(name='c', sparse_ms=1.0, numerics=dict(ok=False))],
                  end_to_end={'backbone': dict(dense_ms=2.0, dispatch_ms=None, all_sparse_ms=1.0,
                                               note='capture failed')})
    problems = gc.benchmark_problems(report)
    assert problems[0] == 'b: no 2:4 timing (no kernel)'
    assert problems[1].startswith('c: 2:4 output outside the tolerance')
    assert problems[2] == 'backbone dispatch: no time (capture failed)'


def test_tensorrt_step_is_unavailable_here():
    """Without TensorRT or a GPU the step says why and exports nothing."""
    ctx = {}
    with pytest.raises(gc.Unavailable, match='tensorrt|GPU'):
        gc.step_tensorrt(ctx, warmup=1, iters=1)
    assert 'tmp' not in ctx


def test_cuda_test_selection_and_junit_counts(tmp_path):
    assert 'tests/test_benchmark/test_cuda.py' in gc.cuda_test_files()
    assert 'tests/test_tools/test_analysis_tools/test_gpu_check.py' not in gc.cuda_test_files()
    xml = tmp_path / 'j.xml'
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a"/>'
                   '<testcase classname="t" name="b"><skipped message="no GPU"/></testcase>'
                   '<testcase classname="t" name="c"><failure message="x"/></testcase>'
                   '</testsuite></testsuites>')
    counts = gc.junit_counts(str(xml))
    assert (counts['total'], counts['passed'], counts['skipped'], counts['failed']) == (3, 1, 1, 1)
    assert counts['not_passed'] == ['t::b: skipped', 't::c: failed']


@pytest.mark.slow  # pytest in a fresh interpreter (~10 s)
def test_cuda_tests_step_counts_every_skip_as_a_problem_here():
    """The real pytest run selects the tests marked cuda; here each is skipped, which the
    step reports as not passed."""
    ctx = {}
    try:
        result = gc.step_cuda_tests(ctx)
    finally:
        gc.shutil.rmtree(ctx['tmp'], ignore_errors=True)
    assert result['total'] > 0 and result['skipped'] == result['total']
    assert len(result['problems']) == result['total']
    assert ' -m cuda ' in result['command']


@pytest.mark.slow  # the wrapper starts a fresh interpreter (~10 s)
def test_wrapper_installs_the_carried_wheels_and_reports_the_refusal(tmp_path, repo_root,
                                                                     subprocess_env):
    """scripts/gpu_check.sh installs every carried wheel into its site folder, runs the check
    with it on PYTHONPATH, and passes on the check's exit status (2 without CUDA)."""
    import zipfile
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    with zipfile.ZipFile(wheels / 'carried_probe-0.1-py3-none-any.whl', 'w') as whl:
        whl.writestr('carried_probe/__init__.py', 'VALUE = 1\n')
        whl.writestr('carried_probe-0.1.dist-info/METADATA',
                     'Metadata-Version: 2.1\nName: carried-probe\nVersion: 0.1\n')
        whl.writestr('carried_probe-0.1.dist-info/WHEEL',
                     'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n'
                     'Tag: py3-none-any\n')
        whl.writestr('carried_probe-0.1.dist-info/RECORD', '')
    site, out = tmp_path / 'site', tmp_path / 'out' / 'check.json'
    env = dict(subprocess_env, CUDA_VISIBLE_DEVICES='', PYTHON=sys.executable,
               GPU_CHECK_WHEELS=str(wheels), GPU_CHECK_SITE=str(site))
    proc = subprocess.run(['bash', str(repo_root / 'scripts' / 'gpu_check.sh'), str(out)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == gc.EXIT_NO_CUDA, proc.stdout + proc.stderr
    assert (site / 'carried_probe' / '__init__.py').exists()
    log = (tmp_path / 'out' / 'check.log').read_text()
    assert 'installing 1 carried wheel(s)' in log and 'budget' in log
    assert gc.NO_CUDA_MESSAGE in log and 'exit status 2' in log
    assert not out.exists()


@pytest.mark.slow  # builds a Mask R-CNN R-50 and runs the benchmark tool on the CPU (~1 min)
def test_detector_deploy_runs_through_the_benchmark_tool(tmp_path):
    """The detector scope's deploy model exports and the benchmark tool takes it with the
    step's arguments (here on the CPU, 64x64): the 52 backbone convs are 2:4."""
    pytest.importorskip('mmdet')
    from spre_mmdet.benchmark import sparse_tool
    deploy = gc.make_detector_deploy(str(tmp_path / 'deploy'))
    argv = gc.detector_argv(deploy, 1, 1, 1, str(tmp_path / 'bench'))
    argv[argv.index('--input-size') + 1:argv.index('--input-size') + 3] = ['64', '64']
    argv[argv.index('--device') + 1] = 'cpu'
    assert sparse_tool.main(argv) == 0
    data = read(tmp_path / 'bench' / 'benchmark_sparse.json')
    assert len(data['layers']) == 52
    assert all(layer['numerics']['ok'] for layer in data['layers'])
