"""The one-call GPU check (``tools/analysis_tools/gpu_check.py``): what can run without a GPU.

The torchvision walker and the training/deploy check run here on a small Bottleneck ResNet
(R-50's block structure, narrow widths); the report, JUnit and anchor logic on synthetic
inputs; ``main`` with its device steps replaced by fakes; and the refusal without CUDA in a
subprocess. The tests marked ``cuda`` run the GEMM and benchmark functions on a GPU.
"""
import json
import subprocess
import sys

import gpu_check as gc
import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from spre_mmdet.benchmark.torchvision_r50 import (GEMM_LAYERS, METHODS, R50_SPARSE_LAYERS,
                                                  MethodSpec, detection_input, padded_size,
                                                  r50_gemm_shapes, set_train_mode,
                                                  sparse_resnet50, sparsify_torchvision_resnet)
from spre_mmdet.sparsity import (InterspaceConv2d, SparseConv2d, SpReBatchNorm2d, SpReConv2d,
                                 sparse_layers)


def small_resnet(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet with Bottleneck blocks (layer1 two blocks, one elsewhere, every
    stage with a downsample) at widths 8..32: R-50's structure at a CPU test's cost."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes)
    model.inplanes = 16
    model.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(16)
    model.layer1 = model._make_layer(Bottleneck, 8, 2)
    model.layer2 = model._make_layer(Bottleneck, 16, 1, stride=2)
    model.layer3 = model._make_layer(Bottleneck, 16, 1, stride=2)
    model.layer4 = model._make_layer(Bottleneck, 32, 1, stride=2)
    model.fc = nn.Linear(32 * Bottleneck.expansion, num_classes)
    return model


#: small_resnet: 5 bottlenecks x 3 convs + 4 downsample convs
SMALL_SPARSE_LAYERS = 19


def _expected_r50_names():
    names = []
    for stage, blocks in zip(('layer1', 'layer2', 'layer3', 'layer4'), (3, 4, 6, 3)):
        for b in range(blocks):
            names += [f'{stage}.{b}.conv{i}' for i in (1, 2, 3)]
            if b == 0:
                names.append(f'{stage}.0.downsample.0')
    return names


# ------------------------------------------------------------------------------------ walker
@pytest.mark.parametrize('structure', ['plain', 'spre', 'interspace'])
def test_walker_makes_every_r50_stage_conv_sparse_and_nothing_else(structure):
    """On torchvision's R-50 the walker makes exactly the 52 layer1-4 convs sparse (stem and fc
    dense), SpRe/interspace on the 3x3 convs only, SpRe paired with the BN after its conv."""
    import torchvision
    model = torchvision.models.resnet50()
    dense = sparsify_torchvision_resnet(
        model, 'srste', 2, 4, spre=dict(rep_gamma=0.5) if structure == 'spre' else None,
        interspace=dict(pruning='nm') if structure == 'interspace' else None)
    assert dense == {}
    layers = dict(sparse_layers(model))
    assert sorted(layers) == sorted(_expected_r50_names())
    assert len(layers) == R50_SPARSE_LAYERS
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    for name, layer in layers.items():
        spatial = name.endswith('conv2')
        if structure == 'spre' and spatial:
            assert isinstance(layer, SpReConv2d)
            block = model.get_submodule(name.rpartition('.')[0])
            assert isinstance(block.bn2, SpReBatchNorm2d) and block.bn2.conv_name == 'conv2'
            assert block.bn2.rep_bn.weight.detach().eq(0.5).all()
        elif structure == 'interspace' and spatial:
            assert isinstance(layer, InterspaceConv2d)
        else:
            assert type(layer) is SparseConv2d
        assert layer.sparsity.method == 'srste'


def test_walker_matches_mmdet_sparse_resnet_layer_for_layer():
    """The torchvision walker gives the same sparse layers (names and types) as the package's
    mmdet SparseResNet-50 does, for SpRe and for interspace."""
    pytest.importorskip('mmdet')
    import torchvision
    from spre_mmdet.models import SparseResNet
    for extra in (dict(spre=dict(rep_gamma=0.0)), dict(interspace=dict(pruning='nm'))):
        ours = torchvision.models.resnet50()
        sparsify_torchvision_resnet(ours, 'srste', 2, 4, **extra)
        theirs = SparseResNet(depth=50, frozen_stages=0, init_cfg=None,
                              sparsity=dict(learner=dict(type='srste'), **extra))
        assert {n: type(m) for n, m in sparse_layers(ours)} == \
            {n: type(m) for n, m in sparse_layers(theirs)}


def test_walker_checks_options_before_changing_anything():
    """A misplaced option is refused by the package's own check, the model left dense."""
    model = small_resnet()
    with pytest.raises(ValueError, match='spre'):
        sparsify_torchvision_resnet(model, 'srste', spre=dict(interval=5))
    assert not list(sparse_layers(model))


def test_set_train_mode_bn_eval_puts_every_bn_on_running_stats():
    """bn_eval: the model trains while every BN (SpRe's branch BN too) uses running stats, so
    SpRe pairs take the fused path; without it they run both branches."""
    spec = MethodSpec('spre', 'srste', spre=True, bn_eval=True)
    model = sparse_resnet50(spec, 3, base=small_resnet())
    set_train_mode(model, True)
    norms = [norm for m in model.modules() if isinstance(m, SpReBatchNorm2d) for norm in (m,)]
    assert model.training and norms and all(n.uses_running_stats for n in norms)
    set_train_mode(model, False)
    assert not any(n.uses_running_stats for n in norms)


# ---------------------------------------------------------------------------------- training
@pytest.mark.parametrize('spec', METHODS, ids=[s.name for s in METHODS])
def test_train_check_each_method_fp32_cpu(spec):
    """Each method trains 4 steps with finite loss, ends with final exactly-2:4 masks, and its
    deploy model is exactly 2:4 and equal to the training-time model (fp32)."""
    run = gc.train_check(spec, small_resnet(), 'cpu', 'fp32', steps=4, batch=4, size=32,
                         num_classes=10)
    assert run['ok'], run['problems']
    assert run['num_sparse_layers'] == SMALL_SPARSE_LAYERS
    assert len(run['losses']) == 4 and all(torch.isfinite(torch.tensor(run['losses'])))
    assert run['deploy']['num_layers'] == SMALL_SPARSE_LAYERS
    assert run['deploy']['rel_err'] <= gc.DEPLOY_RTOL
    assert run['spre_path'] == (('fused' if spec.bn_eval else 'two-branch') if spec.spre
                                else None)
    assert run['step_ms_median'] > 0


@pytest.mark.parametrize('name', ['srste', 'spre_lbc', 'interspace'])
def test_train_check_bf16_autocast_cpu(name):
    """Under bf16 autocast the same checks hold (deploy compared in fp32)."""
    spec = next(s for s in METHODS if s.name == name)
    run = gc.train_check(spec, small_resnet(), 'cpu', 'bf16', steps=3, batch=4, size=32,
                         num_classes=10)
    assert run['ok'], run['problems']
    assert run['precision'] == 'bf16'


def test_lbc_schedule_ends_before_the_last_step():
    """LBC's removal ends at t_f = steps - 1: the final mask is trained for one step."""
    spec = next(s for s in METHODS if s.learner == 'lbc')
    assert spec.learner_kwargs(6) == dict(t_i=0, t_f=5)
    assert MethodSpec('x', 'srste').learner_kwargs(6) == {}


def test_train_check_reports_a_deploy_that_is_not_2of4():
    """The check can fail: a layer whose mask is not 2:4 is reported in the masks and in the
    deploy model, and the run is not ok."""
    model = sparse_resnet50(MethodSpec('srste', 'srste'), 2, base=small_resnet())
    name, layer = next(iter(sparse_layers(model)))
    layer.sparsity.mask.fill_(True)  # dense: 4 of 4 kept
    problems = gc.mask_problems(model)
    assert any(p.startswith(f'{name}: mask not 2:4') for p in problems)
    x = torch.randn(2, 3, 32, 32)
    gc.calibrate_bn(model, x)
    deploy = gc.deploy_check(model, x)
    assert not deploy['ok']
    assert any(p.startswith(f'{name}: deploy weight not 2:4') for p in deploy['problems'])


def test_deploy_check_reports_a_changed_function():
    """A deploy model that computes something else is reported with its error."""
    model = sparse_resnet50(MethodSpec('srste', 'srste'), 2, base=small_resnet())
    x = torch.randn(2, 3, 32, 32)
    gc.calibrate_bn(model, x)
    deploy = gc.deploy_check(model, x, rtol=-1.0)  # any difference, even 0, is too much
    assert not deploy['ok'] and 'differs from the training-time model' in deploy['problems'][0]


def test_calibrate_bn_restores_modes_and_momentum():
    """BN calibration leaves every module's mode and every BN's momentum as it found them and
    sets the running statistics to the batch's."""
    model = small_resnet().train()
    model.layer1.eval()
    x = torch.randn(4, 3, 32, 32)
    modes = {name: m.training for name, m in model.named_modules()}
    gc.calibrate_bn(model, x)
    assert modes == {name: m.training for name, m in model.named_modules()}
    assert model.bn1.momentum == 0.1
    stem = model.conv1(x)
    torch.testing.assert_close(model.bn1.running_mean, stem.mean((0, 2, 3)), rtol=1e-4,
                               atol=1e-5)


def test_run_training_covers_every_method_and_precision(monkeypatch):
    """Step c runs every method in fp32 and bf16 and turns each run's problems (and a crash)
    into failures named by method and precision."""
    seen = []

    def fake(spec, base, device, precision, steps, batch, size):
        seen.append((spec.name, precision))
        if spec.name == 'asp' and precision == 'bf16':
            raise RuntimeError('boom')
        problems = ['loss not finite at step 2: nan'] if spec.name == 'lbc' else []
        return dict(method=spec.name, precision=precision, problems=problems,
                    ok=not problems, losses=[1.0], step_ms_median=1.0, deploy=dict(rel_err=0.0))

    monkeypatch.setattr(gc, 'train_check', fake)
    monkeypatch.setattr('torchvision.models.resnet50', lambda: nn.Linear(1, 1))
    report = gc.CheckReport('/dev/null', {})
    record = dict(failures=[])
    gc.run_training(report, record, torch.device('cpu'), 2, 2, 32, deadline=float('inf'))
    assert seen == [(s.name, p) for p in ('fp32', 'bf16') for s in METHODS]
    assert 'lbc fp32: loss not finite at step 2: nan' in record['failures']
    assert any(f.startswith('asp bf16: crashed: RuntimeError: boom') for f in record['failures'])
    assert len(record['runs']) == 2 * len(METHODS)


def test_run_training_past_its_deadline_fails_loudly(monkeypatch):
    """Runs that the time budget leaves out are failures, not silent skips."""
    monkeypatch.setattr('torchvision.models.resnet50', lambda: nn.Linear(1, 1))
    record = dict(failures=[])
    gc.run_training(gc.CheckReport('/dev/null', {}), record, torch.device('cpu'), 2, 2, 32,
                    deadline=0.0)
    assert len(record['failures']) == 2 * len(METHODS)
    assert all('not run, time budget spent' in f for f in record['failures'])


# -------------------------------------------------------------------- benchmark model, shapes
def test_r50_gemm_shapes_at_detection_size():
    """The GEMM shapes come from a real (meta-device) forward of R-50 at 800x1333 padded to
    800x1344: layer4 is 25x42 per image, layer3 50x84."""
    assert padded_size(800, 1333) == (800, 1344)
    rows = {r['name']: r for r in r50_gemm_shapes(800, 1333, 8)}
    assert list(rows) == list(GEMM_LAYERS)
    assert (rows['layer4.1.conv2']['M'], rows['layer4.1.conv2']['N'],
            rows['layer4.1.conv2']['K']) == (8 * 25 * 42, 512, 9 * 512)
    assert rows['layer4.1.conv2']['kind'] == 'conv3x3 (im2col)'
    assert (rows['layer4.0.downsample.0']['M'], rows['layer4.0.downsample.0']['N'],
            rows['layer4.0.downsample.0']['K']) == (8 * 25 * 42, 2048, 1024)
    assert (rows['layer4.1.conv1']['N'], rows['layer4.1.conv1']['K']) == (512, 2048)
    assert (rows['layer4.1.conv3']['N'], rows['layer4.1.conv3']['K']) == (2048, 512)
    assert (rows['layer3.1.conv2']['M'], rows['layer3.1.conv2']['K']) == (8 * 50 * 84, 2304)
    assert r50_gemm_shapes(800, 1333, 1)[0]['M'] == 25 * 42


def test_detection_input_is_padded_like_mmdet():
    """The benchmark batch is zero-padded to a multiple of 32, channels-last."""
    x = detection_input(2, 50, 70, 'cpu', torch.float32)
    assert x.shape == (2, 3, 64, 96) and x.is_contiguous(memory_format=torch.channels_last)
    assert x[:, :, 50:].abs().sum() == 0 and x[:, :, :, 70:].abs().sum() == 0
    assert x[:, :, :50, :70].abs().sum() > 0


@pytest.mark.slow  # builds and folds a full SpRe ResNet-50 on the CPU (~10 s)
def test_r50_fpn_deploy_is_2of4_and_its_gemms_match_on_cpu():
    """The fallback benchmark model: 52 exactly-2:4 backbone convs (the stem and the FPN not),
    and with every one of them as an im2col GEMM the backbone+neck output is unchanged (CPU
    fp32 reference of the path the GPU benchmark times)."""
    from spre_mmdet.benchmark import GemmLayer, check_layers, compare_outputs
    from spre_mmdet.benchmark.torchvision_r50 import r50_fpn_deploy
    model, num_sparse = r50_fpn_deploy()
    assert num_sparse == R50_SPARSE_LAYERS
    checks = check_layers(model, ['backbone'])
    valid = [c.name for c in checks if c.valid and c.in_scope]
    assert len(valid) == R50_SPARSE_LAYERS
    assert not any(c.valid for c in checks if c.name.startswith('neck.'))
    assert not next(c for c in checks if c.name == 'backbone.conv1').candidate
    x = detection_input(1, 64, 64, 'cpu', torch.float32)
    gemms = {name: GemmLayer.from_module(model.get_submodule(name)) for name in valid}
    num = compare_outputs(model, lambda: model(x), gemms, torch.float32)
    assert num['ok'], num


# -------------------------------------------------------------------------- detector scope
def test_benchmark_detector_command_is_the_tools(monkeypatch, tmp_path, repo_root):
    """The detector scope calls tools/benchmark_sparse.py with arguments its parser accepts:
    the deploy files, 800x1333, fp16, the batch, --scope detector, --device cuda."""
    from spre_mmdet.benchmark import sparse_tool as tool
    seen = {}

    def fake_run(cmd, **kwargs):
        args = tool.parse_args(cmd[2:])
        seen.update(vars(args))
        (tmp_path / 'bench').mkdir()
        (tmp_path / 'bench' / 'benchmark_sparse.json').write_text('{"layers": []}')
        return subprocess.CompletedProcess(cmd, 0, '', '')

    monkeypatch.setattr(gc.subprocess, 'run', fake_run)
    deploy = {'deploy_config.py': 'cfg.py', 'deploy.pth': 'deploy.pth'}
    result = gc.benchmark_detector(deploy, 8, str(tmp_path / 'bench'), 5, 20, 100.0)
    assert (seen['config'], seen['checkpoint']) == ('cfg.py', 'deploy.pth')
    assert seen['input_size'] == [800, 1333] and seen['dtype'] == 'fp16'
    assert seen['batch_size'] == 8 and seen['scope'] == 'detector' and seen['device'] == 'cuda'
    assert (seen['warmup'], seen['repeats']) == (5, 20)
    assert result['layers'] == [] and 'tools/benchmark_sparse.py' in result['command']


def test_benchmark_detector_failure_names_the_tool_and_its_output(monkeypatch, tmp_path):
    """A failing benchmark tool is an error with its exit status and the end of its output."""
    monkeypatch.setattr(gc.subprocess, 'run', lambda cmd, **k: subprocess.CompletedProcess(
        cmd, 1, '', 'ERROR: no GPU'))
    with pytest.raises(RuntimeError, match='exited with status 1: ERROR: no GPU'):
        gc.benchmark_detector({'deploy_config.py': 'c', 'deploy.pth': 'p'}, 1,
                              str(tmp_path), 1, 1, 10.0)


@pytest.mark.slow  # builds a Mask R-CNN R-50 and runs the benchmark tool on the CPU (~1 min)
def test_detector_deploy_export_runs_through_the_benchmark_tool(tmp_path, repo_root,
                                                                subprocess_env):
    """The detector scope's deploy model (SpRe config, random weights, masks finished) exports,
    and tools/benchmark_sparse.py --scope detector takes it: the 52 backbone convs are 2:4 and
    pass the CPU reference check."""
    pytest.importorskip('mmdet')
    deploy = gc.make_detector_deploy(str(tmp_path / 'deploy'), repo_root)
    out = tmp_path / 'bench'
    proc = subprocess.run(
        [sys.executable, str(repo_root / 'tools' / 'benchmark_sparse.py'),
         deploy['deploy_config.py'], deploy['deploy.pth'], '--input-size', '64', '64',
         '--scope', 'detector', '--device', 'cpu', '--out-dir', str(out)],
        cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / 'benchmark_sparse.json').read_text())
    assert len(data['layers']) == R50_SPARSE_LAYERS
    assert all(layer['numerics']['ok'] for layer in data['layers'])
    assert all(layer['name'].startswith('backbone.layer') for layer in data['layers'])


# ------------------------------------------------------------------------------ environment
def test_environment_record_is_the_packages_record_on_cuda0(monkeypatch):
    """The check's environment is spre_mmdet.environment's record of cuda:0, with the entries
    the check reports on taken from it (here on a fake sm90 device, no nvidia-smi)."""
    from types import SimpleNamespace

    from spre_mmdet import environment
    props = SimpleNamespace(name='Fake H200', major=9, minor=0, total_memory=141 << 30,
                            multi_processor_count=132, L2_cache_size=60 << 20)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'get_device_properties', lambda i: props)
    monkeypatch.setattr(torch.backends.cudnn, 'version', lambda: 91000)
    monkeypatch.setattr(environment, 'nvidia_smi', lambda: dict(driver_version='580.1'))
    monkeypatch.setattr(environment, '_mmengine_record', lambda: {})
    env = gc.environment_record()
    assert (env['device_name'], env['capability'], env['driver']) == ('Fake H200', '9.0', '580.1')
    assert env['torch'] == torch.__version__ and env['cudnn'] == 91000
    assert env['record']['device'] == 'cuda:0'
    assert env['record']['cuda']['devices'][0]['sparse_tensor_cores'] is True
    json.dumps(env)


# ------------------------------------------------------------------------------ report logic
def _junit(tmp_path, cases):
    body = ''.join(f'<testcase classname="tests.t" name="{name}" time="0.5">{inner}</testcase>'
                   for name, inner in cases)
    path = tmp_path / 'junit.xml'
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}'
                    '</testsuite></testsuites>')
    return str(path)


def test_junit_summary_counts_skips_as_problems(tmp_path):
    """Passed tests are fine; a failed, erroring or skipped CUDA test is a problem, named."""
    path = _junit(tmp_path, [
        ('test_ok', ''), ('test_bad', '<failure message="assert 1 == 2">tb</failure>'),
        ('test_skip', '<skipped message="needs a CUDA GPU"/>'),
        ('test_err', '<error message="fixture broke"/>')])
    summary = gc.junit_summary(path)
    assert (summary['total'], summary['passed'], summary['failed'], summary['skipped'],
            summary['error']) == (4, 1, 1, 1, 1)
    assert summary['problems'] == [
        'tests.t::test_bad: failed: assert 1 == 2',
        'tests.t::test_skip: skipped: needs a CUDA GPU',
        'tests.t::test_err: error: fixture broke']


def test_junit_summary_of_an_empty_selection_is_a_problem(tmp_path):
    """Selecting no CUDA test at all is a problem, not a pass."""
    assert gc.junit_summary(_junit(tmp_path, []))['problems'] == [
        'no test marked cuda was collected']


def test_cuda_test_files_are_the_marked_ones(repo_root):
    """The CUDA test selection finds the files with tests marked cuda (and no others)."""
    files = gc.cuda_test_files(repo_root)
    assert 'tests/test_benchmark/test_cuda.py' in files
    assert 'tests/test_tools/test_analysis_tools/test_gpu_check.py' in files
    for path in files:
        assert 'pytest.mark.cuda' in (repo_root / path).read_text()


@pytest.mark.slow  # pytest in a subprocess (~20 s on a loaded CPU)
def test_run_cuda_tests_without_a_gpu_reports_every_skip(tmp_path, repo_root):
    """The real pytest run of step b selects every cuda-marked test; where none can run (no
    GPU here) each one is reported as a skipped check, not counted as passed."""
    result = gc.run_cuda_tests(str(tmp_path), 600, repo_root)
    assert result['returncode'] == 0, result.get('output_tail')
    assert (tmp_path / 'cuda_tests.xml').exists()
    assert result['total'] >= 15 and result['skipped'] == result['total']
    assert result['passed'] == 0 and len(result['problems']) == result['total']
    assert all(': skipped: needs a CUDA GPU' in p for p in result['problems'])
    names = [c['name'] for c in result['cases']]
    assert any('test_cuda::test_sparse_conv_matches_dense_fp16' in n for n in names)
    assert any('test_gpu_check::test_bench_gemm_small_shape_on_cuda' in n for n in names)


def _gemm_row(batch, speedup, ok=True, numerics_ok=True):
    num = dict(ok=numerics_ok, rel_err=1e-3)
    sparse = dict(ok=True, gemm_speedup=speedup, vs_dense=num, vs_fp32=num) if ok else \
        dict(ok=False, error='RuntimeError: no kernel')
    return dict(name='layer4.1.conv2', batch=batch, M=8400, N=512, K=4608,
                dense_vs_fp32=dict(ok=True), cusparselt=sparse,
                cutlass=dict(ok=False, error='RuntimeError: compute capability 8.x'),
                cusparselt_searched=dict(ok=False, error='x'))


def test_gemm_problems_need_one_working_backend_with_right_numbers():
    """A GEMM fails only without any working 2:4 backend or with a wrong sparse result;
    CUTLASS refusing on its own is not a failure."""
    assert gc.gemm_problems(_gemm_row(8, 1.2)) == []
    assert 'no 2:4 backend ran' in gc.gemm_problems(_gemm_row(8, 1.2, ok=False))[0]
    assert 'outside the tolerance' in gc.gemm_problems(_gemm_row(8, 1.2, numerics_ok=False))[0]
    assert gc.cutlass_expected_unavailable((9, 0))
    assert not gc.cutlass_expected_unavailable((8, 6))


def _e2e(dense, dispatch, all_sparse, iqr=0.1):
    return dict(dense_ms=dense, dispatch_ms=dispatch, all_sparse_ms=all_sparse,
                dense_iqr_ms=iqr, dispatch_iqr_ms=iqr, dispatch_speedup=dense / dispatch,
                all_sparse_speedup=dense / all_sparse,
                numerics_all_sparse=dict(ok=True, rel_err=1e-3))


def test_anchor_flags_mark_violations_and_departures():
    """Speedups over 2x and a dispatch slower than dense beyond noise are violations; a large
    GEMM or an end-to-end speedup outside the ranges measured elsewhere is information;
    figures inside them raise nothing."""
    gemms = [_gemm_row(8, 1.25), _gemm_row(8, 0.9), _gemm_row(1, 0.5), _gemm_row(1, 2.5)]
    benchmarks = [dict(scope='backbone', batch=8, result=dict(
        layers=[dict(name='backbone.layer1.0.conv1', speedup=1.1, gemm_speedup=2.3)],
        end_to_end={'backbone': _e2e(10.0, 8.3, 9.0),      # 1.2x: inside the range
                    'backbone+neck': _e2e(10.0, 10.5, 12.0),  # dispatch slower: violation
                    'detector': _e2e(10.0, 10.05, 10.0)}))]   # within noise: info only
    anchors = gc.anchor_flags(gemms, benchmarks)
    kinds = sorted((f['kind'], f['what']) for f in anchors['flags'])
    assert kinds == sorted([
        ('outside_gemm_range', 'GEMM layer4.1.conv2 batch 8 cusparselt'),
        ('above_ceiling', 'GEMM layer4.1.conv2 batch 1 cusparselt'),
        ('above_ceiling', 'backbone batch 8 backbone.layer1.0.conv1 gemm_speedup'),
        ('dispatch_slower_than_dense', 'backbone batch 8 backbone+neck'),
        ('outside_e2e_range', 'backbone batch 8 backbone+neck dispatch'),
        ('outside_e2e_range', 'backbone batch 8 detector dispatch')])
    assert anchors['violations'] == 3
    assert anchors['ceiling'] == 2.0 and anchors['gemm_range_measured_elsewhere'] == [1.1, 1.4]


def test_benchmark_problems_name_what_is_missing_or_wrong():
    """A benchmark run fails on a layer without a sparse kernel, wrong numerics, a missing
    end-to-end time or the wrong number of 2:4 layers."""
    good = dict(name='a', sparse_ms=1.0, numerics=dict(ok=True))
    result = dict(layers=[good, dict(name='b', sparse_ms=None, note='sparse kernel failed'),
                          dict(name='c', sparse_ms=1.0, numerics=dict(ok=False))],
                  end_to_end={'backbone': dict(_e2e(1.0, 1.0, 1.0), all_sparse_ms=None)})
    problems = gc.benchmark_problems(result, 8, expected_layers=52)
    assert problems[0] == 'batch 8: 3 2:4 layers benchmarked, expected 52'
    assert 'b: no sparse timing (sparse kernel failed)' in problems[1]
    assert 'c: sparse output outside the tolerance' in problems[2]
    assert 'backbone all_sparse: no time' in problems[3]
    assert gc.benchmark_problems(dict(layers=[good], end_to_end={}), 1, 1) == []


def test_check_report_steps_json_and_exit_codes(tmp_path, capsys):
    """Steps are recorded ok/failed (a crash is a failure with its traceback), the JSON is
    rewritten after each step and valid (NaN as null), and the exit code says whether all
    passed."""
    path = tmp_path / 'out' / 'gpu_check.json'
    report = gc.CheckReport(str(path), dict(x=1))
    with report.step('good') as record:
        record['figure'] = float('nan')
    assert json.loads(path.read_text())['steps']['good']['status'] == 'ok'
    with report.step('bad') as record:
        record['failures'].append('wrong')
    with report.step('crash'):
        raise ValueError('no')
    data = json.loads(path.read_text())
    assert data['steps']['good']['figure'] is None
    assert data['steps']['bad']['status'] == 'failed'
    assert data['steps']['crash']['failures'] == ['crashed: ValueError: no']
    assert 'Traceback' in data['steps']['crash']['traceback']
    assert data['failures'] == ['bad: wrong', 'crash: crashed: ValueError: no']
    assert report.finish() == gc.EXIT_FAILED
    assert json.loads(path.read_text())['status'] == 'failed'
    assert 'FAILURE: wrong' in capsys.readouterr().out
    ok = gc.CheckReport(str(tmp_path / 'ok.json'), {})
    with ok.step('good'):
        pass
    assert ok.finish() == gc.EXIT_OK and ok.data['status'] == 'passed'
    assert gc.CheckReport(str(tmp_path / 't.json'), {}).finish(terminated=True) == 124


def test_summary_lines_list_steps_scope_and_failures():
    """The closing summary names the status, the scope and its reason, each step, the anchor
    flags and every failure."""
    data = dict(status='failed', environment=dict(device_name='GPU', capability='9.0'),
                scope='backbone', scope_reason='mmcv CUDA ops unavailable',
                steps=dict(gemm=dict(status='ok', seconds=3.0, failures=[])),
                anchors=dict(flags=[{}], violations=0), failures=['gemm: x'])
    text = '\n'.join(gc.summary_lines(data))
    for part in ('FAILED', 'GPU (sm 9.0)', 'benchmark scope: backbone (mmcv CUDA ops',
                 'gemm', '1 flag(s), 0 violation(s)', 'FAILURE gemm: x'):
        assert part in text


# ------------------------------------------------------------------------------------- main
@pytest.fixture
def faked_device(monkeypatch):
    """gpu_check's device-dependent parts replaced by fakes: an sm90 GPU with cuSPARSELt and no
    mmcv CUDA ops, passing CUDA tests, GEMMs at 1.2x, a backbone benchmark with 52 layers."""
    monkeypatch.setattr(gc, 'cuda_available', lambda: True)
    monkeypatch.setattr(gc.signal, 'signal', lambda *a: None)
    monkeypatch.setattr(gc.torch.cuda, 'get_device_capability', lambda *a: (9, 0))
    monkeypatch.setattr(gc, 'environment_record', lambda: dict(
        device_name='Fake H200', capability='9.0', torch='x', torch_cuda='13.0', cudnn=1,
        cusparselt_available=True, cusparselt_version=700))
    monkeypatch.setattr(gc, 'detector_support',
                        lambda: (False, 'mmcv CUDA ops unavailable (ImportError: no)', {}))
    monkeypatch.setattr(gc, 'run_cuda_tests', lambda out, timeout: dict(
        total=2, passed=2, problems=[]))

    def fake_gemm(shape, dtype, warmup, repeats):
        row = dict(_gemm_row(shape['batch'], 1.2), **shape)
        row.update(dense_ms=1.0)
        return row

    monkeypatch.setattr(gc, 'bench_gemm', fake_gemm)
    monkeypatch.setattr(gc, 'backbone_model', lambda dtype: (nn.Identity(), R50_SPARSE_LAYERS))
    monkeypatch.setattr(gc, 'benchmark_backbone', lambda model, num, batch, *a, **k: dict(
        layers=[dict(name=f'l{i}', sparse_ms=1.0, numerics=dict(ok=True))
                for i in range(R50_SPARSE_LAYERS)],
        end_to_end={'backbone': _e2e(10.0, 9.0, 9.5)}))
    return monkeypatch


def test_main_with_faked_device_steps(tmp_path, faked_device, capsys):
    """main runs every step in order, announces the backbone scope loudly when mmcv's CUDA ops
    are missing, records each step's failures and exits 1 when one failed."""
    faked_device.setattr(gc, 'run_training', lambda report, record, *a: record[
        'failures'].append('lbc fp32: loss not finite at step 2: nan'))
    code = gc.main(['--out', str(tmp_path)])
    out = capsys.readouterr().out
    assert code == gc.EXIT_FAILED
    assert '!! SCOPE: backbone(+neck) only. mmcv CUDA ops unavailable' in out
    assert f'JSON: {tmp_path / "gpu_check.json"}' in out
    data = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert list(data['steps']) == ['environment', 'cuda_tests', 'gemm', 'training', 'benchmark']
    assert data['scope'] == 'backbone' and 'mmcv CUDA ops unavailable' in data['scope_reason']
    assert [s['status'] for s in data['steps'].values()] == ['ok', 'ok', 'ok', 'failed', 'ok']
    assert data['failures'] == ['training: lbc fp32: loss not finite at step 2: nan']
    assert len(data['steps']['gemm']['rows']) == 2 * len(GEMM_LAYERS)
    assert [r['batch'] for r in data['steps']['benchmark']['runs']] == [1, 8]
    assert data['anchors']['violations'] == 0 and data['status'] == 'failed'


def test_main_detector_scope_when_mmcv_ops_work(tmp_path, faked_device, capsys):
    """With mmdet and mmcv's CUDA ops, step d exports the Mask R-CNN deploy model once and runs
    the benchmark tool per batch size; no scope banner; all passing gives exit status 0."""
    calls = []
    faked_device.setattr(gc, 'detector_support', lambda: (True, None, dict(mmcv='2.1.0')))
    faked_device.setattr(gc, 'run_training', lambda *a: None)
    faked_device.setattr(gc, 'make_detector_deploy', lambda folder: calls.append(folder) or {
        'deploy_config.py': 'c.py', 'deploy.pth': 'd.pth'})

    def fake_tool(deploy, batch, out_dir, warmup, repeats, timeout_s):
        calls.append((batch, deploy['deploy.pth'], timeout_s > 0))
        return dict(layers=[dict(name='backbone.layer1.0.conv1', sparse_ms=1.0,
                                 numerics=dict(ok=True))],
                    end_to_end={'detector': _e2e(50.0, 45.0, 47.0)})

    faked_device.setattr(gc, 'benchmark_detector', fake_tool)
    assert gc.main(['--out', str(tmp_path)]) == gc.EXIT_OK
    assert 'SCOPE' not in capsys.readouterr().out
    data = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert data['status'] == 'passed' and data['scope'] == 'detector'
    assert data['scope_reason'] is None and data['environment']['mmcv_imported'] == '2.1.0'
    assert calls[0].endswith('deploy') and calls[1:] == [(1, 'd.pth', True), (8, 'd.pth', True)]
    assert data['steps']['benchmark']['deploy_of'] == gc.DETECTOR_CONFIG


def test_main_stopped_by_sigterm_keeps_what_it_did(tmp_path, faked_device, capsys):
    """A SIGTERM (the wrapper's time limit) during a step ends the run with status 124; the
    JSON says terminated, keeps the steps done and names the step that was stopped."""
    def stopped(*args):
        raise gc.Terminated()

    faked_device.setattr(gc, 'run_training', stopped)
    assert gc.main(['--out', str(tmp_path)]) == gc.EXIT_TERMINATED
    data = json.loads((tmp_path / 'gpu_check.json').read_text())
    assert data['status'] == 'terminated'
    assert list(data['steps']) == ['environment', 'cuda_tests', 'gemm', 'training']
    assert data['steps']['gemm']['status'] == 'ok'
    assert data['steps']['training']['failures'] == [
        'stopped: terminated (SIGTERM, e.g. the time limit)']
    assert data['anchors'] is not None
    assert 'TERMINATED' in capsys.readouterr().out


@pytest.mark.slow  # a fresh interpreter importing torch and mmdet (~10 s on a loaded CPU)
def test_refuses_without_cuda_in_one_line(repo_root, subprocess_env):
    """With no CUDA GPU visible the check refuses at once: exit status 2, nothing on stdout,
    one line on stderr that says why."""
    env = dict(subprocess_env, CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, str(repo_root / 'tools' / 'analysis_tools' /
                                               'gpu_check.py'), '--out',
                           str(repo_root / 'work_dirs' / 'never_written')],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stdout == ''
    assert proc.stderr.strip() == gc.NO_CUDA_MESSAGE
    assert not (repo_root / 'work_dirs' / 'never_written').exists()


@pytest.mark.slow  # the wrapper starts a fresh interpreter (~10 s on a loaded CPU)
def test_wrapper_installs_carried_wheels_and_reports_the_refusal(tmp_path, repo_root,
                                                                  subprocess_env):
    """scripts/gpu_check.sh installs every carried wheel into its site folder, runs the check
    with it on PYTHONPATH, and without CUDA exits 2 with the refusal in its log."""
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
    site, out = tmp_path / 'site', tmp_path / 'out'
    env = dict(subprocess_env, CUDA_VISIBLE_DEVICES='', PYTHON=sys.executable,
               GPU_CHECK_WHEELS=str(wheels), GPU_CHECK_SITE=str(site))
    proc = subprocess.run(['bash', str(repo_root / 'scripts' / 'gpu_check.sh'), str(out)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (site / 'carried_probe' / '__init__.py').exists()
    log = (out / 'gpu_check.log').read_text()
    assert 'installing 1 carried wheel(s)' in log
    assert gc.NO_CUDA_MESSAGE in log and 'REFUSED: no CUDA GPU visible' in log
    assert not (out / 'gpu_check.json').exists()


# ------------------------------------------------------------------------------------- cuda
@pytest.mark.cuda
def test_bench_gemm_small_shape_on_cuda():
    """On a GPU, one small GEMM is timed dense and 2:4 (cuSPARSELt), its numbers check out
    and a CUTLASS refusal is recorded only off sm8x."""
    row = gc.bench_gemm(dict(name='t', batch=1, M=1000, N=256, K=512), torch.float16, 2, 5)
    assert gc.gemm_problems(row) == []
    assert row['dense_ms'] > 0 and row['cusparselt']['ok'], row['cusparselt']
    assert row['cusparselt']['gemm_ms'] > 0 and row['cusparselt']['vs_fp32']['ok']
    if not gc.cutlass_expected_unavailable(torch.cuda.get_device_capability()):
        assert row['cutlass']['ok'], row['cutlass']


@pytest.mark.cuda
def test_benchmark_model_small_on_cuda():
    """On a GPU, the per-layer and end-to-end benchmark of step d runs on a small 2:4
    backbone: every 2:4 layer timed both ways with passing numerics, three e2e variants."""
    from spre_mmdet.sparsity import refresh_masks, reparameterize
    model = small_resnet()
    sparsify_torchvision_resnet(model, 'srste', 2, 4, spre=dict(rep_gamma=0.5))
    refresh_masks(model, 0)
    from spre_mmdet.benchmark.torchvision_r50 import BackboneFPN, _FPN
    deploy = BackboneFPN(reparameterize(model.eval()))
    deploy.neck = _FPN((32, 64, 64, 128), 64)
    deploy = deploy.cuda().half().to(memory_format=torch.channels_last).eval()
    x = detection_input(2, 128, 160, 'cuda', torch.float16)
    runners = {'backbone': lambda: deploy.backbone(x),
               'backbone+neck': lambda: deploy.neck(deploy.backbone(x))}
    result = gc.benchmark_model(deploy, runners, 'backbone', ['backbone'], torch.float16,
                                'auto', 2, 3, dict(test=True))
    assert gc.benchmark_problems(result, 2, SMALL_SPARSE_LAYERS) == []
