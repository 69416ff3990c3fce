"""spre_mmdet.export and tools/deployment/export_onnx.py: ONNX export of a 2:4 deploy checkpoint,
its N:M and ONNX Runtime checks, refusals of bad input, and the TensorRT path up to the engine
build (skipped with its reason without a GPU).

The deploy model is the toy SpRe 2:4 Mask R-CNN R-18, built, given final masks and random BN
statistics (so no folded conv is all zeros), and exported by spre_mmdet.deploy.export_deploy as
in tests/test_deploy.py: nothing is trained here. Tolerance of ONNX Runtime vs PyTorch: the
export's own, spre_mmdet.export.runtime.FEATURE_RTOL (1e-4 of each output's largest value).
"""
import json
import sys
import types

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

onnx = pytest.importorskip('onnx', reason="the ONNX extra is not installed: pip install -e "
                           "'.[onnx]'")
pytest.importorskip('onnxruntime', reason="the ONNX extra is not installed: pip install -e "
                    "'.[onnx]'")

from spre_mmdet.errors import ExportError  # noqa: E402
from spre_mmdet.export import (ONNX_MARKER, benchmark_tensorrt, check_export_options,  # noqa: E402
                               export_onnx, tensorrt_skip_reason)
from spre_mmdet.export.graph import check_graph_nm, graph_weights, scope_module  # noqa: E402
from spre_mmdet.export.runtime import FEATURE_RTOL, FP16_RTOL  # noqa: E402
from spre_mmdet.export.tensorrt import sparsity_log  # noqa: E402
from spre_mmdet.sparsity import SparseLayerRecord, nm_mask  # noqa: E402
from tool_process import run_tool_process  # noqa: E402

SPRE_TOY = 'configs/toy/mask_rcnn_r18_spre_2x4_toy.py'
NM_LAYERS = 19  # 16 block convs + 3 downsample convs, all 2:4 (conv1 has 3 channels)


def _sparse_toy(repo_root):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from spre_mmdet.sparsity import refresh_masks
    register_all_modules()
    cfg = Config.fromfile(str(repo_root / SPRE_TOY))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # trained-looking BNs: zero-init residual BNs would zero whole convs
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.1)
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 2.0)
    refresh_masks(model, 0)
    return cfg, model.eval()


@pytest.fixture(scope='module')
def deploy(repo_root, tmp_path_factory):
    """A deploy folder (deploy_config.py, deploy.pth) and the training-time model and config."""
    from spre_mmdet.deploy import export_deploy
    cfg, model = _sparse_toy(repo_root)
    root = tmp_path_factory.mktemp('onnx_deploy')
    paths = export_deploy(model, cfg, str(root / 'deploy'))
    return dict(root=root, config=paths['deploy_config.py'], checkpoint=paths['deploy.pth'],
                model=model, cfg=cfg)


@pytest.fixture(scope='module')
def exported(deploy, tmp_path_factory):
    """The backbone + neck exported (TorchScript exporter), checked, TensorRT asked for."""
    work = tmp_path_factory.mktemp('onnx_out')
    report = export_onnx(deploy['config'], deploy['checkpoint'], str(work / 'onnx'),
                         tensorrt=True, log=lambda line: None)
    return dict(work=work, out=work / 'onnx', report=report)


def _state(deploy):
    return torch.load(deploy['checkpoint'], map_location='cpu', weights_only=True)


# --------------------------------------------------------------------------- the export
def test_backbone_neck_graph_is_exactly_2x4_and_matches_onnxruntime(exported):
    """Every 2:4 layer of the deploy checkpoint is found in the graph, still exactly 2:4 along
    the input channels with the same zero pattern (BN folded into it); ONNX Runtime gives the
    PyTorch features within FEATURE_RTOL (the fp16 graph for TensorRT: FP16_RTOL); only the
    export's files are written, only in --out."""
    report, out = exported['report'], exported['out']
    for key, rtol, dtype in (('backbone+neck', FEATURE_RTOL, onnx.TensorProto.FLOAT),
                             ('backbone+neck/fp16', FP16_RTOL, onnx.TensorProto.FLOAT16)):
        graph = report['graphs'][key]
        assert graph['nm_layers'] == graph['nm_ok'] == NM_LAYERS
        assert all(row['ok'] and row['nodes'] for row in graph['layers'])
        assert graph['inputs'] == {'input': [1, 3, 128, 128]} and graph['opset'] == 17
        ort = graph['onnxruntime']
        assert ort['ok'] and ort['max_rel_error_all'] <= rtol == ort['rtol']
        assert len(ort['max_rel_error']) == 5  # FPN P2-P6
        weights = onnx.load(str(out / graph['file'])).graph.initializer
        assert {w.data_type for w in weights} == {dtype}
    assert sorted(p.name for p in exported['work'].iterdir()) == ['onnx']
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ['backbone_neck.onnx', 'backbone_neck_fp16.onnx', 'onnx_report.json', 'onnx_report.txt',
         ONNX_MARKER])
    written = json.loads((out / 'onnx_report.json').read_text())
    assert written['graphs']['backbone+neck']['nm_ok'] == NM_LAYERS
    assert '19/19 layers exactly N:M' in (out / 'onnx_report.txt').read_text()


def test_tensorrt_is_skipped_with_the_reason_without_a_gpu(exported, monkeypatch):
    """Here (no TensorRT, no GPU) the engine build is skipped and the report says why; the graph
    is still read (its input shape). With TensorRT importable but no GPU the reason is the GPU."""
    result = exported['report']['tensorrt']
    assert result['skipped'] == tensorrt_skip_reason()
    assert result['engines'] == {} and result['input_shape'] == [1, 3, 128, 128]
    assert result['onnx'] == 'backbone_neck_fp16.onnx'
    if 'tensorrt' not in sys.modules:
        assert 'tensorrt is not installed' in result['skipped']
        assert 'TensorRT: skipped: tensorrt is not installed' in (
            exported['out'] / 'onnx_report.txt').read_text()
    monkeypatch.setitem(sys.modules, 'tensorrt', types.ModuleType('tensorrt'))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    result = benchmark_tensorrt(str(exported['out'] / 'backbone_neck.onnx'))
    assert result['skipped'].startswith('no CUDA GPU') and result['engines'] == {}
    with pytest.raises(ExportError, match='does not exist'):
        benchmark_tensorrt(str(exported['work'] / 'missing.onnx'))
    with pytest.raises(ExportError, match='Unknown TensorRT mode'):
        benchmark_tensorrt(str(exported['out'] / 'backbone_neck.onnx'), modes=('int4',))


def test_tensorrt_sparsity_log_names_the_layers():
    """The layers TensorRT's (Sparsity) log lines name, in one message or on following lines."""
    log = [('INFO', '(Sparsity) Layers eligible for sparse math: conv_a, conv_b'),
           ('INFO', '(Sparsity) TRT inference plan picked sparse implementation for layers:'),
           ('INFO', 'conv_a'), ('INFO', '[07/12] Total Activation Memory: 1')]
    assert sparsity_log(log) == {'eligible': ['conv_a', 'conv_b'], 'picked': ['conv_a']}


def test_broken_groups_in_the_graph_are_found(exported, deploy):
    """A graph whose weight lost the 2:4 groups (one more non-zero in a group, as a wrong
    transposition or folding would do), or that lacks a layer, fails the check by name."""
    model = onnx.load(str(exported['out'] / 'backbone_neck.onnx'))
    checkpoint = _state(deploy)
    records = [SparseLayerRecord.from_dict(r) for r in checkpoint['meta']['sparse_layers']]
    state = checkpoint['state_dict']
    target = next(w for w in graph_weights(model, list(state))
                  if w.module == 'backbone.layer2.0.conv2')
    init = next(i for i in model.graph.initializer if i.name == target.initializer)
    array = onnx.numpy_helper.to_array(init).copy()
    zeros = np.argwhere(array[0, :4, 0, 0] == 0)
    array[0, zeros[0, 0], 0, 0] = 1.0  # the first group of out-channel 0 gets a third non-zero
    init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    rows = {row.name: row for row in check_graph_nm(model, records, state)}
    bad = rows['backbone.layer2.0.conv2']
    assert not bad.ok and 'not 2:4' in bad.problem and 'out=0' in bad.problem
    assert 'where the checkpoint has zeros' in bad.problem
    assert sum(not row.ok for row in rows.values()) == 1
    for node in model.graph.node:  # the layer's node now has no scope name to be found by
        if node.name.startswith('/backbone/layer1/layer1.0/conv1/'):
            node.name = 'anonymous'
    rows = {row.name: row for row in check_graph_nm(model, records, state)}
    assert 'no node of the graph' in rows['backbone.layer1.0.conv1'].problem


def _linear_graph(weight: np.ndarray, op: str, trans_b: int):
    """x @ W.T as one Gemm (weight stored (out, in) with transB=1, or (in, out) with 0) or
    MatMul (stored (in, out)), the node scoped like the TorchScript exporter names it."""
    helper = onnx.helper
    stored = weight if (op == 'Gemm' and trans_b) else weight.T
    init = onnx.numpy_helper.from_array(np.ascontiguousarray(stored), 'onnx::W_1')
    attrs = {'transB': trans_b} if op == 'Gemm' else {}
    node = helper.make_node(op, ['x', 'onnx::W_1'], ['y'], name=f'/bbox_head/fc/{op}', **attrs)
    graph = helper.make_graph(
        [node], 'g', [helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1, 4])], [init])
    return helper.make_model(graph)


@pytest.mark.parametrize('op,trans_b', [('Gemm', 1), ('Gemm', 0), ('MatMul', 0)])
def test_linear_weights_are_checked_along_the_input_channels(op, trans_b):
    """Gemm(transB=0) and MatMul store a linear weight (in, out): it is transposed back, so the
    groups are checked along the input features whatever the storage."""
    weight = torch.randn(4, 8)
    weight = (weight * nm_mask(weight, 2, 4)).numpy()
    key = 'roi_head.bbox_head.fc.weight'
    record = SparseLayerRecord(key[:-7], 'srste', 'plain', 2, 4, True, key)
    state = {key: torch.from_numpy(weight)}
    model = _linear_graph(weight, op, trans_b)
    [row] = check_graph_nm(model, [record], state)
    assert row.ok, row.problem
    assert row.nodes == [f'/bbox_head/fc/{op}']  # by its scope's tail, as mmdeploy names it
    if op == 'Gemm' and trans_b:  # read as if not transposed, the groups are broken
        [row] = check_graph_nm(_linear_graph(weight.T.copy(), 'Gemm', 1), [record],
                               state)
        assert not row.ok and 'shape [8, 4]' in row.problem


def test_scope_names_map_to_module_names():
    assert scope_module('/backbone/layer2/layer2.0/downsample/downsample.0/Conv') == \
        'backbone.layer2.0.downsample.0'
    assert scope_module('/neck/lateral_convs.0/conv/Conv') == 'neck.lateral_convs.0.conv'
    assert scope_module('node_Conv_12') is None


# --------------------------------------------------------------------------- bad input
def _assert_nothing_written(root, before):
    assert sorted(p.name for p in root.iterdir()) == before


@pytest.mark.parametrize('case', ['training', 'dense_stock', 'no_nm_layer', 'not_nm_weights'])
def test_checkpoints_that_are_not_2x4_deploy_ones_are_refused(deploy, tmp_path, case):
    """A training-time checkpoint, a dense / stock one, one whose layers are none N:M, and one
    whose 'N:M' weights are dense: each a clear ExportError, and no file anywhere."""
    checkpoint = _state(deploy)
    path = tmp_path / f'{case}.pth'
    if case == 'training':
        torch.save({'state_dict': deploy['model'].state_dict(), 'meta': {}}, path)
        message = 'training-time sparse checkpoint.*reparameterize'
    elif case == 'dense_stock':
        torch.save({'state_dict': checkpoint['state_dict']}, path)
        message = 'not a deploy checkpoint.*no N:M layers'
    elif case == 'no_nm_layer':
        meta = dict(checkpoint['meta'], sparse_layers=[
            dict(r, nm=False, note='unstructured') for r in checkpoint['meta']['sparse_layers']])
        torch.save({'state_dict': checkpoint['state_dict'], 'meta': meta}, path)
        message = 'has no N:M layer.*dense model'
    else:
        state = dict(checkpoint['state_dict'])
        state['backbone.layer3.1.conv1.weight'] = torch.randn_like(
            state['backbone.layer3.1.conv1.weight'])
        torch.save({'state_dict': state, 'meta': checkpoint['meta']}, path)
        message = '(?s)not exactly N:M.*backbone.layer3.1.conv1: not 2:4'
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ExportError, match=message):
        export_onnx(deploy['config'], str(path), str(tmp_path / 'out'), log=lambda line: None)
    _assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize('scopes,exporter,opset,message', [
    (['backbone+neck'], 'torchscript', 9, 'Opset 9 cannot be used.*between 11 and 20'),
    (['backbone+neck'], 'dynamo', 17, 'Opset 17 cannot be used with the dynamo'),
    (['detector'], 'dynamo', None, 'cannot be exported with the dynamo exporter'),
    (['backbone+neck'], 'tflite', None, 'Unknown exporter'),
    (['head'], 'torchscript', None, 'Unknown scope'),
])
def test_opsets_and_exporters_the_graph_cannot_use_are_refused(deploy, tmp_path, scopes,
                                                               exporter, opset, message):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ExportError, match=message):
        export_onnx(deploy['config'], deploy['checkpoint'], str(tmp_path / 'out'),
                    scopes=scopes, exporter=exporter, opset=opset, log=lambda line: None)
    _assert_nothing_written(tmp_path, before)
    assert check_export_options(['backbone+neck'], 'dynamo', None) == 18


def test_output_folder_is_new_empty_or_an_earlier_export(deploy, exported, tmp_path):
    """A folder with other files is refused even with force; an earlier export is refused
    without force; the deploy folder itself (holding the input) is refused."""
    (tmp_path / 'keep.txt').write_text('x')
    for force in (False, True):
        with pytest.raises(ExportError, match='did not write.*keep.txt'):
            export_onnx(deploy['config'], deploy['checkpoint'], str(tmp_path), force=force,
                        log=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['keep.txt']
    with pytest.raises(ExportError, match='--force'):
        export_onnx(deploy['config'], deploy['checkpoint'], str(exported['out']),
                    log=lambda line: None)
    with pytest.raises(ExportError, match='Refusing to export into'):
        export_onnx(deploy['config'], deploy['checkpoint'], str(deploy['root'] / 'deploy'),
                    force=True, log=lambda line: None)


def test_a_failed_check_leaves_nothing_behind(deploy, tmp_path, monkeypatch):
    """A graph that fails after it was written (here the exporter itself) takes the export's
    scratch folder and every folder the export created with it; a target below a file is a
    clear error."""
    from spre_mmdet.export import pipeline

    def broken_export(model, path, *args, **kwargs):
        with open(path, 'wb') as f:
            f.write(b'half a graph')
        raise ExportError('the exporter failed')

    monkeypatch.setattr(pipeline, 'export_backbone_neck', broken_export)
    with pytest.raises(ExportError, match='the exporter failed'):
        export_onnx(deploy['config'], deploy['checkpoint'], str(tmp_path / 'new' / 'onnx'),
                    log=lambda line: None)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ExportError, match='Cannot create'):
        export_onnx(deploy['config'], deploy['checkpoint'], str(tmp_path / 'file' / 'onnx'),
                    log=lambda line: None)
    assert [p.name for p in tmp_path.iterdir()] == ['file']


# --------------------------------------------------------------------------- slower paths
@pytest.mark.slow
def test_dynamo_exporter_backbone_neck(deploy, tmp_path):
    """The dynamo exporter (torch 2.13's default), fp32 and fp16: opset 18, weights inside the
    one file (no external .data file), parameter names kept (the fp16 wrapper's under
    'inner.'), same checks."""
    pytest.importorskip('onnxscript')
    report = export_onnx(deploy['config'], deploy['checkpoint'], str(tmp_path / 'out'),
                         exporter='dynamo', fp16=True, log=lambda line: None)
    for key, prefix in (('backbone+neck', ''), ('backbone+neck/fp16', 'inner.')):
        graph = report['graphs'][key]
        assert graph['nm_ok'] == NM_LAYERS and graph['opset'] == 18
        assert graph['onnxruntime']['ok']
        assert all(row['initializers'] == [prefix + row['tensor']] for row in graph['layers'])
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == sorted(
        ['backbone_neck.onnx', 'backbone_neck_fp16.onnx', 'onnx_report.json', 'onnx_report.txt',
         ONNX_MARKER])


@pytest.mark.slow
def test_whole_detector_through_the_tool_same_map_in_onnxruntime(deploy, tmp_path,
                                                                   subprocess_env, repo_root):
    """tools/deployment/export_onnx.py --scope backbone+neck detector --eval on a tiny synthetic
    set: both graphs 2:4, the detector's bbox/segm mAP in ONNX Runtime equal to PyTorch's (score
    threshold 0, so the untrained model detects); a training checkpoint: one ERROR line, exit 1,
    nothing written."""
    pytest.importorskip('mmdeploy')
    from spre_mmdet.datasets.synthetic_coco import generate_synthetic_coco
    data = tmp_path / 'toy_coco'
    generate_synthetic_coco(str(data), num_train=1, num_val=4, seed=5)
    tool = str(repo_root / 'tools' / 'deployment' / 'export_onnx.py')
    out = tmp_path / 'onnx'
    result = run_tool_process(
        [tool, deploy['config'], deploy['checkpoint'], '--out', out, '--scope', 'backbone+neck',
         'detector', '--eval', '--cfg-options', f'test_dataloader.dataset.data_root={data}/',
         f'test_evaluator.ann_file={data}/annotations/instances_val.json',
         'model.test_cfg.rcnn.score_thr=0.0'], subprocess_env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / 'onnx_report.json').read_text())
    detector = report['graphs']['detector']
    assert detector['nm_ok'] == NM_LAYERS and detector['outputs'] == ['dets', 'labels', 'masks']
    coco = detector['coco']
    assert coco['images'] == 4 and coco['ok'] and coco['mAP_keys'] == [
        'coco/bbox_mAP', 'coco/segm_mAP']
    assert coco['max_mAP_difference'] <= coco['tolerance']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['onnx', 'toy_coco']
    training = tmp_path / 'training.pth'
    torch.save({'state_dict': deploy['model'].state_dict()}, training)
    result = run_tool_process([tool, deploy['config'], training, '--out', tmp_path / 'x'],
                              subprocess_env, cwd=tmp_path, timeout=600)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(
        'ERROR: ') and 'training-time' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'x').exists()


def _fake_tensorrt(conv_node: str, version: str):
    """Just enough of the tensorrt module for the build path: records the builder flags; the
    engine's inspector names ``conv_node`` with a sparse tactic when SPARSE_WEIGHTS was set.
    Version 11 has no FP16 flag (strongly typed networks only)."""
    trt = types.ModuleType('tensorrt')
    trt.__version__ = version
    weak_typing = int(version.split('.')[0]) < 11

    class ILogger:
        def __init__(self):
            pass

    class Config:
        def __init__(self):
            self.flags = set()

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, flag):
            self.flags.add(flag)

    class Engine:
        def __init__(self, sparse):
            self.sparse = sparse

        def create_engine_inspector(self):
            tactic = 'sm90_xmma_fprop_sparse_conv_f16' if self.sparse else 'sm90_xmma_fprop'
            info = {'Layers': [{'Name': f'{conv_node} + /Relu', 'LayerType': 'CaskConvolution',
                                'TacticName': tactic}]}
            return types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps(info))

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            graph_input = types.SimpleNamespace(name='input', shape=(1, 3, 128, 128))
            return types.SimpleNamespace(num_inputs=1, get_input=lambda i: graph_input)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            sparse = 'SPARSE_WEIGHTS' in config.flags
            assert ('FP16' in config.flags) == weak_typing
            if sparse:
                self.logger.log('INFO', f'(Sparsity) Layers eligible for sparse math: {conv_node}')
            return b'sparse' if sparse else b'dense'

    class OnnxParser:
        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return True

    trt.ILogger, trt.Builder, trt.OnnxParser = ILogger, Builder, OnnxParser
    trt.Runtime = lambda logger: types.SimpleNamespace(
        deserialize_cuda_engine=lambda plan: Engine(plan == b'sparse'))
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    trt.BuilderFlag = types.SimpleNamespace(SPARSE_WEIGHTS='SPARSE_WEIGHTS')
    if weak_typing:
        trt.BuilderFlag.FP16 = 'FP16'
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE='WORKSPACE')
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED='DETAILED')
    trt.LayerInformationFormat = types.SimpleNamespace(JSON='JSON')
    return trt


@pytest.mark.parametrize('version', ['10.13.0', '11.4.0'])
def test_tensorrt_build_path_with_a_stand_in_for_tensorrt(exported, monkeypatch, tmp_path,
                                                          version):
    """The engine-build code up to the GPU, run against a stand-in tensorrt module: FP16 where
    TensorRT has it (10), SPARSE_WEIGHTS only for the sparse engine, sparse tactics and
    TensorRT's (Sparsity) log mapped to the graph's Conv nodes, the engines written where
    asked. Timing (CUDA) is replaced; on a GPU the real module runs it."""
    from spre_mmdet.export import tensorrt as trt_path
    onnx_path = str(exported['out'] / 'backbone_neck.onnx')
    conv = '/backbone/layer1/layer1.0/conv1/Conv'
    monkeypatch.setitem(sys.modules, 'tensorrt', _fake_tensorrt(conv, version))
    monkeypatch.setattr(trt_path, 'tensorrt_skip_reason', lambda: None)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'stand-in GPU')
    timings = {'dense': 2.0, 'sparse': 1.6}

    def fake_time(trt, engine, input_name, warmup, iters):
        ms = timings['sparse' if engine.sparse else 'dense']
        return {'ms': ms, 'ms_p10': ms, 'ms_p90': ms, 'ms_per_image': ms, 'batch': 1}

    monkeypatch.setattr(trt_path, '_time_engine', fake_time)
    result = benchmark_tensorrt(onnx_path, engine_dir=str(tmp_path))
    assert result['skipped'] is None and result['device'] == 'stand-in GPU'
    dense, sparse = result['engines']['dense'], result['engines']['sparse']
    assert dense['error'] is None and sparse['error'] is None
    assert dense['sparse_tactic_layers'] == [] and dense['sparse_onnx_nodes'] == []
    assert sparse['sparse_tactic_layers'] == [f'{conv} + /Relu']
    assert sparse['sparsity_eligible'] == [conv] and sparse['sparse_onnx_nodes'] == [conv]
    assert result['weight_nodes'] == 28 and result['speedup'] == pytest.approx(1.25)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'backbone_neck_dense.engine', 'backbone_neck_sparse.engine']


def test_tensorrt_benchmark_of_a_module_for_the_gpu_check(deploy, monkeypatch, tmp_path):
    """benchmark_tensorrt_module, the GPU check's entry (no mmdet needed there): without a GPU
    it is skipped at once and exports nothing; with TensorRT (stand-in) it exports the fp16
    graph of the module's backbone + neck at the asked batch and builds both engines."""
    from spre_mmdet.export import benchmark_tensorrt_module, load_deploy
    from spre_mmdet.export import tensorrt as trt_path
    model = load_deploy(deploy['config'], deploy['checkpoint'])[1]
    result = benchmark_tensorrt_module(model, (64, 64), str(tmp_path), batch=2)
    assert result['skipped'] == tensorrt_skip_reason() and list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, 'tensorrt', _fake_tensorrt('/none', '11.4.0'))
    monkeypatch.setattr(trt_path, 'tensorrt_skip_reason', lambda: None)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'stand-in GPU')
    monkeypatch.setattr(trt_path, '_time_engine', lambda *a: {'ms': 1.0})
    result = benchmark_tensorrt_module(model, (64, 64), str(tmp_path), batch=2)
    graph = onnx.load(result['onnx'])
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == \
        [2, 3, 64, 64]
    assert {w.data_type for w in graph.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert sorted(result['engines']) == ['dense', 'sparse'] and result['export_s'] > 0
