"""A GPU check that fits a short slot: the figures that matter most first, in one JSON.

    python3 tools/analysis_tools/gpu_check.py --out work_dirs/gpu_check/gpu_check.json \
        [--budget-s 320] [--only STEP ...]

``scripts/gpu_check.sh`` wraps it (carried wheels, a hard limit, a log). The steps, in the order
they run (:func:`build_steps`), each with its own time limit:

1. ``environment``: the package's environment record of ``cuda:0``, an fp16 matmul checked
   against the CPU, cuSPARSELt and sm80+ required; decides the benchmark's scope (the Mask
   R-CNN where mmdet and mmcv's CUDA ops work, else the backbone + neck of a torchvision R-50).
2. ``gemm``: the largest R-50 GEMMs at 800x1333, batch 1 and 8, dense vs 2:4
   (:func:`~spre_mmdet.benchmark.runner.bench_layer_cuda`).
3. ``train_amp``: one training iteration of every method under mmengine's ``AmpOptimWrapper``
   (fp16, dynamic GradScaler, SR-STE's decay hooked into the optimizer step) with
   ``torch.cuda.set_sync_debug_mode``: every sync seen is recorded with where it came from.
4. ``benchmark_b1``, ``benchmark_b8``: dense vs 2:4 per layer and end to end, fp16.
5. ``tensorrt``: fp16 TensorRT engines of the backbone + neck, dense vs sparse
   (:func:`~spre_mmdet.export.tensorrt.benchmark_tensorrt_module`), next to PyTorch's batch-1
   figures; ``unavailable`` (with the reason) without TensorRT.
6. ``cuda_tests``: ``pytest -m cuda`` (a skip counts as a problem on a GPU).

The JSON is rewritten before and after every step, so a run cut off keeps what finished. A step
that raises is recorded (``error`` with its traceback) and the next one runs; a step past its
limit is stopped (``timeout``); a step that would start with less budget left than it needs is
``skipped`` with the reason. Exit status: 0 every step ``ok`` (or ``unavailable``), 1 otherwise,
2 no CUDA GPU (refused at once, no JSON), 124 stopped by SIGTERM (the wrapper's limit).
"""
import argparse
import contextlib
import functools
import json
import math
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import spre_mmdet
from spre_mmdet.benchmark import (bench_end_to_end, bench_layer_cuda, build_report,
                                  capture_input_shapes, check_layers, compare, compare_outputs,
                                  dispatch_decisions, layer_calls, speedups, tolerance_text)
from spre_mmdet.benchmark.report import _clean
from spre_mmdet.benchmark.torchvision_r50 import (GEMM_LAYERS, METHODS, detection_input,
                                                  padded_size, r50_fpn_deploy, r50_gemm_shapes,
                                                  set_train_mode, sparse_resnet50)
from spre_mmdet.environment import collect_environment
from spre_mmdet.sparsity import (check_nm_tensor, refresh_masks, register_srste_decay,
                                 sparse_layers)
from spre_mmdet.sparsity.nm import nm_mask

EXIT_OK, EXIT_FAILED, EXIT_NO_CUDA, EXIT_TERMINATED = 0, 1, 2, 124
NO_CUDA_MESSAGE = ('gpu_check: refused: no CUDA GPU is visible to this process '
                   '(torch.cuda.is_available() is False); this check runs only where one is.')
REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = osp.dirname(osp.abspath(spre_mmdet.__file__)) + os.sep
DETECTOR_CONFIG = 'configs/mask_rcnn_r50_spre_2x4.py'
INPUT_SIZE = (800, 1333)
BATCH_SIZES = (1, 8)
STEP_NAMES = ('environment', 'gemm', 'train_amp', 'benchmark_b1', 'benchmark_b8', 'tensorrt',
              'cuda_tests')
#: a step with one of these statuses does not fail the check
PASSING = ('ok', 'unavailable')
#: torch's message for a sync under set_sync_debug_mode ('warn': a warning, 'error': raised)
SYNC_MESSAGE = 'called a synchronizing CUDA operation'


class Unavailable(Exception):
    """The step cannot run here (e.g. no TensorRT): recorded with its reason, not a failure."""


class StepTimeout(BaseException):
    """A step ran past its limit (a BaseException, so that no ``except Exception`` in the
    library swallows it)."""


class Terminated(BaseException):
    """SIGTERM: the wrapper's hard limit."""


@dataclass
class Step:
    """One step: ``run(ctx)`` returns its figures (``problems``: what failed, ``summary``: one
    line); ``ctx`` is shared by the steps of a run."""
    name: str
    run: Callable[[dict], dict]
    limit_s: float  #: stopped after this long
    min_s: float  #: not started with less budget than this left


def _error_text(exc: BaseException, limit: int = 600) -> str:
    text = f'{type(exc).__name__}: {exc}'
    return text if len(text) <= limit else text[:limit] + '...'


# ------------------------------------------------------------------------------------ runner
@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`StepTimeout` in the block after ``seconds`` (SIGALRM: Python code and
    the return of any call that blocks; a hung kernel is left to the wrapper's hard limit)."""
    def expire(signum, frame):
        raise StepTimeout(f'stopped at its time limit of {seconds:.0f}s')
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write_json(path: str, data: dict) -> None:
    """Atomically: a reader (or a run cut off now) never sees half a file."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.gpu_check-', suffix='.json', dir=folder)
    with os.fdopen(fd, 'w') as f:
        json.dump(_clean(data), f, indent=1, default=str)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def step_line(name: str, rec: dict) -> str:
    text = rec.get('error') or rec.get('reason') or (rec.get('result') or {}).get('summary')
    return f'{name:<13} {rec["status"].upper():<11} {rec.get("seconds") or 0:6.1f}s  {text or ""}'


def run_steps(steps: Sequence[Step], path: str, budget_s: float, meta: dict,
              ctx: Optional[dict] = None, log: Callable[[str], None] = print,
              clock: Callable[[], float] = time.monotonic) -> dict:
    """Run ``steps`` in order within ``budget_s``, writing the report to ``path`` before and
    after each; returns the report (``status``: passed, failed or terminated)."""
    ctx = {} if ctx is None else ctx
    report = dict(status='running', meta=dict(meta, budget_s=budget_s),
                  order=[s.name for s in steps], steps={})
    start = clock()
    try:
        for step in steps:
            left = start + budget_s - clock()
            rec = report['steps'][step.name] = dict(status='running',
                                                    limit_s=round(min(step.limit_s, left), 1))
            if left < step.min_s:
                rec.update(status='skipped', seconds=0.0, reason=(
                    f'time budget: {max(left, 0):.0f}s of {budget_s:.0f}s left, the step needs '
                    f'at least {step.min_s:.0f}s'))
                write_json(path, report)
                log(step_line(step.name, rec))
                continue
            write_json(path, report)
            log(f'[gpu_check +{clock() - start:.0f}s] {step.name}: start '
                f'(limit {rec["limit_s"]:.0f}s)')
            began = clock()
            try:
                with time_limit(rec['limit_s']):
                    result = step.run(ctx) or {}
                rec.update(status='failed' if result.get('problems') else 'ok', result=result)
            except Unavailable as exc:
                rec.update(status='unavailable', reason=str(exc))
            except StepTimeout as exc:
                rec.update(status='timeout', error=str(exc))
            except Exception as exc:  # a broken step is recorded, the next one runs
                rec.update(status='error', error=_error_text(exc),
                           traceback=traceback.format_exc()[-3000:])
            except Terminated:
                rec.update(status='terminated', error='SIGTERM (the time limit of the wrapper)')
                raise
            finally:
                rec['seconds'] = round(clock() - began, 1)
                write_json(path, report)
                log(step_line(step.name, rec))
        report['status'] = ('passed' if all(r['status'] in PASSING
                                            for r in report['steps'].values()) else 'failed')
    except Terminated:
        report['status'] = 'terminated'
        for step in steps:
            report['steps'].setdefault(step.name, dict(status='not_run',
                                                       reason='the run was terminated'))
    report['meta']['seconds'] = round(clock() - start, 1)
    write_json(path, report)
    return report


def exit_code(report: dict) -> int:
    return {'passed': EXIT_OK, 'terminated': EXIT_TERMINATED}.get(report['status'], EXIT_FAILED)


def summary_lines(report: dict, path: str) -> List[str]:
    lines = [f'gpu_check: {report["status"].upper()} in {report["meta"].get("seconds")}s; '
             f'JSON: {path}']
    lines += ['  ' + step_line(name, rec) for name, rec in report['steps'].items()]
    for name, rec in report['steps'].items():
        for problem in ((rec.get('result') or {}).get('problems') or [])[:10]:
            lines.append(f'  PROBLEM {name}: {problem}')
    return lines


# --------------------------------------------------------------------------------- helpers
def scratch(ctx: dict) -> str:
    """The run's temporary folder (removed by :func:`main`)."""
    if 'tmp' not in ctx:
        ctx['tmp'] = tempfile.mkdtemp(prefix='gpu_check_')
    return ctx['tmp']


def detector_problem() -> Optional[str]:
    """Why the Mask R-CNN cannot be benchmarked here, or ``None``."""
    try:
        import mmdet  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (not carried, or a broken stack)
        return f'mmdet cannot be imported ({_error_text(exc, 200)})'
    from spre_mmdet.mmcv_ops import mmcv_ops_problem
    return mmcv_ops_problem(cuda=True)


def scope(ctx: dict) -> str:
    """``'detector'`` or ``'backbone+neck'`` (decided once per run; the reason in ctx)."""
    if 'scope' not in ctx:
        ctx['scope_reason'] = detector_problem()
        ctx['scope'] = 'backbone+neck' if ctx['scope_reason'] else 'detector'
    return ctx['scope']


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """BN running statistics from ``x`` (a random ResNet's (0, 1) overflow fp16 on running
    statistics, the way pretrained ones would not); the model is left in training mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: this batch's statistics
    model.train()(x)
    for bn in bns:
        bn.momentum = 0.1


def sync_origin(frames: Sequence[traceback.FrameSummary]) -> dict:
    """Where a sync came from: the innermost Python line (``where``) and the innermost line
    of this package (``package_line``; ``None`` when no spre_mmdet code was on the stack)."""
    frames = [f for f in frames if not f.filename.endswith('warnings.py')]

    def text(frame):
        name = frame.filename
        for root in (PACKAGE_DIR[:-len('spre_mmdet' + os.sep)], 'site-packages' + os.sep):
            if root in name:
                name = name.split(root, 1)[1]
        return f'{name}:{frame.lineno} ({frame.name})'
    package = [f for f in frames if osp.abspath(f.filename).startswith(PACKAGE_DIR)]
    return dict(where=text(frames[-1]) if frames else '?',
                package_line=text(package[-1]) if package else None)


def sync_guarded(mode: str, fn: Callable[[], object], set_mode: Callable) -> tuple:
    """``fn()`` under ``set_mode(mode)`` (``torch.cuda.set_sync_debug_mode``): returns its
    value (``None`` if a sync stopped it) and ``{'mode', 'syncs', 'error'}``."""
    syncs = []
    record = dict(mode=mode, syncs=syncs, error=None)
    with warnings.catch_warnings():
        warnings.simplefilter('always')
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if SYNC_MESSAGE in str(message):
                syncs.append(sync_origin(traceback.extract_stack()[:-1]))
            else:
                original(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        set_mode(mode)
        try:
            return fn(), record
        except RuntimeError as exc:
            if SYNC_MESSAGE not in str(exc):
                raise
            record['error'] = str(exc).splitlines()[0]
            syncs.append(sync_origin(traceback.extract_tb(exc.__traceback__)))
            return None, record
        finally:
            set_mode(0)


def amp_wrapper(optimizer):
    """mmengine's AmpOptimWrapper: fp16 autocast, dynamic loss scaling from 2**8 (GradScaler's
    default 2**16 overflows a random network's fp16 gradients, and a skipped step would leave
    SR-STE's decay unexercised)."""
    from mmengine.optim import AmpOptimWrapper
    return AmpOptimWrapper(optimizer=optimizer, dtype='float16',
                           loss_scale=dict(init_scale=2.0 ** 8))


def amp_iteration(spec, base: nn.Module, device, batch: int, size: int,
                  make_wrapper: Callable = amp_wrapper, set_mode: Optional[Callable] = None
                  ) -> dict:
    """One iteration of ``spec`` as a run trains it: ``make_wrapper(SGD)`` (AMP), SR-STE's
    decay before the optimizer step (:func:`register_srste_decay`, as SparsityHook installs
    it), masks refreshed after it. Iteration 0 warms up; iteration 1 runs under
    ``set_mode`` (``torch.cuda.set_sync_debug_mode``): ``'error'`` around forward + backward
    and the mask refresh, ``'warn'`` around the optimizer step, where GradScaler's inf check
    (``found_inf.item()`` before an unfused optimizer's step) syncs by design. A sync from this
    package's code, or any sync in an ``'error'`` phase, is a problem."""
    set_mode = torch.cuda.set_sync_debug_mode if set_mode is None else set_mode
    model = sparse_resnet50(spec, 2, base=base)  # LBC removes over iterations 0-1, then freezes
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, base.fc.out_features, (batch,), generator=gen).to(device)
    calibrate_bn(model, x)
    set_train_mode(model, spec.bn_eval)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                                momentum=0.9, weight_decay=1e-4)
    wrapper = make_wrapper(optimizer)
    register_srste_decay(model, optimizer)
    stepped = []
    optimizer.register_step_post_hook(lambda *args: stepped.append(True))

    def forward_backward():
        with wrapper.optim_context(model):
            loss = F.cross_entropy(model(x), y)
        wrapper.backward(loss)
        return loss.detach()

    def step():
        wrapper.step()
        wrapper.zero_grad()

    losses = [forward_backward()]
    step()
    refresh_masks(model, 1)
    stepped.clear()
    phases = {}
    for name, mode, fn in (('forward_backward', 'error', forward_backward),
                           ('optimizer_step', 'warn', step),
                           ('refresh_masks', 'error', lambda: refresh_masks(model, 2))):
        value, phases[name] = sync_guarded(mode, fn, set_mode)
        if name == 'forward_backward' and value is not None:
            losses.append(value)
        if phases[name]['error']:
            break
    problems = [f'{name}: sync at {s["where"]}' + (
        f' (from {s["package_line"]})' if s['package_line'] not in (None, s['where']) else '')
        for name, rec in phases.items() for s in rec['syncs']
        if s['package_line'] or rec['mode'] == 'error']
    if 'optimizer_step' in phases and not phases['optimizer_step']['error'] and not stepped:
        problems.append('GradScaler skipped the optimizer step (inf/NaN gradients): the decay '
                        'hook did not run')
    losses = [float(v) for v in losses]
    if not all(math.isfinite(v) for v in losses):
        problems.append(f'loss not finite: {losses}')
    if not any(rec['error'] for rec in phases.values()):
        for name, layer in sparse_layers(model):
            check = check_nm_tensor(layer.sparsity.mask, 2, 4, max_examples=1)
            if not (layer.sparsity.is_final and check.ok):
                problems.append(f'{name}: mask {"not final" if check.ok else check.explain()}')
    scaler = getattr(wrapper, 'loss_scaler', None)
    return dict(method=spec.name, learner=spec.learner, spre=spec.spre,
                interspace=spec.interspace, bn_eval=spec.bn_eval, losses=losses,
                loss_scale=scaler.get_scale() if scaler is not None else None,
                num_syncs=sum(len(r['syncs']) for r in phases.values()), phases=phases,
                problems=problems)


def gemm_modules(device='cuda', dtype=torch.float16) -> Dict[str, nn.Module]:
    """The layers of :data:`GEMM_LAYERS` of a torchvision ResNet-50, 2:4 by magnitude."""
    import torchvision
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50()
    modules = {}
    for name in GEMM_LAYERS:
        module = resnet.get_submodule(name)
        with torch.no_grad():
            module.weight.mul_(nm_mask(module.weight, 2, 4))
        modules[name] = module.to(device, dtype).to(memory_format=torch.channels_last)
    return modules


def make_detector_deploy(folder: str) -> Dict[str, str]:
    """The deploy model of :data:`DETECTOR_CONFIG` (random weights, masks finished)."""
    from mmengine.config import Config

    from spre_mmdet.deploy import build_model, export_deploy
    cfg = Config.fromfile(str(REPO_ROOT / DETECTOR_CONFIG))
    cfg.model.backbone.init_cfg = None  # torchvision:// would need the network
    model = build_model(cfg)
    model.init_weights()
    refresh_masks(model, 0)
    return export_deploy(model, cfg, folder)


def detector_argv(deploy: Dict[str, str], batch: int, warmup: int, repeats: int,
                  out_dir: str) -> List[str]:
    """``tools/benchmark_sparse.py``'s arguments for the detector scope at 800x1333 fp16."""
    return [deploy['deploy_config.py'], deploy['deploy.pth'], '--input-size',
            *map(str, INPUT_SIZE), '--dtype', 'fp16', '--batch-size', str(batch), '--scope',
            'detector', '--device', 'cuda', '--warmup', str(warmup), '--repeats', str(repeats),
            '--out-dir', out_dir]


def backbone_neck_benchmark(model: nn.Module, batch: int, warmup: int, repeats: int,
                            dtype=torch.float16) -> dict:
    """What ``tools/benchmark_sparse.py`` reports, for a model with ``backbone`` and ``neck``
    and no mmdet (:func:`r50_fpn_deploy`): per-layer 2:4 timings of the backbone, end to end
    for backbone and backbone+neck (dense, per-layer dispatch, all-sparse)."""
    x = detection_input(batch, *INPUT_SIZE, 'cuda', dtype)
    runners = {'backbone': lambda: model.backbone(x),
               'backbone+neck': lambda: model.neck(model.backbone(x))}
    checks = check_layers(model, ['backbone'], 2, 4)
    names = [c.name for c in checks if c.valid and c.in_scope]
    shapes = capture_input_shapes(model, names, runners['backbone'])
    layers, kernels = [], {}
    for name in names:
        module = model.get_submodule(name)
        res, kernel = bench_layer_cuda(module, shapes[name], dtype, 'auto', warmup, repeats)
        layers.append(dict(name=name, calls=layer_calls(module, shapes[name]), **res,
                           **speedups(res)))
        if kernel is not None:
            kernels[name] = kernel
    decisions = dispatch_decisions(layers)
    for row in layers:
        row['dispatch'] = decisions[row['name']] if row['name'] in kernels else 'dense'
    end_to_end = bench_end_to_end(model, runners, kernels, decisions, warmup, repeats)
    for name, run in runners.items():
        end_to_end[name]['numerics_all_sparse'] = compare_outputs(model, run, kernels, dtype)
    meta = dict(model='2:4 deploy SpRe R-50 + dense FPN (torchvision)', batch_size=batch,
                input_size=list(INPUT_SIZE), dtype=str(dtype), warmup=warmup, repeats=repeats)
    return build_report(meta, [c.to_dict() for c in checks], layers, end_to_end,
                        tolerance_text(dtype), None)


def benchmark_problems(report: dict) -> List[str]:
    problems = [f'{row["name"]}: no 2:4 timing ({row.get("note")})'
                for row in report.get('layers') or [] if row.get('sparse_ms') is None]
    problems += [f'{row["name"]}: 2:4 output outside the tolerance ({row.get("numerics")})'
                 for row in report.get('layers') or []
                 if row.get('sparse_ms') is not None and not (row.get('numerics') or {}).get('ok')]
    for name, row in (report.get('end_to_end') or {}).items():
        problems += [f'{name} {v}: no time ({row.get("note")})'
                     for v in ('dense', 'dispatch', 'all_sparse') if row.get(f'{v}_ms') is None]
    return problems


def junit_counts(path: str) -> dict:
    outcomes = {}
    for case in ET.parse(path).getroot().iter('testcase'):
        tags = [child.tag for child in case if child.tag in ('failure', 'error', 'skipped')]
        name = f'{case.get("classname")}::{case.get("name")}'
        outcomes[name] = {'failure': 'failed'}.get(tags[0], tags[0]) if tags else 'passed'
    counts = {k: sum(v == k for v in outcomes.values())
              for k in ('passed', 'failed', 'error', 'skipped')}
    return dict(total=len(outcomes), **counts,
                not_passed=[f'{n}: {o}' for n, o in outcomes.items() if o != 'passed'])


def cuda_test_files() -> List[str]:
    tests = sorted((REPO_ROOT / 'tests').rglob('test_*.py'))
    return [str(p.relative_to(REPO_ROOT)) for p in tests
            if 'pytest.mark.cuda' in p.read_text(encoding='utf-8')]


# ------------------------------------------------------------------------------------- steps
def step_environment(ctx: dict) -> dict:
    env = collect_environment('cuda:0')
    cuda = env.get('cuda') or {}
    device = (cuda.get('devices') or [{}])[0]
    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    matmul = compare((a.cuda().half() @ a.cuda().half()).cpu(), a @ a, torch.float16)
    problems = [] if matmul['ok'] else [f'fp16 matmul on the GPU is off the CPU one: {matmul}']
    if not device.get('sparse_tensor_cores'):
        problems.append(f'compute capability {device.get("capability")}: no 2:4 tensor cores')
    if not cuda.get('cusparselt_available'):
        problems.append('cuSPARSELt is not available in this torch build')
    scope(ctx)
    return dict(device=device.get('name'), capability=device.get('capability'),
                scope=ctx['scope'], scope_reason=ctx['scope_reason'], matmul=matmul,
                environment=env, problems=problems,
                summary=f'{device.get("name")} sm{device.get("capability")}, torch '
                        f'{env["torch"]["version"]}, CUDA {cuda.get("runtime")}, cuSPARSELt '
                        f'{cuda.get("cusparselt")}; benchmark scope {ctx["scope"]}')


def step_gemm(ctx: dict, warmup: int, repeats: int, batches: Sequence[int] = BATCH_SIZES
              ) -> dict:
    modules = gemm_modules()
    rows = []
    for batch in batches:
        for shape in r50_gemm_shapes(*INPUT_SIZE, batch):
            res, _ = bench_layer_cuda(modules[shape['name']], [tuple(shape['in_shape'])],
                                      torch.float16, 'auto', warmup, repeats)
            rows.append(dict(shape, **res, **speedups(res)))
    problems = benchmark_problems(dict(layers=[dict(r, name=f'{r["name"]} b{r["batch"]}')
                                               for r in rows]))
    last = [r for r in rows if r['batch'] == batches[-1] and r.get('gemm_speedup')]
    return dict(input_size=list(INPUT_SIZE), dtype='fp16', rows=rows, problems=problems,
                summary=f'b{batches[-1]} 2:4 GEMM speedup: ' + ', '.join(
                    f'{r["name"]} {r["gemm_speedup"]:.2f}x' for r in last))


def step_train_amp(ctx: dict, batch: int, size: int, methods: Sequence = METHODS,
                   device='cuda', base: Optional[nn.Module] = None, **iteration_kwargs) -> dict:
    if base is None:
        import torchvision
        torch.manual_seed(0)
        base = torchvision.models.resnet50()
    base = base.to(device)
    runs, problems = [], []
    for spec in methods:
        try:
            run = amp_iteration(spec, base, device, batch, size, **iteration_kwargs)
        except Exception as exc:  # noqa: BLE001  (the other methods still run)
            run = dict(method=spec.name, problems=['crashed: ' + _error_text(exc)],
                       traceback=traceback.format_exc()[-2000:])
        runs.append(run)
        problems += [f'{spec.name}: {p}' for p in run['problems']]
    return dict(model='torchvision ResNet-50, layer1-4 2:4', batch=batch, size=size,
                optimizer='SGD lr=1e-3 momentum=0.9 wd=1e-4 in AmpOptimWrapper (fp16, dynamic '
                          'loss scale)', runs=runs, problems=problems,
                summary=', '.join(f'{r["method"]} {"ok" if not r["problems"] else "PROBLEM"} '
                                  f'({r.get("num_syncs", "?")} sync)' for r in runs))


def step_benchmark(ctx: dict, batch: int, warmup: int, repeats: int) -> dict:
    if scope(ctx) == 'detector':
        from spre_mmdet.benchmark import sparse_tool
        if 'deploy' not in ctx:
            ctx['deploy'] = make_detector_deploy(osp.join(scratch(ctx), 'deploy'))
        out_dir = osp.join(scratch(ctx), f'benchmark_b{batch}')
        sparse_tool.main(detector_argv(ctx['deploy'], batch, warmup, repeats, out_dir))
        with open(osp.join(out_dir, 'benchmark_sparse.json')) as f:
            report = json.load(f)
    else:
        if 'backbone_neck' not in ctx:
            model, _ = r50_fpn_deploy(device='cuda')
            ctx['backbone_neck'] = model.half().to(memory_format=torch.channels_last).eval()
        report = backbone_neck_benchmark(ctx['backbone_neck'], batch, warmup, repeats)
    e2e = ctx[f'end_to_end_b{batch}'] = report.get('end_to_end') or {}
    torch.cuda.empty_cache()
    return dict(scope=ctx['scope'], scope_reason=ctx['scope_reason'], batch=batch,
                report=report, problems=benchmark_problems(report), summary='; '.join(
                    f'{name} dense {row.get("dense_ms") or 0:.2f} ms, dispatch '
                    f'{row.get("dispatch_speedup") or 0:.2f}x, all-2:4 '
                    f'{row.get("all_sparse_speedup") or 0:.2f}x' for name, row in e2e.items()))


def step_tensorrt(ctx: dict, warmup: int, iters: int) -> dict:
    from spre_mmdet.export import benchmark_tensorrt_module, tensorrt_skip_reason
    reason = tensorrt_skip_reason()
    if reason:
        raise Unavailable(reason)
    if scope(ctx) == 'detector':
        from spre_mmdet.benchmark.detector import load_detector
        if 'deploy' not in ctx:
            ctx['deploy'] = make_detector_deploy(osp.join(scratch(ctx), 'deploy'))
        model = load_detector(ctx['deploy']['deploy_config.py'], ctx['deploy']['deploy.pth'])
    else:
        model, _ = r50_fpn_deploy(device='cuda')
    result = benchmark_tensorrt_module(model.cuda().eval(), padded_size(*INPUT_SIZE),
                                       scratch(ctx), batch=1, warmup=warmup, iters=iters)
    if result.get('skipped'):
        raise Unavailable(result['skipped'])
    row = (ctx.get('end_to_end_b1') or {}).get('backbone+neck') or {}
    result['pytorch_b1_backbone_neck_ms'] = {v: row.get(f'{v}_ms')
                                             for v in ('dense', 'dispatch', 'all_sparse')}
    engines = result.get('engines') or {}
    result['problems'] = [f'{m} engine: {e["error"]}' for m, e in engines.items()
                          if e.get('error')]
    sparse = engines.get('sparse') or {}
    result['summary'] = (
        ', '.join(f'{m} {(e.get("ms_per_image") or 0):.2f} ms/img' for m, e in engines.items())
        + f', {len(sparse.get("sparse_tactic_layers") or [])} layers with sparse tactics; '
        f'PyTorch b1 {result["pytorch_b1_backbone_neck_ms"]}')
    return result


def step_cuda_tests(ctx: dict) -> dict:
    xml = osp.join(scratch(ctx), 'cuda_tests.xml')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get('PYTHONPATH')) if p))
    cmd = [sys.executable, '-m', 'pytest', '-q', '-m', 'cuda', '-p', 'no:cacheprovider',
           f'--junitxml={xml}', *cuda_test_files()]
    proc = subprocess.run(cmd, cwd=str(REPO_ROOT), env=env, capture_output=True, text=True)
    result = dict(command=' '.join(cmd[1:]), returncode=proc.returncode,
                  output_tail=(proc.stdout + proc.stderr)[-3000:])
    if not osp.exists(xml):
        return dict(result, problems=[f'pytest wrote no JUnit XML (exit {proc.returncode})'])
    result.update(junit_counts(xml))
    result['problems'] = list(result['not_passed']) or (
        [] if proc.returncode == 0 and result['total'] else
        [f'pytest exit status {proc.returncode}, {result["total"]} tests'])
    result['summary'] = f'{result["passed"]}/{result["total"]} passed'
    return result


def build_steps(args) -> List[Step]:
    """The steps in priority order, with their limits and the smallest budget to start."""
    p = functools.partial
    timing = dict(warmup=args.warmup, repeats=args.repeats)
    return [
        Step('environment', step_environment, 60, 5),
        Step('gemm', p(step_gemm, **timing), 60, 10),
        Step('train_amp', p(step_train_amp, batch=args.train_batch, size=args.train_size), 90,
             15),
        Step('benchmark_b1', p(step_benchmark, batch=1, **timing), 90, 30),
        Step('benchmark_b8', p(step_benchmark, batch=8, **timing), 120, 40),
        Step('tensorrt', p(step_tensorrt, warmup=args.warmup, iters=args.trt_iters), 120, 30),
        Step('cuda_tests', step_cuda_tests, 120, 20),
    ]


# -------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='work_dirs/gpu_check/gpu_check.json', help='the JSON')
    p.add_argument('--budget-s', type=float, default=320.0,
                   help='no step starts after this; each stops at its own limit within it')
    p.add_argument('--only', nargs='+', choices=STEP_NAMES, help='run only these steps')
    p.add_argument('--warmup', type=int, default=5, help='untimed calls per timing')
    p.add_argument('--repeats', type=int, default=15, help='timed samples per timing')
    p.add_argument('--train-batch', type=int, default=16)
    p.add_argument('--train-size', type=int, default=224)
    p.add_argument('--trt-iters', type=int, default=50)
    return p.parse_args(argv)


def cuda_available() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch's warning where no driver is
        return torch.cuda.is_available()


def _terminate(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    args = parse_args(argv)
    if not cuda_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return EXIT_NO_CUDA
    steps = [s for s in build_steps(args) if not args.only or s.name in args.only]
    meta = dict(tool='tools/analysis_tools/gpu_check.py', argv=list(sys.argv[1:] if argv is None
                                                                    else argv),
                date=time.strftime('%Y-%m-%d %H:%M:%S %Z'), input_size=list(INPUT_SIZE),
                dtype='fp16', timing='GPU time without the host (device_time: CUDA graphs); '
                                     'medians over repeats')
    ctx = {}
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        report = run_steps(steps, args.out, args.budget_s, meta, ctx)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if 'tmp' in ctx:
            shutil.rmtree(ctx['tmp'], ignore_errors=True)
    print('\n'.join(summary_lines(report, args.out)), flush=True)
    return exit_code(report)


if __name__ == '__main__':
    sys.exit(main())
