"""TensorRT engines from an exported ONNX graph, with and without sparse weights.

:func:`benchmark_tensorrt` is what a GPU check calls: it builds one fp16 engine per mode
(``'dense'``; ``'sparse'`` = ``BuilderFlag.SPARSE_WEIGHTS``, what ``trtexec --sparsity=enable``
sets), times each on random input, and reports which layers TensorRT found eligible for
sparse math and which it ran with sparse tactics (from its ``(Sparsity)`` log lines and the
engine inspector's tactic names). It never raises for the environment: without TensorRT or a
CUDA GPU it returns ``skipped`` with the reason, after checking the graph itself.

Precision: TensorRT 10 builds fp16 kernels from an fp32 graph given ``BuilderFlag.FP16``;
TensorRT 11 (the ``tensorrt-cu13`` wheels) removed that flag, networks are strongly typed and
the graph's own types decide. Give it ``backbone_neck_fp16.onnx`` (fp16 inside, fp32 I/O,
written by ``export_onnx(..., fp16=True)``), which builds fp16 engines with either version.
"""
import json
import os.path as osp
import re
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ExportError
from .deps import TENSORRT_EXTRA, missing

MODES = ('dense', 'sparse')


def tensorrt_skip_reason() -> Optional[str]:
    """Why TensorRT engines cannot be built here (no ``tensorrt`` module, no CUDA GPU, a GPU
    without sparse tensor cores), or ``None``."""
    why = missing('tensorrt')
    if why:
        return f'tensorrt is not installed ({why}); on a GPU machine: {TENSORRT_EXTRA}'
    import torch
    if not torch.cuda.is_available():
        return 'no CUDA GPU: TensorRT engines are built and timed on the GPU only'
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return (f'GPU compute capability {major}.{minor}: 2:4 sparse tensor cores need 8.0 '
                '(Ampere) or later')
    return None


def onnx_input_shape(onnx_path: str) -> Tuple[Optional[str], Optional[List[int]], List[str]]:
    """The single input of a graph, its static shape, and the names of the nodes that
    compute with a weight (Conv, Gemm, ...), which TensorRT's layer names contain
    (``ExportError`` for a missing graph or one without a single input). Without the ``onnx``
    package only the file's existence is checked (``None, None, []``): TensorRT reads the
    graph itself."""
    if not osp.isfile(onnx_path):
        raise ExportError(f'ONNX file {onnx_path} does not exist: export it first '
                          '(tools/deployment/export_onnx.py).')
    if missing('onnx'):
        return None, None, []
    import onnx
    model = onnx.load(onnx_path, load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f'{onnx_path} has {len(inputs)} inputs; one image input expected.')
    dims = [d.dim_value if d.HasField('dim_value') else -1
            for d in inputs[0].type.tensor_type.shape.dim]
    from .graph import WEIGHT_OPS
    weighted = [node.name for node in model.graph.node if node.op_type in WEIGHT_OPS]
    return inputs[0].name, dims, weighted


class _Capture:
    """A TensorRT logger keeping every message (built lazily: the class derives from
    ``tensorrt.ILogger``)."""

    @staticmethod
    def make(trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages: List[Tuple[str, str]] = []

            def log(self, severity, msg):
                self.messages.append((str(severity), str(msg)))

        return Logger()


def sparsity_log(messages: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
    """The layers TensorRT's ``(Sparsity)`` messages name: ``eligible`` (weights it found
    2:4) and ``picked`` (layers whose chosen tactic is sparse). TensorRT prints each list as
    ``(Sparsity) <what>: name1, name2, ...`` (one message, or the names on following lines)."""
    found = {'eligible': [], 'picked': []}
    current = None
    for _, msg in messages:
        for line in msg.splitlines():
            text = line.strip()
            if '(Sparsity)' in text:
                lower = text.lower()
                current = ('eligible' if 'eligible' in lower else
                           'picked' if 'picked' in lower or 'sparse implementation' in lower
                           else None)
                if current and ':' in text:
                    tail = text.split(':', 1)[1]
                    found[current] += [n.strip() for n in tail.split(',') if n.strip()]
            elif current and text and not text.startswith('['):
                found[current] += [n.strip() for n in text.split(',') if n.strip()]
            else:
                current = None
    return found


def _tactic_layers(engine, trt) -> Tuple[List[dict], List[str]]:
    """Every layer of the engine (name, type, tactic) and those whose tactic is sparse."""
    try:
        inspector = engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # noqa: BLE001  (older TensorRT, or no detailed profiling)
        return [], []
    layers = []
    for layer in info.get('Layers', []):
        if isinstance(layer, str):
            layers.append({'name': layer})
            continue
        layers.append({'name': layer.get('Name'), 'type': layer.get('LayerType'),
                       'tactic': layer.get('TacticName') or layer.get('Tactic')})
    sparse = [layer['name'] for layer in layers if 'sparse' in str(layer.get('tactic')).lower()]
    return layers, sparse


def _build(trt, onnx_path: str, mode: str, fp16: bool, workspace_gib: float):
    logger = _Capture.make(trt)
    if hasattr(trt, 'init_libnvinfer_plugins'):
        trt.init_libnvinfer_plugins(logger, '')  # standard ops some parsers map to plugins
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split('.')[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError('TensorRT cannot parse the graph: ' + '; '.join(errors[:3]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16 and hasattr(trt.BuilderFlag, 'FP16'):  # TensorRT < 11 (weak typing)
        config.set_flag(trt.BuilderFlag.FP16)
    if mode == 'sparse':
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if network.num_inputs != 1:
        raise RuntimeError(f'the graph has {network.num_inputs} inputs; one image input '
                           'expected')
    input_name, shape = network.get_input(0).name, list(network.get_input(0).shape)
    if any(d < 0 for d in shape):
        raise RuntimeError(f'the graph input {input_name} has dynamic dims {shape}; export it '
                           'with a static shape')
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if serialized is None:
        errors = [m for s, m in logger.messages if 'ERROR' in s.upper()]
        raise RuntimeError('TensorRT could not build the engine: ' + '; '.join(errors[-3:]))
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    return engine, logger, build_s, bytes(serialized), input_name, shape


def _time_engine(trt, engine, input_name: str, warmup: int, iters: int) -> Dict:
    """Median/p10/p90 ms of one inference (CUDA events), random input, device buffers."""
    import numpy as np
    import torch
    context = engine.create_execution_context()
    buffers = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            return {'error': f'tensor {name} has a data-dependent shape {list(shape)}: not '
                             'timed (needs an output allocator)'}
        dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))
                                 ).dtype
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            tensor = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(
                'cuda', dtype)
        else:
            tensor = torch.empty(shape, dtype=dtype, device='cuda')
        buffers[name] = tensor
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        times = []
        for _ in range(iters):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            context.execute_async_v3(stream.cuda_stream)
            end.record(stream)
            end.synchronize()
            times.append(begin.elapsed_time(end))
    times.sort()
    batch = int(buffers[input_name].shape[0]) if buffers[input_name].dim() else 1
    median = statistics.median(times)
    return {'ms': median, 'ms_p10': times[len(times) // 10],
            'ms_p90': times[(9 * len(times)) // 10], 'ms_per_image': median / max(batch, 1),
            'batch': batch, 'iters': iters,
            'outputs': {n: t.float().cpu() for n, t in buffers.items() if n != input_name}}


def benchmark_tensorrt(onnx_path: str, modes: Sequence[str] = MODES, fp16: bool = True,
                       warmup: int = 20, iters: int = 100, workspace_gib: float = 4.0,
                       engine_dir: Optional[str] = None) -> Dict:
    """Build and time TensorRT engines of ``onnx_path`` (static shape, e.g. the
    ``backbone_neck.onnx`` of ``tools/deployment/export_onnx.py``).

    Args:
        onnx_path: the graph.
        modes: ``'dense'`` and/or ``'sparse'`` (``BuilderFlag.SPARSE_WEIGHTS``).
        fp16: set ``BuilderFlag.FP16`` where it exists (TensorRT 10; sparse tensor cores run
            fp16/bf16/int8). TensorRT 11 removed it (networks are strongly typed): the graph's
            own types decide, so give it an fp16 graph (``backbone_neck_fp16.onnx``).
        warmup, iters: untimed and timed inferences per engine.
        workspace_gib: the builder's workspace limit.
        engine_dir: if given, each engine is written there as ``<stem>_<mode>.engine``.

    Returns:
        ``{'onnx', 'input', 'input_shape', 'fp16', 'skipped': reason or None, 'tensorrt',
        'device', 'engines': {mode: {'build_s', 'ms', 'ms_p10', 'ms_p90', 'ms_per_image',
        'batch', 'layers', 'sparse_tactic_layers', 'sparsity_eligible', 'sparsity_picked',
        'sparse_onnx_nodes', 'max_rel_diff_vs_dense', 'error'}}, 'weight_nodes',
        'speedup': dense ms / sparse ms}``. ``sparse_tactic_layers``: engine layers whose
        tactic is sparse (inspector); ``sparsity_picked``/``sparsity_eligible``: TensorRT's
        ``(Sparsity)`` log; ``sparse_onnx_nodes``: the graph's Conv/Gemm nodes inside those
        layers (of ``weight_nodes`` in all). An engine that fails to build or run has
        ``error`` set (the others are still reported).

    Raises:
        ExportError: the graph does not exist or does not have one static image input.
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ExportError(f'Unknown TensorRT mode {bad[0]!r}; choose from {MODES}.')
    input_name, shape, weighted = onnx_input_shape(onnx_path)
    result = {'onnx': onnx_path, 'input': input_name, 'input_shape': shape, 'fp16': fp16,
              'modes': list(modes), 'weight_nodes': len(weighted),
              'skipped': tensorrt_skip_reason(), 'engines': {}}
    if result['skipped']:
        return result
    import tensorrt as trt
    import torch
    result['tensorrt'] = trt.__version__
    result['device'] = torch.cuda.get_device_name()
    outputs = {}
    for mode in modes:
        row = {'error': None}
        try:
            engine, logger, build_s, plan, input_name, shape = _build(
                trt, onnx_path, mode, fp16, workspace_gib)
            result['input'], result['input_shape'] = input_name, shape
            row['build_s'] = build_s
            row['layers'], row['sparse_tactic_layers'] = _tactic_layers(engine, trt)
            log = sparsity_log(logger.messages)
            row['sparsity_eligible'], row['sparsity_picked'] = log['eligible'], log['picked']
            named = '\n'.join([*row['sparse_tactic_layers'], *log['picked']])
            row['sparse_onnx_nodes'] = [n for n in weighted if n and re.search(
                re.escape(n) + r'(?![\w.])', named)]  # fused layers: 'a + b'
            if engine_dir:
                stem = osp.splitext(osp.basename(onnx_path))[0]
                row['engine'] = osp.join(engine_dir, f'{stem}_{mode}.engine')
                with open(row['engine'], 'wb') as f:
                    f.write(plan)
            timing = _time_engine(trt, engine, input_name, warmup, iters)
            outputs[mode] = timing.pop('outputs', None)
            row.update(timing)
        except Exception as e:  # noqa: BLE001  (reported per engine, the others still run)
            row['error'] = f'{type(e).__name__}: {e}'
        result['engines'][mode] = row
    dense, sparse = result['engines'].get('dense', {}), result['engines'].get('sparse', {})
    if outputs.get('dense') and outputs.get('sparse'):
        sparse['max_rel_diff_vs_dense'] = max(
            float((outputs['sparse'][n] - want).abs().max()) / (float(want.abs().max()) or 1.0)
            for n, want in outputs['dense'].items())
    if dense.get('ms') and sparse.get('ms'):
        result['speedup'] = dense['ms'] / sparse['ms']
    return result


def benchmark_tensorrt_module(model, shape: Tuple[int, int], folder: str, batch: int = 1,
                              opset: int = 17, **kwargs) -> Dict:
    """TensorRT dense vs sparse engines of a PyTorch module's backbone + neck, for a GPU check
    without mmdet (e.g. :func:`spre_mmdet.benchmark.torchvision_r50.r50_fpn_deploy`'s model,
    which has ``backbone`` and ``neck``): export its fp16 graph (fp32 I/O, TorchScript exporter,
    traced where the model is) at ``(batch, 3, *shape)`` into
    ``folder/backbone_neck_fp16_b<batch>.onnx``, then :func:`benchmark_tensorrt` it
    (``kwargs``: its options). Without TensorRT or a GPU it returns ``skipped`` at once,
    exporting nothing. The result has ``export_s`` added."""
    reason = tensorrt_skip_reason()
    if reason:
        return {'onnx': None, 'skipped': reason, 'engines': {}, 'input_shape': None}
    from .exporters import export_backbone_neck
    path = osp.join(folder, f'backbone_neck_fp16_b{batch}.onnx')
    info = export_backbone_neck(model, path, tuple(shape), 'torchscript', opset, half=True,
                                batch=batch)
    result = benchmark_tensorrt(path, **kwargs)
    result['export_s'] = info['export_s']
    return result
