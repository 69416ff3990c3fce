"""ONNX export of a deploy checkpoint, every check, and the report: :func:`export_onnx`.

Order of work, so that bad input never leaves a file behind:

1. options (scope, exporter, opset, shape), the optional dependencies, the output folder
   (new or empty, or an earlier ONNX export with ``force``; never one holding the input or the
   current folder) and, for ``evaluate``, the test set are checked;
2. the checkpoint must be a deploy checkpoint of this package with N:M layers
   (:func:`load_deploy`: a training-time checkpoint, a dense or stock one, or one whose N:M
   layers are not exactly N:M is refused) that fits the config;
3. the graphs are written into a scratch folder inside the output folder and checked there
   (N:M weights in the graph, ONNX Runtime vs PyTorch, optionally TensorRT); only when all
   checks pass are they moved into place with the report, and the scratch folder is removed.
   A failed check raises :class:`~spre_mmdet.errors.ExportError` and leaves the output folder
   as it was (removed again if the export created it).
"""
import json
import os
import os.path as osp
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import ExportError
from ..sparsity import SparseLayerRecord, check_nm_tensor
from .deps import require
from .exporters import (SCOPES, check_export_options, default_shape, export_backbone_neck,
                        export_detector)

#: the files an ONNX export writes, and the marker of a folder it owns
ONNX_FILES = ('backbone_neck.onnx', 'backbone_neck_fp16.onnx', 'detector.onnx',
              'onnx_report.json', 'onnx_report.txt')
ONNX_MARKER = '.spre_mmdet_onnx'
#: graph -> file; 'backbone+neck/fp16' is the backbone + neck computing in fp16 (fp32 I/O),
#: the graph TensorRT builds fp16 engines from (TensorRT 11 networks are strongly typed)
GRAPH_FILES = {'backbone+neck': 'backbone_neck.onnx',
               'backbone+neck/fp16': 'backbone_neck_fp16.onnx', 'detector': 'detector.onnx'}


def _training_keys(state) -> List[str]:
    """Keys only training-time sparse checkpoints have: every sparse layer's mask learner
    (``.sparsity.mask`` and its state), SpRe's branch and spatial mask."""
    return [k for k in state if '.sparsity.' in k or k.endswith(('.weight_rep', '.spatial'))]


def load_deploy(config_path: str, checkpoint_path: str, cfg_options: Optional[dict] = None):
    """The deploy config, the PyTorch deploy model (eval, CPU), its state dict and N:M records.

    Raises :class:`ExportError` for a training-time checkpoint (masks, SpRe branches: run
    ``tools/reparameterize.py`` first), a checkpoint without this package's deploy record (a
    dense or stock mmdet model: nothing N:M to export), one without any N:M layer, or N:M layers
    that are not exactly N:M; and the checkpoint errors of
    :func:`~spre_mmdet.checkpoint.load_state_checked` when it does not fit the config.
    """
    from mmengine.config import Config

    from ..checkpoint import load_state_checked, safe_torch_load, state_dict_of
    from ..deploy import build_model
    for path, what in ((config_path, 'Config'), (checkpoint_path, 'Checkpoint')):
        if not osp.isfile(path):
            raise ExportError(f'{what} {path} does not exist.')
    checkpoint = safe_torch_load(checkpoint_path, map_location='cpu')
    state = state_dict_of(checkpoint, f'Checkpoint {checkpoint_path}')
    meta = checkpoint.get('meta') or {} if isinstance(checkpoint, dict) else {}
    training = _training_keys(state)
    if training:
        raise ExportError(
            f'{checkpoint_path} is a training-time sparse checkpoint (it holds e.g. '
            f'{training[0]}), not a deploy checkpoint. Re-parameterize it first: python '
            'tools/reparameterize.py CONFIG CHECKPOINT --out DEPLOY_DIR, then export '
            'DEPLOY_DIR/deploy_config.py DEPLOY_DIR/deploy.pth.')
    if not meta.get('deploy') or 'sparse_layers' not in meta:
        raise ExportError(
            f'{checkpoint_path} is not a deploy checkpoint of spre-mmdet (its meta has no '
            '"deploy"/"sparse_layers" record): a dense or stock mmdet model has no N:M layers '
            'for a sparse engine. Export the deploy.pth that tools/reparameterize.py (or '
            'ReparameterizeHook) writes for a sparse run.')
    records = [SparseLayerRecord.from_dict(r) for r in meta['sparse_layers']]
    nm = [r for r in records if r.nm]
    if not nm:
        raise ExportError(
            f'{checkpoint_path} has no N:M layer ({len(records)} sparse layers, none N:M by '
            'design: unstructured, or interspace convs merged into dense convs): a dense model '
            'gains nothing from sparse tensor cores. Export an N:M run (interspace convs in '
            'basis form: tools/reparameterize.py --interspace-form basis).')
    problems = []
    for record in nm:
        if record.tensor not in state:
            problems.append(f'{record.name}: {record.tensor} is not in the checkpoint')
            continue
        check = check_nm_tensor(state[record.tensor], record.n, record.m)
        if not check.ok:
            problems.append(f'{record.name}: {check.explain()}')
    if problems:
        raise ExportError(f'{checkpoint_path}: its N:M layers are not exactly N:M, so no '
                          'sparse engine can run them:\n' + '\n'.join(problems[:10]))
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.model.get('backbone', {}).get('init_cfg'):
        cfg.model.backbone.init_cfg = None  # every weight comes from the checkpoint
    model = build_model(cfg)
    load_state_checked(model, state, source=checkpoint_path)
    return cfg, model.eval(), state, records, meta


def in_scope(records: Sequence[SparseLayerRecord], scope: str) -> List[SparseLayerRecord]:
    """The records whose layer is part of the graph of ``scope``."""
    if scope.startswith('detector'):
        return list(records)
    return [r for r in records if r.name.split('.')[0] in ('backbone', 'neck')]


def _check_target(out_dir: str, force: bool, protected: Sequence[str]) -> None:
    from ..deploy import check_export_target
    check_export_target(out_dir, force, protected, files=ONNX_FILES, marker=ONNX_MARKER)


def _check_graph(path: str, records, state, scope: str, log) -> Dict:
    import onnx

    from .graph import check_graph_nm
    model = onnx.load(path)
    rows = check_graph_nm(model, in_scope(records, scope), state)
    bad = [row for row in rows if not row.ok]
    log(f'[{scope}] N:M in the graph: {len(rows) - len(bad)}/{len(rows)} layers exactly N:M')
    if bad:
        raise ExportError(f'The {scope} graph broke the N:M pattern of {len(bad)} layers:\n' +
                          '\n'.join(f'  {row.name}: {row.problem}' for row in bad[:10]))
    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in model.graph.input}
    return dict(layers=[row.to_dict() for row in rows], nm_layers=len(rows),
                nm_ok=len(rows) - len(bad), inputs=inputs,
                opset=max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')),
                nodes=len(model.graph.node), bytes=osp.getsize(path))


def export_onnx(config_path: str, checkpoint_path: str, out_dir: str,
                scopes: Sequence[str] = ('backbone+neck',), exporter: str = 'torchscript',
                opset: Optional[int] = None, shape: Optional[Tuple[int, int]] = None,
                force: bool = False, evaluate: bool = False, eval_limit: Optional[int] = None,
                fp16: bool = False, tensorrt: bool = False, tensorrt_iters: int = 100,
                cfg_options: Optional[dict] = None, log=print) -> Dict:
    """Export a deploy checkpoint to ONNX, check it, and write it with its report.

    Args:
        config_path, checkpoint_path: ``deploy_config.py`` and ``deploy.pth`` of a deploy
            folder (``tools/reparameterize.py``).
        out_dir: output folder: new or empty, or an earlier ONNX export (with ``force``).
        scopes: ``'backbone+neck'`` and/or ``'detector'`` (:data:`SCOPES`).
        exporter: ``'torchscript'`` (default) or ``'dynamo'`` (backbone + neck only).
        opset: ONNX opset (default per exporter, :data:`~.exporters.DEFAULT_OPSET`).
        shape: network input (H, W); default: the test pipeline's (:func:`default_shape`).
        force: replace an earlier ONNX export in ``out_dir``.
        evaluate: detector only: COCO metrics of ONNX Runtime vs PyTorch on the config's test
            set (must be equal within :data:`~.runtime.MAP_TOLERANCE`).
        eval_limit: evaluate only the first images (tests).
        fp16: also write ``backbone_neck_fp16.onnx``, the backbone + neck computing in fp16
            (fp32 input/outputs), checked like the fp32 graph (ONNX Runtime within
            :data:`~.runtime.FP16_RTOL`).
        tensorrt: also build and time TensorRT engines (dense and sparse) of the fp16 backbone
            + neck graph (implies ``fp16``; :func:`~.tensorrt.benchmark_tensorrt`); skipped,
            with the reason, without TensorRT or a GPU.
        cfg_options: overrides of the deploy config (e.g. the test set's ``data_root``).
        log: where progress lines go.

    Returns:
        The report (also written as ``onnx_report.json`` / ``.txt``).
    """
    scopes = [s for s in SCOPES if s in scopes] if all(s in SCOPES for s in scopes) \
        else list(scopes)
    opset = check_export_options(scopes, exporter, opset, shape)
    fp16 = fp16 or tensorrt
    if (fp16 or tensorrt) and 'backbone+neck' not in scopes:
        raise ExportError('The fp16 graph and the TensorRT engines are of the backbone + neck: '
                          'add --scope backbone+neck.')
    if evaluate and 'detector' not in scopes:
        raise ExportError('The COCO evaluation (--eval) needs the whole detector: add '
                          '--scope detector.')
    require('onnx', 'onnxruntime', *(['onnxscript'] if exporter == 'dynamo' else []),
            *(['mmdeploy'] if 'detector' in scopes else []))
    _check_target(out_dir, force, protected=[config_path, checkpoint_path])
    cfg, model, state, records, meta = load_deploy(config_path, checkpoint_path, cfg_options)
    if 'detector' not in scopes and not in_scope([r for r in records if r.nm], scopes[0]):
        raise ExportError('No N:M layer is in the backbone or neck of this model (only in its '
                          'heads): export --scope detector.')
    if evaluate:
        from ..cli import check_dataset_paths
        check_dataset_paths(cfg, ['test_dataloader'])
    shape = tuple(shape) if shape else default_shape(cfg)
    report = dict(config=osp.basename(config_path), checkpoint=osp.basename(checkpoint_path),
                  exporter=exporter, opset=opset, input_shape=[1, 3, *shape],
                  sparsity=meta.get('sparsity'),
                  nm_layers=sum(r.nm for r in records),
                  versions=_versions(), graphs={})
    created = osp.abspath(out_dir)  # the outermost folder this export creates, if any
    while not osp.exists(osp.dirname(created)):
        created = osp.dirname(created)
    created = None if osp.exists(out_dir) else created
    from ..deploy import _make_folder
    _make_folder(out_dir)
    try:
        scratch = tempfile.mkdtemp(prefix='.onnx-partial-', dir=out_dir)
    except OSError as e:
        raise ExportError(f'Cannot write into {out_dir}: {e.strerror}.') from None
    try:
        graphs = [g for g in GRAPH_FILES if g.split('/')[0] in scopes
                  and (fp16 or not g.endswith('/fp16'))]
        for scope in graphs:
            path = osp.join(scratch, GRAPH_FILES[scope])
            half = scope.endswith('/fp16')
            log(f'[{scope}] exporting ({"mmdeploy + " if scope == "detector" else ""}'
                f'{exporter} exporter, opset {opset}, input 1x3x{shape[0]}x{shape[1]})')
            if scope.startswith('backbone+neck'):
                info = export_backbone_neck(model, path, shape, exporter, opset, half=half)
            else:
                info = export_detector(cfg, checkpoint_path, path, shape, opset, detector=model)
            graph = dict(file=GRAPH_FILES[scope], export_s=info['export_s'],
                         outputs=info['outputs'], precision='fp16' if half else 'fp32')
            graph.update(_check_graph(path, records, state, scope, log))
            if list(graph['inputs'].values()) != [[1, 3, *shape]]:
                raise ExportError(f'The {scope} graph takes {graph["inputs"]}, not the asked '
                                  f'input 1x3x{shape[0]}x{shape[1]}.')
            if scope.startswith('backbone+neck'):
                from .exporters import BackboneNeck
                from .runtime import FEATURE_RTOL, FP16_RTOL, compare_backbone_neck
                compare = compare_backbone_neck(BackboneNeck(model), path, shape,
                                                info['outputs'],
                                                rtol=FP16_RTOL if half else FEATURE_RTOL)
                graph['onnxruntime'] = compare
                log(f'[{scope}] ONNX Runtime vs PyTorch: max relative error '
                    f'{compare["max_rel_error_all"]:.2e} (tolerance {compare["rtol"]:.0e})')
                if not compare['ok']:
                    raise ExportError(
                        f'ONNX Runtime does not reproduce the PyTorch backbone + neck: max '
                        f'relative error per output {compare["max_rel_error"]} exceeds '
                        f'{compare["rtol"]}.')
            elif evaluate:
                from .runtime import evaluate_detector
                log(f'[{scope}] COCO evaluation, PyTorch and ONNX Runtime, on the test set')
                result = evaluate_detector(cfg, model, path, info['deploy_cfg'], shape,
                                           osp.join(scratch, 'eval'), limit=eval_limit)
                shutil.rmtree(osp.join(scratch, 'eval'), ignore_errors=True)
                graph['coco'] = result
                log(f'[{scope}] ' + ', '.join(
                    f'{k}: PyTorch {result["metrics"]["pytorch"][k]:.4f} / ONNX Runtime '
                    f'{result["metrics"]["onnxruntime"][k]:.4f}' for k in result['mAP_keys']))
                if not result['ok']:
                    raise ExportError(
                        f'ONNX Runtime\'s mAP differs from PyTorch\'s by '
                        f'{result["max_mAP_difference"]:.4f} (> {result["tolerance"]}) on '
                        f'{result["images"]} images: {result["metrics"]}.')
            report['graphs'][scope] = graph
        if tensorrt:
            from .tensorrt import benchmark_tensorrt
            graph = GRAPH_FILES['backbone+neck/fp16']
            result = benchmark_tensorrt(osp.join(scratch, graph), iters=tensorrt_iters)
            result['onnx'] = graph
            report['tensorrt'] = result
            log('[tensorrt] ' + (f'skipped: {result["skipped"]}' if result['skipped']
                                 else format_tensorrt(result)))
        with open(osp.join(scratch, 'onnx_report.json'), 'w') as f:
            json.dump(report, f, indent=1, default=str)
        with open(osp.join(scratch, 'onnx_report.txt'), 'w') as f:
            f.write(format_report(report) + '\n')
        with open(osp.join(scratch, ONNX_MARKER), 'w') as f:
            f.write("Written by spre-mmdet's ONNX export; it replaces only " +
                    ', '.join(ONNX_FILES) + ' here.\n')
        for name in ONNX_FILES:  # an earlier export's graph of another scope goes too
            if osp.lexists(osp.join(out_dir, name)) and not osp.exists(osp.join(scratch, name)):
                os.remove(osp.join(out_dir, name))
        for name in (*ONNX_FILES, ONNX_MARKER):
            if osp.exists(osp.join(scratch, name)):
                os.replace(osp.join(scratch, name), osp.join(out_dir, name))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    return report


def _versions() -> Dict[str, str]:
    import importlib
    versions = {'torch': torch.__version__}
    for name in ('onnx', 'onnxruntime', 'onnxscript', 'mmdeploy', 'mmdet', 'tensorrt'):
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001  (not installed, or no version attribute)
            continue
    return versions


def format_tensorrt(result: Dict) -> str:
    """One line per TensorRT engine."""
    lines = []
    for mode, row in result.get('engines', {}).items():
        if row.get('error'):
            lines.append(f'{mode}: FAILED {row["error"]}')
            continue
        lines.append(f'{mode}: {row["ms_per_image"]:.3f} ms/image (p10 {row["ms_p10"]:.3f}, '
                     f'p90 {row["ms_p90"]:.3f} ms, batch {row["batch"]}), built in '
                     f'{row["build_s"]:.0f} s, {len(row.get("sparse_tactic_layers", []))} '
                     f'layers with sparse tactics, {len(row.get("sparsity_picked", []))} named '
                     f'sparse by TensorRT\'s log ({len(row.get("sparsity_eligible", []))} '
                     f'eligible); {len(row.get("sparse_onnx_nodes", []))}/'
                     f'{result.get("weight_nodes")} Conv/Gemm nodes of the graph run sparse')
    if result.get('speedup'):
        lines.append(f'sparse vs dense: {result["speedup"]:.2f}x')
    return '\n'.join(lines)


def format_report(report: Dict) -> str:
    """The report as text (what the tool prints and ``onnx_report.txt`` holds)."""
    lines = [f'ONNX export of {report["checkpoint"]} ({report["config"]}): '
             f'{report["exporter"]} exporter, opset {report["opset"]}, input '
             f'{"x".join(map(str, report["input_shape"]))}, {report["nm_layers"]} N:M layers '
             f'({report.get("sparsity")})']
    for scope, graph in report['graphs'].items():
        lines.append(f'{graph["file"]} ({scope}, {graph["precision"]}): {graph["nodes"]} nodes, '
                     f'{graph["bytes"] / 2**20:.1f} MiB, exported in {graph["export_s"]:.1f} s')
        lines.append(f'  N:M weights in the graph: {graph["nm_ok"]}/{graph["nm_layers"]} '
                     'layers exactly N:M along the input channels, same zero pattern as the '
                     'checkpoint')
        if 'onnxruntime' in graph:
            ort = graph['onnxruntime']
            lines.append(f'  ONNX Runtime (CPU) vs PyTorch: max relative error '
                         f'{ort["max_rel_error_all"]:.2e} <= {ort["rtol"]:.0e} over '
                         f'{ort["inputs"]} inputs ({ort["onnxruntime_ms"]:.1f} ms vs '
                         f'{ort["pytorch_ms"]:.1f} ms per image)')
        if 'coco' in graph:
            coco = graph['coco']
            for key in coco['mAP_keys']:
                lines.append(f'  {key}: PyTorch {coco["metrics"]["pytorch"][key]:.4f}, ONNX '
                             f'Runtime {coco["metrics"]["onnxruntime"][key]:.4f} '
                             f'({coco["images"]} images)')
            lines.append(f'  largest mAP difference {coco["max_mAP_difference"]:.4f} <= '
                         f'{coco["tolerance"]}; ms/image PyTorch '
                         f'{coco["ms_per_image"]["pytorch"]:.0f}, ONNX Runtime '
                         f'{coco["ms_per_image"]["onnxruntime"]:.0f}')
    if 'tensorrt' in report:
        result = report['tensorrt']
        lines.append('TensorRT: ' + (f'skipped: {result["skipped"]}' if result.get('skipped')
                                     else f'{result.get("tensorrt")} on {result.get("device")}'))
        if not result.get('skipped'):
            lines += ['  ' + line for line in format_tensorrt(result).splitlines()]
    return '\n'.join(lines)
