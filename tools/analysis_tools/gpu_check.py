"""One-call GPU check of the CUDA path, with one JSON of every figure.

    python3 tools/analysis_tools/gpu_check.py --out DIR [--budget-s 450]

(``scripts/gpu_check.sh`` wraps it: carried wheels, a hard time limit, a log.) Steps, in the
order they run:

a. **environment**: :func:`spre_mmdet.environment.collect_environment` (device, capability,
   memory, driver, torch/CUDA/cuDNN/cuSPARSELt/triton versions, ...), and whether mmdet and
   mmcv's CUDA ops can be used.
b. **cuda_tests**: the tests marked ``cuda`` (pytest in a subprocess, JUnit XML parsed); a
   skipped test counts as a failure here, since CUDA is present.
e. **gemm**: the largest R-50 GEMMs at 800x1333 (batch 1 and 8), dense cuBLAS vs 2:4 sparse
   (cuSPARSELt default and searched algorithm, CUTLASS), with a numerical check. It runs before c
   and d: it is short, and its figures matter most.
c. **training**: every method (SR-STE, ASP, LBC, SpRe with BN in training and in eval mode,
   SpRe+LBC, interspace) on a torchvision ResNet-50 made sparse by this package's plain-PyTorch
   core, a few SGD steps in fp32 and under bf16 autocast: finite loss, masks exactly 2:4 after
   the last refresh, deploy model exactly 2:4 and equal to the training-time model.
d. **benchmark**: dense vs 2:4 per layer and end to end at 800x1333 fp16, batch 1 and 8: the
   R-50 Mask R-CNN deploy model through ``tools/benchmark_sparse.py --scope detector`` when
   mmdet and mmcv's CUDA ops work; otherwise the deploy form of a SpRe R-50 backbone + dense
   FPN with the same benchmark functions (``"scope": "backbone"``, ``"scope_reason"``).

Then **anchors**: each speedup against published figures (2x ceiling; 1.1-1.4x per large GEMM
and 1.1-1.3x end to end measured elsewhere; per-layer dispatch never slower than dense). These
are flags in the JSON, not failures.

Without CUDA it refuses at once (one line on stderr, exit status 2). With CUDA, a step that
cannot run is a failure (exit status 1), never a skip; the only replacement is step d's scope
when mmdet/mmcv's CUDA ops are unavailable, which is announced on stdout and in the JSON.
The JSON is rewritten after every step, so a run stopped by a time limit leaves what it did.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import os.path as osp
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from spre_mmdet.benchmark.gemm import GemmLayer, forced_backend, resolve_backend
from spre_mmdet.benchmark.layers import capture_input_shapes, check_layers
from spre_mmdet.benchmark.report import _clean, build_report
from spre_mmdet.benchmark.runner import (bench_end_to_end, bench_layer_cuda, compare,
                                         compare_outputs, dispatch_decisions, layer_calls,
                                         speedups, tolerance_text)
from spre_mmdet.benchmark.timing import cuda_time
from spre_mmdet.benchmark.torchvision_r50 import (GEMM_LAYERS, METHODS, R50_SPARSE_LAYERS,
                                                  MethodSpec, detection_input, padded_size,
                                                  r50_fpn_deploy, r50_gemm_shapes, set_train_mode,
                                                  sparse_resnet50)
from spre_mmdet.environment import collect_environment
from spre_mmdet.sparsity import (InterspaceDeployConv2d, SparseLayerMixin, check_nm_tensor,
                                 refresh_masks, reparameterize, sparse_layers, spre_pairs)
from spre_mmdet.sparsity.nm import nm_mask

EXIT_OK, EXIT_FAILED, EXIT_NO_CUDA, EXIT_TERMINATED = 0, 1, 2, 124
NO_CUDA_MESSAGE = ('gpu_check: refused: no CUDA GPU is visible to this process '
                   '(torch.cuda.is_available() is False); this check runs only where one is.')
#: the checkout this script is part of (its tests, configs and tools/benchmark_sparse.py)
REPO_ROOT = Path(__file__).resolve().parents[2]
DETECTOR_CONFIG = 'configs/mask_rcnn_r50_spre_2x4.py'
BENCHMARK_TOOL = 'tools/benchmark_sparse.py'
INPUT_SIZE = (800, 1333)
BATCH_SIZES = (1, 8)

#: deploy model vs training-time model, both fp32 with TF32 off:
#: max|y_deploy - y_train| <= DEPLOY_RTOL * max|y_train|. Folding only reorders fp32 sums:
#: through ResNet-50 that measured up to 3e-5 on the CPU (interspace), and cuDNN may pick
#: Winograd/FFT for 3x3 convs; a real folding error (a lost branch, a wrong mask) is ~1e-1.
DEPLOY_RTOL = 1e-3
#: gradient-norm clip of the training check (the norm before clipping is recorded)
GRAD_CLIP = 1.0
LOSS_NOTE = ('random weights and labels: the losses are no learning signal, only their '
             'finiteness is checked. With BN on running statistics, a mask that changes a lot '
             "(LBC's subset removal) moves activations past the calibrated statistics, and the "
             'loss can reach 1e4 (SpRe+LBC on the CPU at 64x64)')

#: published anchors: 2:4 halves the multiply-adds, so 2x is the ceiling; measured elsewhere
#: 1.1-1.4x per large GEMM and 1.1-1.3x end to end
CEILING = 2.0
GEMM_RANGE = (1.1, 1.4)
E2E_RANGE = (1.1, 1.3)
#: anchor flags that break a promise of this package (the others are informational)
VIOLATIONS = ('dispatch_slower_than_dense', 'above_ceiling')


class Terminated(BaseException):
    """SIGTERM (the wrapper's time limit): record where the run was, then stop."""


def _log(start: float, message: str) -> None:
    stamp = datetime.datetime.now().strftime('%H:%M:%S')
    print(f'[gpu_check {stamp} +{time.monotonic() - start:6.1f}s] {message}', flush=True)


def _error_text(exc: BaseException, limit: int = 600) -> str:
    text = f'{type(exc).__name__}: {exc}'
    return text if len(text) <= limit else text[:limit] + '...'


# ------------------------------------------------------------------------------------ report
class CheckReport:
    """The JSON of a run: steps with their status, figures and failures, rewritten atomically
    after every step.

    A step is ``ok`` when it finished with no failure, ``failed`` otherwise (an exception in
    the step is one of its failures, with the traceback's end).
    """

    def __init__(self, path: str, meta: dict, start: Optional[float] = None):
        self.path = path
        self.start = time.monotonic() if start is None else start
        self.data: Dict[str, object] = dict(
            status='running', meta=meta, environment=None, scope=None, scope_reason=None,
            steps={}, anchors=None, failures=[])

    def log(self, message: str) -> None:
        _log(self.start, message)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict]:
        """Run a step: yields its record (a dict to fill in; ``failures`` is a list)."""
        record = dict(status='running', seconds=None, failures=[])
        self.data['steps'][name] = record
        began = time.monotonic()
        self.log(f'step {name}: start')
        try:
            yield record
        except Exception as exc:  # a broken step is a failure of that step, the run goes on
            record['failures'].append('crashed: ' + _error_text(exc))
            record['traceback'] = traceback.format_exc()[-4000:]
        except BaseException as exc:
            record['failures'].append('stopped: ' + (
                'terminated (SIGTERM, e.g. the time limit)' if isinstance(exc, Terminated)
                else _error_text(exc)))
            raise
        finally:
            record['seconds'] = round(time.monotonic() - began, 2)
            record['status'] = 'failed' if record['failures'] else 'ok'
            self.data['failures'].extend(f'{name}: {f}' for f in record['failures'])
            self.write()
            self.log(f'step {name}: {record["status"].upper()} in {record["seconds"]:.1f}s'
                     + ''.join(f'\n    FAILURE: {f}' for f in record['failures'][:20]))

    def write(self) -> str:
        """Write the JSON atomically (a reader never sees half a file)."""
        folder = osp.dirname(osp.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.gpu_check-', suffix='.json', dir=folder)
        with os.fdopen(fd, 'w') as f:
            json.dump(_clean(self.data), f, indent=1, default=str)  # never lose a run to a type
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)
        return self.path

    def finish(self, terminated: bool = False) -> int:
        """Final status and exit code: 0 when every step passed, else 1 (124 if stopped)."""
        failed = bool(self.data['failures'])
        self.data['status'] = ('terminated' if terminated else 'failed' if failed else 'passed')
        self.data['meta']['seconds'] = round(time.monotonic() - self.start, 1)
        self.write()
        return EXIT_TERMINATED if terminated else EXIT_FAILED if failed else EXIT_OK


def summary_lines(data: dict) -> List[str]:
    """A short human summary of a report (printed last)."""
    lines = [f'gpu_check: {str(data.get("status")).upper()}']
    env = data.get('environment') or {}
    if env:
        lines.append(f'  device: {env.get("device_name")} (sm {env.get("capability")}), torch '
                     f'{env.get("torch")}, CUDA {env.get("torch_cuda")}, cuSPARSELt '
                     f'{env.get("cusparselt_version")}')
    if data.get('scope'):
        lines.append(f'  benchmark scope: {data["scope"]}'
                     + (f' ({data["scope_reason"]})' if data.get('scope_reason') else ''))
    for name, step in (data.get('steps') or {}).items():
        lines.append(f'  {name:<12} {step.get("status", "?"):<8} {step.get("seconds") or 0:6.1f}s'
                     + (f'  {len(step["failures"])} failure(s)' if step.get('failures') else ''))
    anchors = data.get('anchors') or {}
    if anchors:
        lines.append(f'  anchors: {len(anchors.get("flags", []))} flag(s), '
                     f'{anchors.get("violations", 0)} violation(s) (flags never fail the check)')
    for failure in (data.get('failures') or [])[:30]:
        lines.append(f'  FAILURE {failure}')
    return lines


# ------------------------------------------------------------------------------- environment
def cuda_available() -> bool:
    """``torch.cuda.is_available()``, without the warning torch may print when no driver is."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return torch.cuda.is_available()


def detector_support() -> Tuple[bool, Optional[str], dict]:
    """Can the detector-level benchmark run: mmdet importable and mmcv's CUDA ops working?

    Returns ``(ok, reason if not, versions)``. The ops are run once on the GPU (nms, RoIAlign):
    an mmcv built without CUDA ops imports but fails there.
    """
    info = {}
    try:
        import mmcv
        import mmengine
        info.update(mmcv=mmcv.__version__, mmengine=mmengine.__version__)
        import mmdet
        info.update(mmdet=mmdet.__version__)
    except Exception as exc:  # ImportError, or mmdet's own mmcv version assertion
        return False, f'mmdet/mmcv/mmengine cannot be imported ({_error_text(exc, 300)})', info
    try:
        from mmcv.ops import nms, roi_align
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]],
                             device='cuda')
        nms(boxes, torch.tensor([0.9, 0.8, 0.7], device='cuda'), 0.5)
        roi_align(torch.randn(1, 4, 16, 16, device='cuda'),
                  torch.tensor([[0., 0., 0., 8., 8.]], device='cuda'), (2, 2), 1.0, 0, 'avg',
                  True)
        torch.cuda.synchronize()
        import mmdet.models  # noqa: F401  (needs mmcv.ops)
    except Exception as exc:
        return False, f'mmcv CUDA ops unavailable ({_error_text(exc, 300)})', info
    return True, None, info


def environment_record() -> dict:
    """The entries this check reports on (device name and capability, torch and its CUDA,
    cuDNN, cuSPARSELt, the driver) and, as ``record``, the whole environment record
    (:func:`spre_mmdet.environment.collect_environment` of ``cuda:0``; CUDA must be
    available)."""
    env = collect_environment('cuda:0')
    cuda = env['cuda']
    device = cuda['devices'][0]
    return dict(device_name=device['name'], capability=device['capability'],
                torch=env['torch']['version'], torch_cuda=cuda['runtime'], cudnn=cuda['cudnn'],
                cusparselt_available=cuda['cusparselt_available'],
                cusparselt_version=cuda['cusparselt'],
                driver=cuda['driver'] or cuda['driver_api'], record=env)


# -------------------------------------------------------------------------------- cuda tests
def cuda_test_files(repo: Path = REPO_ROOT) -> List[str]:
    """The test files holding tests marked ``cuda`` (a file-level ``pytestmark`` or a per-test
    mark). Only these are collected, so that test files needing mmdet do not stop the
    collection where mmdet is absent."""
    files = []
    for path in sorted((repo / 'tests').rglob('test_*.py')):
        if 'pytest.mark.cuda' in path.read_text(encoding='utf-8'):
            files.append(str(path.relative_to(repo)))
    return files


def junit_summary(path: str) -> dict:
    """Counts, per-test outcomes and problems from a pytest JUnit XML file.

    Every test that did not pass (failed, error, skipped) is a problem: where CUDA is present,
    a skipped CUDA test is a check that did not run. So is an empty selection.
    """
    root = ET.parse(path).getroot()
    cases = []
    for case in root.iter('testcase'):
        name = f'{case.get("classname", "")}::{case.get("name", "")}'
        outcome, message = 'passed', None
        for child in case:
            if child.tag in ('failure', 'error', 'skipped'):
                outcome = {'failure': 'failed'}.get(child.tag, child.tag)
                message = (child.get('message') or (child.text or '').strip())[:500]
                break
        cases.append(dict(name=name, outcome=outcome, seconds=float(case.get('time') or 0),
                          message=message))
    counts = {k: sum(1 for c in cases if c['outcome'] == k)
              for k in ('passed', 'failed', 'error', 'skipped')}
    problems = [f'{c["name"]}: {c["outcome"]}: {c["message"]}' for c in cases
                if c['outcome'] != 'passed']
    if not cases:
        problems.append('no test marked cuda was collected')
    return dict(total=len(cases), **counts, cases=cases, problems=problems)


def run_cuda_tests(out_dir: str, timeout_s: float, repo: Path = REPO_ROOT) -> dict:
    """Run the ``cuda``-marked tests in a subprocess and summarize them."""
    files = cuda_test_files(repo)
    xml = osp.abspath(osp.join(out_dir, 'cuda_tests.xml'))  # pytest runs in the repo root
    if osp.exists(xml):
        os.remove(xml)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(repo), env.get('PYTHONPATH')) if p)
    cmd = [sys.executable, '-m', 'pytest', '-q', '-m', 'cuda', '-p', 'no:cacheprovider',
           f'--junitxml={xml}', *files]
    result = dict(command=' '.join(cmd[1:]), files=files)
    if not files:
        result['problems'] = ['no test file holds a test marked cuda']
        return result
    try:
        proc = subprocess.run(cmd, cwd=str(repo), env=env, capture_output=True, text=True,
                              timeout=max(timeout_s, 10))
        result.update(returncode=proc.returncode, output_tail=(proc.stdout + proc.stderr)[-3000:])
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or '')
        result.update(returncode=None, output_tail=out[-3000:])
        result['problems'] = [f'pytest did not finish within {timeout_s:.0f}s']
        return result
    if not osp.exists(xml):
        result['problems'] = [f'pytest wrote no JUnit XML (exit status {proc.returncode})']
        return result
    summary = junit_summary(xml)
    result.update(summary)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not summary['problems']):
        summary['problems'].append(f'pytest exit status {proc.returncode}')
    result['problems'] = summary['problems']
    return result


# ---------------------------------------------------------------------------------- training
@contextlib.contextmanager
def ieee_fp32():
    """fp32 convs and matmuls in full precision (no TF32) while comparing two models: TF32's
    10-bit mantissa would hide a real difference behind its own rounding."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


@torch.no_grad()
def calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Set every BN's running statistics to those of ``x`` (a cumulative average over one
    batch), then restore each module's mode.

    A randomly initialized ResNet has running statistics (0, 1) that do not match its
    activations, so with BN on running statistics its output grows block after block to
    1e30 or overflows. Calibrated statistics play the part of pretrained ones: training with
    frozen BN (mmdet's ``norm_eval``) and the eval-mode comparison stay well conditioned.
    """
    modes = {module: module.training for module in model.modules()}
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        model(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for module, mode in modes.items():
            module.training = mode


def mask_problems(model: nn.Module, n: int = 2, m: int = 4) -> List[str]:
    """Why some sparse layer's mask is not final and exactly N:M (empty if all are)."""
    problems = []
    for name, layer in sparse_layers(model):
        if not layer.sparsity.is_final:
            problems.append(f'{name}: {layer.sparsity.method} mask not final')
        check = check_nm_tensor(layer.sparsity.mask, n, m, max_examples=1)
        if not check.ok:
            problems.append(f'{name}: mask {check.explain()}')
    return problems


@contextlib.contextmanager
def two_branch(model: nn.Module):
    """Run every SpRe pair as its two branches, ``BN_main(conv(x, W*B)) + BN_rep(conv(x,
    W_rep*B*S))``, even with BN on running statistics (where the pair normally runs as one
    fused conv): the literal training-time formula, to compare the deploy model against.
    Each conv is unpaired from its norm for the while (``conv.pair(None)``), then paired
    again."""
    pairs = [(conv, norm) for _, conv, norm in spre_pairs(model)]
    for conv, _ in pairs:
        conv.pair(None)
    try:
        yield model
    finally:
        for conv, norm in pairs:
            conv.pair(norm)


@torch.no_grad()
def deploy_check(model: nn.Module, x: torch.Tensor, n: int = 2, m: int = 4,
                 rtol: float = DEPLOY_RTOL) -> dict:
    """Re-parameterize ``model`` and check the deploy model: every layer that was sparse is
    exactly N:M (an interspace conv: its 1x1 GEMM weight), no sparse module is left, and its
    eval-mode output equals the training-time model's (fp32, TF32 off) within ``rtol``; with
    SpRe both as it runs in eval mode (fused) and as its two branches.
    """
    names = [name for name, _ in sparse_layers(model)]
    model.eval()
    with ieee_fp32():
        ref = model(x).float()
        refs = {'eval': ref}
        if any(True for _ in spre_pairs(model)):
            with two_branch(model):
                refs['two_branch'] = model(x).float()
        deploy = reparameterize(model)
        out = deploy(x).float()
    modules = dict(deploy.named_modules())
    problems = [f'{name}: still a sparse training module in the deploy model'
                for name, module in modules.items() if isinstance(module, SparseLayerMixin)]
    for name in names:
        module = modules.get(name)
        if isinstance(module, InterspaceDeployConv2d):
            module = module.gemm
        if module is None or not isinstance(getattr(module, 'weight', None), torch.Tensor):
            problems.append(f'{name}: missing from the deploy model')
            continue
        check = check_nm_tensor(module.weight, n, m, max_examples=1)
        if not check.ok:
            problems.append(f'{name}: deploy weight {check.explain()}')
    errors = {}
    for form, ref in refs.items():
        scale = float(ref.abs().max())
        err = float((out - ref).abs().max())
        rel = err / scale if scale else float('inf')
        errors[form] = dict(max_abs_err=err, max_abs_ref=scale, rel_err=rel)
        if not bool(torch.isfinite(ref).all() and torch.isfinite(out).all()):
            problems.append(f'non-finite output (training-time model, {form}, or deploy model)')
        elif not rel <= rtol:
            problems.append(f'deploy output differs from the training-time model ({form}): '
                            f'max abs error {err:.3g} = {rel:.2e} x max|ref| > {rtol:g}')
    worst = max(errors.values(), key=lambda e: e['rel_err'])
    return dict(num_layers=len(names), **worst, errors=errors, rtol=rtol,
                comparison='eval mode, fp32, TF32 off', problems=problems, ok=not problems)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def train_check(spec: MethodSpec, base: nn.Module, device, precision: str = 'fp32',
                steps: int = 6, batch: int = 16, size: int = 224, num_classes: int = 1000,
                lr: float = 1e-3, seed: int = 0) -> dict:
    """Train ``spec`` on ``base`` (a dense torchvision ResNet, copied) for ``steps`` SGD steps on
    random data and check it.

    The loop is the ``SparsityHook``'s: masks refreshed to iteration 0 before training and to
    ``i + 1`` after optimizer step ``i``. BN statistics are calibrated first
    (:func:`calibrate_bn`) and gradients clipped to :data:`GRAD_CLIP`: the network is random,
    and the check is about the sparse machinery, not about learning. ``precision`` is
    ``'fp32'`` or ``'bf16'`` (forward and loss under ``torch.autocast``). Checks: every loss and
    gradient norm finite, every mask final and exactly 2:4 after the last refresh, the SpRe
    pairs on the intended path (two branches with BN in training mode, one fused conv with BN
    on running statistics), and :func:`deploy_check`.

    Returns:
        Figures (losses, step times in ms) and ``problems`` (empty when everything held).
    """
    device = torch.device(device)
    if precision not in ('fp32', 'bf16'):
        raise ValueError(f'precision must be fp32 or bf16, got {precision!r}')
    torch.manual_seed(seed)
    gen = torch.Generator(device='cpu').manual_seed(seed)
    xs = torch.randn(steps, batch, 3, size, size, generator=gen)
    ys = torch.randint(0, num_classes, (steps, batch), generator=gen)
    began = time.perf_counter()
    model = sparse_resnet50(spec, steps, base=base).to(device)
    calibrate_bn(model, xs[0].to(device))
    set_train_mode(model, spec.bn_eval)
    _sync(device)
    build_s = time.perf_counter() - began
    pairs = list(spre_pairs(model))
    problems = []
    if pairs:
        wrong = [name for name, _, norm in pairs if norm.uses_running_stats != spec.bn_eval]
        if wrong:
            problems.append(f'{len(wrong)} SpRe pairs not on the '
                            f'{"fused" if spec.bn_eval else "two-branch"} path (e.g. {wrong[0]})')
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == 'bf16'
           else contextlib.nullcontext())
    losses, grad_norms, step_ms = [], [], []
    for i in range(steps):
        x, y = xs[i].to(device, non_blocking=True), ys[i].to(device, non_blocking=True)
        _sync(device)
        t0 = time.perf_counter()
        with amp:
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # A random network with BN on running statistics has gradient norms in the thousands
        # (measured on the CPU: 2e3 at the first step); unclipped, a few steps overflow it.
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in params if p.grad is not None], GRAD_CLIP)
        losses.append(loss.detach().item())
        grad_norms.append(grad_norm.item())
        if not (math.isfinite(losses[-1]) and math.isfinite(grad_norms[-1])):
            problems.append(f'not finite at step {i}: loss {losses[-1]}, gradient norm '
                            f'{grad_norms[-1]}')
            break  # a diverged step would only poison the masks and the deploy check
        opt.step()
        refresh_masks(model, i + 1)
        _sync(device)
        step_ms.append((time.perf_counter() - t0) * 1e3)
    problems += mask_problems(model)
    x_check = xs[0][:min(batch, 4)].to(device)
    calibrate_bn(model, x_check)
    deploy = deploy_check(model, x_check)
    problems += deploy.pop('problems')
    timed = step_ms[1:] or step_ms
    return dict(method=spec.name, learner=spec.learner, spre=spec.spre, note=LOSS_NOTE,
                interspace=spec.interspace, bn='eval (running stats)' if spec.bn_eval else 'train',
                spre_path=('fused' if spec.bn_eval else 'two-branch') if pairs else None,
                precision=precision, steps=steps, batch=batch, size=size,
                num_sparse_layers=len(list(sparse_layers(model))), losses=losses,
                grad_norms=grad_norms, grad_clip=GRAD_CLIP,
                build_s=round(build_s, 3), step_ms=step_ms,
                first_step_ms=step_ms[0] if step_ms else None,
                step_ms_median=sorted(timed)[len(timed) // 2] if timed else None,
                deploy=deploy, problems=problems, ok=not problems)


def run_training(report: CheckReport, record: dict, device, steps: int, batch: int, size: int,
                 deadline: float, methods: Sequence[MethodSpec] = METHODS,
                 precisions: Sequence[str] = ('fp32', 'bf16')) -> None:
    """Step c: every method x precision; failures into ``record``."""
    import torchvision
    torch.manual_seed(0)
    # one dense start shared by every method, on the device: the masks are then computed there
    base = torchvision.models.resnet50().to(device)
    record.update(model='torchvision resnet50 (layer1-4 sparse, 2:4)', steps=steps, batch=batch,
                  size=size, deploy_rtol=DEPLOY_RTOL, runs=[],
                  optimizer=f'SGD lr=1e-3 momentum=0.9 wd=1e-4, gradient norm clipped to '
                            f'{GRAD_CLIP}, cross-entropy on random labels')
    torch.backends.cudnn.benchmark = False  # fixed shapes, few steps: autotuning costs more
    for precision in precisions:
        for spec in methods:
            if time.monotonic() > deadline:
                record['failures'].append(f'{spec.name} {precision}: not run, time budget spent')
                continue
            try:
                run = train_check(spec, base, device, precision, steps, batch, size)
            except Exception as exc:
                run = dict(method=spec.name, precision=precision, ok=False,
                           problems=['crashed: ' + _error_text(exc)],
                           traceback=traceback.format_exc()[-2000:])
            record['runs'].append(run)
            record['failures'].extend(f'{spec.name} {precision}: {p}' for p in run['problems'])
            report.log(f'  train {spec.name:<14} {precision}: '
                       f'{"ok" if run.get("ok") else "FAILED"}; loss '
                       f'{(run.get("losses") or ["-"])[-1]}; step '
                       f'{run.get("step_ms_median") or 0:.1f} ms; deploy rel err '
                       f'{(run.get("deploy") or {}).get("rel_err", float("nan")):.1e}')
            if device.type == 'cuda':
                torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------- gemms
def bench_gemm(shape: dict, dtype: torch.dtype = torch.float16, warmup: int = 10,
               repeats: int = 50, device='cuda', seed: int = 0) -> dict:
    """Dense cuBLAS vs 2:4 semi-structured GEMM ``(M x K) @ (N x K)^T`` of one shape (CUDA).

    The weight is a magnitude 2:4 ``N x K`` matrix, the activation random ``M x K`` (the
    im2col matrix of a k x k conv has this shape; its values do not change the time). The
    sparse GEMM is ``GemmLayer`` (``F.linear`` with the compressed weight, padded to the
    kernel's minimum shapes). Backends: cuSPARSELt with PyTorch's default algorithm, with the
    algorithm ``torch._cslt_sparse_mm_search`` picks, and CUTLASS (PyTorch builds its CUTLASS
    2:4 kernels for sm8x only; elsewhere it refuses, and that is recorded, not a failure).
    Numerics: each sparse output vs the dense fp16 output and vs an fp32 product of the same
    operands, under the benchmark's tolerance.
    """
    m, n, k = shape['M'], shape['N'], shape['K']
    gen = torch.Generator(device=device).manual_seed(seed)
    weight = torch.randn(n, k, generator=gen, device=device)
    weight = (weight * nm_mask(weight, 2, 4)).to(dtype)
    a = torch.randn(m, k, generator=gen, device=device, dtype=dtype)
    linear = nn.Linear(k, n, bias=False, device=device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
    flop = 2.0 * m * n * k
    row = dict(shape, dtype=str(dtype).replace('torch.', ''), gflop=flop / 1e9,
               tolerance=tolerance_text(dtype))
    with torch.no_grad():
        ref32 = a.float() @ weight.float().t()
        dense = cuda_time(lambda: F.linear(a, weight), warmup, repeats)
        y_dense = F.linear(a, weight)
    row.update(dense_ms=dense['median_ms'], dense_iqr_ms=dense['iqr_ms'],
               dense_tflops=flop / dense['median_ms'] / 1e9,
               dense_vs_fp32=compare(y_dense, ref32, dtype))

    def sparse_row(layer: GemmLayer) -> dict:
        with torch.no_grad():
            cols, lead = layer.gemm_input(a)
            kernel = cuda_time(lambda: layer.gemm(cols), warmup, repeats)
            whole = cuda_time(lambda: layer(a), warmup, repeats)
            y = layer(a)
        return dict(ok=True, gemm_ms=kernel['median_ms'], gemm_iqr_ms=kernel['iqr_ms'],
                    padded_ms=whole['median_ms'], tflops=flop / kernel['median_ms'] / 1e9,
                    gemm_speedup=dense['median_ms'] / kernel['median_ms'],
                    padded_speedup=dense['median_ms'] / whole['median_ms'],
                    padded_shape=list(cols.shape), vs_dense=compare(y, y_dense, dtype),
                    vs_fp32=compare(y, ref32, dtype))

    for backend in ('cusparselt', 'cutlass'):
        try:
            row[backend] = sparse_row(GemmLayer.from_module(linear, sparse=True, backend=backend))
        except Exception as exc:
            row[backend] = dict(ok=False, error=_error_text(exc))
    row['cusparselt_searched'] = _searched_cusparselt(linear, a, sparse_row)
    return row


def _searched_cusparselt(linear: nn.Linear, a: torch.Tensor,
                         sparse_row: Callable[[GemmLayer], dict]) -> dict:
    """cuSPARSELt with the algorithm ``torch._cslt_sparse_mm_search`` finds for this shape
    (PyTorch uses algorithm 0 unless told). A private API: any failure is a note."""
    try:
        from torch.sparse import to_sparse_semi_structured
        base = GemmLayer.from_module(linear, sparse=True, backend='cusparselt')
        cols, _ = base.gemm_input(a)
        found = torch._cslt_sparse_mm_search(base.weight2d.packed, cols.t(),
                                             transpose_result=True)
        alg_id = int(found[0] if isinstance(found, (tuple, list)) else found)
        rows, cols_k = base.weight2d.shape  # padded like the default-algorithm weight
        weight = linear.weight.detach()
        w2d = F.pad(weight, (0, cols_k - weight.shape[1], 0, rows - weight.shape[0])).contiguous()
        with forced_backend('cusparselt'):
            sparse = to_sparse_semi_structured(w2d, alg_id=alg_id)
        layer = GemmLayer(sparse, None, base.out_features, base.in_features, None,
                          base.dense_row_mult)
        return dict(sparse_row(layer), alg_id=alg_id)
    except Exception as exc:
        return dict(ok=False, error=_error_text(exc))


def gemm_problems(row: dict) -> List[str]:
    """Failures of one GEMM row: no working sparse backend, or a wrong sparse result."""
    what = f'{row["name"]} batch {row["batch"]} ({row["M"]}x{row["N"]}x{row["K"]})'
    problems = []
    if not row.get('dense_vs_fp32', {}).get('ok'):
        problems.append(f'{what}: dense cuBLAS result off the fp32 product')
    working = [b for b in ('cusparselt', 'cutlass') if (row.get(b) or {}).get('ok')]
    if not working:
        problems.append(f'{what}: no 2:4 backend ran (' + '; '.join(
            f'{b}: {(row.get(b) or {}).get("error")}' for b in ('cusparselt', 'cutlass')) + ')')
    for backend in ('cusparselt', 'cutlass', 'cusparselt_searched'):
        result = row.get(backend) or {}
        if result.get('ok') and not (result['vs_dense']['ok'] and result['vs_fp32']['ok']):
            problems.append(f'{what}: {backend} result outside the tolerance (rel err vs dense '
                            f'{result["vs_dense"]["rel_err"]:.2e}, vs fp32 '
                            f'{result["vs_fp32"]["rel_err"]:.2e})')
    return problems


def cutlass_expected_unavailable(capability: Tuple[int, int]) -> bool:
    """PyTorch's CUTLASS 2:4 kernels run on sm8x only."""
    return capability[0] != 8


# --------------------------------------------------------------------------------- benchmark
@torch.no_grad()
def benchmark_model(model: nn.Module, runners: Dict[str, Callable[[], object]],
                    shape_scope: str, scope_prefixes: Sequence[str], dtype: torch.dtype,
                    backend: str, warmup: int, repeats: int, meta: dict,
                    log: Callable[[str], None] = print) -> dict:
    """What ``tools/benchmark_sparse.py`` does on CUDA, for any model already on the GPU in
    ``dtype``: 2:4 validity, input shapes from one ``runners[shape_scope]`` call, per-layer dense
    vs sparse timing and numerics, per-layer dispatch, end to end per runner. Returns the
    tool's JSON report (:func:`build_report`)."""
    checks = check_layers(model, scope_prefixes, 2, 4)
    names = [c.name for c in checks if c.valid and c.in_scope]
    shapes = capture_input_shapes(model, names, runners[shape_scope])
    layers, sparse_modules = [], {}
    for name in names:
        module = model.get_submodule(name)
        check = next(c for c in checks if c.name == name)
        row = dict(name=name, kind=check.kind, weight_shape=list(check.weight_shape),
                   valid=True, calls=layer_calls(module, shapes[name]), dispatch=None,
                   note=None)
        if not shapes[name]:
            row['note'] = 'not called in this forward'
        else:
            res, sparse = bench_layer_cuda(module, shapes[name], dtype, backend, warmup, repeats)
            row.update(res)
            row.update(speedups(row))
            if row.get('numerics'):
                row['numerics']['reference'] = 'dense cuDNN/cuBLAS on GPU, same dtype'
            if sparse is not None:
                sparse_modules[name] = sparse
        layers.append(row)
    log(f'    {len(layers)} layers timed; {len(sparse_modules)} with a working sparse kernel')
    decisions = dispatch_decisions(layers)
    for row in layers:
        row['dispatch'] = decisions[row['name']] if row['name'] in sparse_modules else 'dense'
    end_to_end = bench_end_to_end(model, runners, sparse_modules, decisions, warmup, repeats)
    for scope, run in runners.items():
        end_to_end[scope]['numerics_all_sparse'] = compare_outputs(model, run, sparse_modules,
                                                                   dtype)
    return build_report(meta, [c.to_dict() for c in checks], layers, end_to_end,
                        tolerance_text(dtype), None)


def backbone_model(dtype: torch.dtype) -> Tuple[nn.Module, int]:
    """The model of step d without mmdet: the 2:4 deploy SpRe R-50 + dense FPN
    (:func:`r50_fpn_deploy`), built on the GPU, in ``dtype``, channels-last; and its number of
    2:4 layers."""
    model, num_sparse = r50_fpn_deploy(device='cuda')
    return model.to(dtype=dtype).to(memory_format=torch.channels_last).eval(), num_sparse


def benchmark_backbone(model: nn.Module, num_sparse: int, batch: int, height: int, width: int,
                       dtype: torch.dtype, warmup: int, repeats: int, backend: str = 'auto',
                       log: Callable[[str], None] = print) -> dict:
    """Step d without mmdet: :func:`backbone_model`'s backbone and backbone+neck at one batch
    size, on CUDA."""
    torch.backends.cudnn.benchmark = True
    x = detection_input(batch, height, width, 'cuda', dtype)
    runners = {'backbone': lambda: model.backbone(x),
               'backbone+neck': lambda: model.neck(model.backbone(x))}
    meta = dict(model='2:4 deploy form of a SpRe (SR-STE) ResNet-50 (torchvision) + dense FPN '
                      '(torchvision, 5 levels)', input_size=[height, width],
                padded_size=list(padded_size(height, width)), batch_size=batch,
                dtype=str(dtype).replace('torch.', ''), backend=resolve_backend(backend),
                scope='backbone',
                warmup=warmup, repeats=repeats, cudnn_benchmark=True,
                num_sparse_training_layers=num_sparse)
    return benchmark_model(model, runners, 'backbone', ['backbone'], dtype, backend, warmup,
                           repeats, meta, log)


def make_detector_deploy(folder: str, repo: Path = REPO_ROOT) -> Dict[str, str]:
    """Build the R-50 Mask R-CNN SpRe 2:4 model of :data:`DETECTOR_CONFIG` (random weights: no
    download; timings do not depend on values), finish its masks and export its deploy model
    into ``folder`` with :func:`spre_mmdet.deploy.export_deploy`."""
    from mmengine.config import Config

    from spre_mmdet.deploy import build_model, export_deploy
    cfg = Config.fromfile(str(repo / DETECTOR_CONFIG))
    cfg.model.backbone.init_cfg = None  # torchvision:// would need the network
    model = build_model(cfg)
    model.init_weights()
    refresh_masks(model, 0)
    return export_deploy(model, cfg, folder)


def benchmark_detector(deploy: Dict[str, str], batch: int, out_dir: str, warmup: int,
                       repeats: int, timeout_s: float, repo: Path = REPO_ROOT) -> dict:
    """Step d with mmdet: ``tools/benchmark_sparse.py --scope detector`` on the deploy model at
    800x1333 fp16 in a subprocess; its JSON report, plus the command and its output's end."""
    cmd = [sys.executable, str(repo / BENCHMARK_TOOL), deploy['deploy_config.py'],
           deploy['deploy.pth'], '--input-size', *map(str, INPUT_SIZE), '--dtype', 'fp16',
           '--batch-size', str(batch), '--scope', 'detector', '--device', 'cuda', '--warmup',
           str(warmup), '--repeats', str(repeats), '--out-dir', out_dir]
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(repo), env.get('PYTHONPATH')) if p)
    proc = subprocess.run(cmd, cwd=str(repo), env=env, capture_output=True, text=True,
                          timeout=max(timeout_s, 10))
    path = osp.join(out_dir, 'benchmark_sparse.json')
    if proc.returncode != 0 or not osp.exists(path):
        raise RuntimeError(f'{BENCHMARK_TOOL} exited with status {proc.returncode}: '
                           f'{(proc.stdout + proc.stderr)[-1500:]}')
    with open(path) as f:
        result = json.load(f)
    result['command'] = ' '.join(osp.relpath(c, repo) if c.startswith(str(repo)) else c
                                 for c in cmd[1:])
    return result


def benchmark_problems(result: dict, batch: int, expected_layers: Optional[int]) -> List[str]:
    """Failures of one benchmark report: layers without a sparse kernel or with wrong numerics,
    end-to-end rows without a time, too few 2:4 layers."""
    what = f'batch {batch}'
    problems = []
    layers = result.get('layers') or []
    if expected_layers is not None and len(layers) != expected_layers:
        problems.append(f'{what}: {len(layers)} 2:4 layers benchmarked, expected '
                        f'{expected_layers}')
    for layer in layers:
        if layer.get('sparse_ms') is None:
            problems.append(f'{what}: {layer["name"]}: no sparse timing ({layer.get("note")})')
        elif not (layer.get('numerics') or {}).get('ok'):
            problems.append(f'{what}: {layer["name"]}: sparse output outside the tolerance '
                            f'({layer.get("numerics")})')
    for scope, row in (result.get('end_to_end') or {}).items():
        for variant in ('dense', 'dispatch', 'all_sparse'):
            if row.get(f'{variant}_ms') is None:
                problems.append(f'{what}: {scope} {variant}: no time ({row.get("note")})')
        num = row.get('numerics_all_sparse')
        if num and num.get('ok') is False:
            problems.append(f'{what}: {scope}: all-sparse output outside the tolerance '
                            f'(rel err {num.get("rel_err")})')
    if not result.get('timings_available', True):
        problems.append(f'{what}: no timings: {result.get("timing_unavailable_reason")}')
    return problems


# ----------------------------------------------------------------------------------- anchors
def anchor_flags(gemms: Sequence[dict], benchmarks: Sequence[dict]) -> dict:
    """Compare every speedup with the published anchors; flags, never failures.

    * ``above_ceiling`` (violation): a speedup over 2x, which half the multiply-adds cannot
      give: suspect the timing or the dense baseline.
    * ``dispatch_slower_than_dense`` (violation): per-layer dispatch end to end slower than
      dense by more than the noise (the larger IQR, and at least 1%).
    * ``outside_gemm_range`` / ``outside_e2e_range`` (information): a batch-8 GEMM outside
      1.1-1.4x, or a dispatch end-to-end speedup outside 1.1-1.3x.
    """
    flags = []

    def flag(kind, what, value, expected):
        flags.append(dict(kind=kind, what=what, value=value, expected=expected,
                          violation=kind in VIOLATIONS))

    for row in gemms:
        what = f'GEMM {row.get("name")} batch {row.get("batch")}'
        for backend in ('cusparselt', 'cusparselt_searched', 'cutlass'):
            result = row.get(backend) or {}
            speedup = result.get('gemm_speedup') if result.get('ok') else None
            if speedup is None:
                continue
            if speedup > CEILING:
                flag('above_ceiling', f'{what} {backend}', speedup, f'<= {CEILING}')
            elif row.get('batch', 0) >= 8 and not GEMM_RANGE[0] <= speedup <= GEMM_RANGE[1]:
                flag('outside_gemm_range', f'{what} {backend}', speedup,
                     f'{GEMM_RANGE[0]}-{GEMM_RANGE[1]} (measured elsewhere)')
    for bench in benchmarks:
        result = bench.get('result') or {}
        label = f'{bench.get("scope")} batch {bench.get("batch")}'
        for layer in result.get('layers') or []:
            for key in ('speedup', 'gemm_speedup'):
                if (layer.get(key) or 0) > CEILING:
                    flag('above_ceiling', f'{label} {layer["name"]} {key}', layer[key],
                         f'<= {CEILING}')
        for scope, row in (result.get('end_to_end') or {}).items():
            dense, dispatch = row.get('dense_ms'), row.get('dispatch_ms')
            if dense and dispatch:
                noise = max(row.get('dense_iqr_ms') or 0.0, row.get('dispatch_iqr_ms') or 0.0,
                            0.01 * dense)
                if dispatch > dense + noise:
                    flag('dispatch_slower_than_dense', f'{label} {scope}',
                         dict(dense_ms=dense, dispatch_ms=dispatch, noise_ms=noise),
                         'dispatch_ms <= dense_ms + noise')
            for variant in ('dispatch', 'all_sparse'):
                speedup = row.get(f'{variant}_speedup')
                if speedup and speedup > CEILING:
                    flag('above_ceiling', f'{label} {scope} {variant}', speedup, f'<= {CEILING}')
            speedup = row.get('dispatch_speedup')
            if speedup and speedup <= CEILING and not E2E_RANGE[0] <= speedup <= E2E_RANGE[1]:
                flag('outside_e2e_range', f'{label} {scope} dispatch', speedup,
                     f'{E2E_RANGE[0]}-{E2E_RANGE[1]} (measured elsewhere)')
    return dict(ceiling=CEILING, gemm_range_measured_elsewhere=list(GEMM_RANGE),
                e2e_range_measured_elsewhere=list(E2E_RANGE), flags=flags,
                violations=sum(1 for f in flags if f['violation']),
                note='flags never fail the check; violations break a promise (2x ceiling, '
                     'dispatch never slower than dense) and need a look')


# ------------------------------------------------------------------------------------- steps
def step_environment(report: CheckReport, record: dict) -> None:
    """Step a: what ran where; decides the benchmark's scope (and says so loudly)."""
    env = environment_record()
    ok, reason, versions = detector_support()
    env.update(detector_support=ok, detector_support_reason=reason,
               **{f'{k}_imported': v for k, v in versions.items()})
    report.data['environment'] = env
    record.update(device=env['device_name'], capability=env['capability'])
    report.data['scope'] = 'detector' if ok else 'backbone'
    if not ok:
        report.data['scope_reason'] = (
            f'{reason}: the detector-level benchmark is replaced by the 2:4 deploy form of a '
            'SpRe R-50 backbone + dense FPN (torchvision), timed per layer and end to end for '
            'backbone and backbone+neck')
        bar = '!' * 100
        print(f'{bar}\n!! SCOPE: backbone(+neck) only. {report.data["scope_reason"]}.\n{bar}',
              flush=True)
    if not env['cusparselt_available']:
        record['failures'].append('cuSPARSELt is not available in this torch build')
    if torch.cuda.get_device_capability(0)[0] < 8:
        record['failures'].append(f'compute capability {env["capability"]} < 8.0: no 2:4 sparse '
                                  'tensor cores')
    report.log(f'{env["device_name"]} sm{env["capability"]}, torch {env["torch"]} CUDA '
               f'{env["torch_cuda"]}, cuDNN {env["cudnn"]}, cuSPARSELt '
               f'{env["cusparselt_version"]}, driver {env.get("driver")}')


def step_cuda_tests(report: CheckReport, record: dict, out_dir: str, timeout_s: float) -> None:
    """Step b: the tests marked cuda."""
    result = run_cuda_tests(out_dir, timeout_s)
    record.update(result)
    record['failures'].extend(result.get('problems') or [])
    report.log(f'  {result.get("passed", 0)}/{result.get("total", 0)} cuda tests passed')


def step_gemm(report: CheckReport, record: dict, warmup: int, repeats: int,
              deadline: float) -> List[dict]:
    """Step e: the largest R-50 GEMMs, dense vs 2:4, batch 1 and 8."""
    capability = torch.cuda.get_device_capability(0)
    expect_no_cutlass = cutlass_expected_unavailable(capability)
    record.update(layers=list(GEMM_LAYERS), input_size=list(INPUT_SIZE), dtype='fp16',
                  cutlass_expected_unavailable=expect_no_cutlass, rows=[],
                  cache='operands are not flushed between repeats: a shape whose operands fit '
                        'in L2 (batch 1) is timed cache-warm, dense and sparse alike, as a '
                        'layer reading what the previous one just wrote')
    for batch in BATCH_SIZES:
        for shape in r50_gemm_shapes(*INPUT_SIZE, batch):
            if time.monotonic() > deadline:
                record['failures'].append(f'{shape["name"]} batch {batch}: not run, time budget '
                                          'spent')
                continue
            row = bench_gemm(shape, torch.float16, warmup, repeats)
            record['rows'].append(row)
            record['failures'].extend(gemm_problems(row))
            if not expect_no_cutlass and not row['cutlass']['ok']:
                record['failures'].append(f'{shape["name"]} batch {batch}: CUTLASS failed on '
                                          f'sm8x: {row["cutlass"]["error"]}')
            best = row.get('cusparselt') or {}
            report.log(f'  GEMM {shape["name"]:<22} b{batch} {row["M"]}x{row["N"]}x{row["K"]}: '
                       f'dense {row["dense_ms"]:.4f} ms, cuSPARSELt '
                       f'{best.get("gemm_ms", float("nan")):.4f} ms '
                       f'({best.get("gemm_speedup", float("nan")):.2f}x)')
    return record['rows']


def step_benchmark(report: CheckReport, record: dict, warmup: int, repeats: int,
                   deadline: float) -> List[dict]:
    """Step d: per layer and end to end at 800x1333 fp16, batch 1 and 8, in the scope
    :func:`step_environment` chose."""
    scope = report.data.get('scope') or 'backbone'
    record.update(scope=scope, input_size=list(INPUT_SIZE), dtype='fp16', runs=[])
    with contextlib.ExitStack() as stack:
        deploy = model = None
        if scope == 'detector':
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix='gpu_check_'))
            report.log(f'  exporting the deploy model of {DETECTOR_CONFIG}')
            deploy = make_detector_deploy(osp.join(tmp, 'deploy'))
            record['deploy_of'] = DETECTOR_CONFIG
        for batch in BATCH_SIZES:
            if time.monotonic() > deadline - 45:  # a batch takes about that long
                record['failures'].append(f'batch {batch}: not run, time budget spent')
                continue
            report.log(f'  benchmark scope {scope}, batch {batch}')
            if deploy is not None:
                result = benchmark_detector(deploy, batch, osp.join(tmp, f'bench_bs{batch}'),
                                            warmup, repeats,
                                            timeout_s=deadline + 30 - time.monotonic())
                expected = None  # the tool lists whatever is 2:4 in the detector
            else:
                if model is None:
                    model, num_sparse = backbone_model(torch.float16)
                result = benchmark_backbone(model, num_sparse, batch, *INPUT_SIZE, torch.float16,
                                            warmup, repeats, log=report.log)
                expected = R50_SPARSE_LAYERS
            problems = benchmark_problems(result, batch, expected)
            record['runs'].append(dict(scope=scope, batch=batch, result=result,
                                       problems=problems))
            record['failures'].extend(problems)
            for name, row in (result.get('end_to_end') or {}).items():
                report.log(f'    {name:<14} dense {row.get("dense_ms")} ms, dispatch '
                           f'{row.get("dispatch_ms")} ms, all-sparse {row.get("all_sparse_ms")}'
                           ' ms')
            torch.cuda.empty_cache()
    return record['runs']


# -------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='work_dirs/gpu_check',
                   help='folder for gpu_check.json (and cuda_tests.xml)')
    p.add_argument('--budget-s', type=float, default=450.0,
                   help='start no new work after this many seconds (scripts/gpu_check.sh stops '
                        'the run at its own limit, 480 s by default)')
    p.add_argument('--train-steps', type=int, default=6)
    p.add_argument('--train-batch', type=int, default=16)
    p.add_argument('--train-size', type=int, default=224)
    p.add_argument('--warmup', type=int, default=5, help='benchmark warm-up calls')
    p.add_argument('--repeats', type=int, default=20, help='benchmark timed samples')
    p.add_argument('--gemm-warmup', type=int, default=10)
    p.add_argument('--gemm-repeats', type=int, default=50)
    return p.parse_args(argv)


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    """Run the check; exit status 0 (passed), 1 (a failure), 2 (no CUDA), 124 (stopped)."""
    args = parse_args(argv)
    if not cuda_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return EXIT_NO_CUDA
    signal.signal(signal.SIGTERM, _on_sigterm)
    start = time.monotonic()
    deadline = start + args.budget_s

    def until(reserve_s: float, cap_s: float) -> float:
        """A step's deadline: at most ``cap_s`` from now, leaving ``reserve_s`` for the rest."""
        return min(deadline - reserve_s, time.monotonic() + cap_s)

    meta = dict(tool='python3 tools/analysis_tools/gpu_check.py',
                argv=list(sys.argv[1:] if argv is None else argv),
                date=time.strftime('%Y-%m-%d %H:%M:%S %Z'), budget_s=args.budget_s,
                input_size=list(INPUT_SIZE), batch_sizes=list(BATCH_SIZES),
                timing='CUDA events after warm-up; medians (and IQR) over repeats')
    report = CheckReport(osp.join(args.out, 'gpu_check.json'), meta, start)
    report.log(f'writing {report.path}; budget {args.budget_s:.0f}s')
    terminated = False
    gemms, benchmarks = [], []
    try:
        with report.step('environment') as record:
            step_environment(report, record)
        with report.step('cuda_tests') as record:
            step_cuda_tests(report, record, args.out, until(240, 240) - time.monotonic())
        with report.step('gemm') as record:
            gemms = step_gemm(report, record, args.gemm_warmup, args.gemm_repeats,
                              until(200, 60))
        with report.step('training') as record:
            run_training(report, record, torch.device('cuda'), args.train_steps,
                         args.train_batch, args.train_size, until(120, 150))
        with report.step('benchmark') as record:
            benchmarks = step_benchmark(report, record, args.warmup, args.repeats, deadline)
    except Terminated:
        terminated = True
        report.data['failures'].append('terminated (SIGTERM, e.g. the time limit): the steps '
                                       'after the last one recorded did not run')
    report.data['anchors'] = anchor_flags(gemms, benchmarks)
    code = report.finish(terminated)
    print('\n'.join(summary_lines(report.data)), flush=True)
    print(f'gpu_check: JSON: {report.path}', flush=True)
    return code


if __name__ == '__main__':
    sys.exit(main())
