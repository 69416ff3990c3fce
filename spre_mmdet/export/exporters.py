"""The two ONNX exports of a deploy detector, and the options they accept.

Which exporter, and why (measured with torch 2.13, mmdeploy 1.3.1, onnx 1.17, onnxruntime
1.26; docs/deploy.md):

* ``torch.onnx.export`` defaults to the dynamo exporter (``torch.export`` + onnxscript) since
  torch 2.9. It exports the backbone + neck (opset 18+), but not mmdeploy's rewritten detector:
  ``torch.export`` traces into mmcv's ops and fails ("The tensor has a non-zero number of
  elements, but its data is not allocated yet").
* mmdeploy's rewrites of mmdet (end-to-end boxes, NMS and RoIAlign as ONNX ops) are written for
  the TorchScript exporter (``dynamo=False``, deprecated but still in torch 2.13). With it the
  whole Mask R-CNN exports and runs in ONNX Runtime with standard ONNX ops only, given two
  shims for torch 2.13 that :func:`mmdeploy_compat` applies only while mmdeploy exports:
  mmdeploy calls ``torch.onnx.export`` without ``dynamo=``, so the call is given
  ``dynamo=False``; and mmdeploy's RoIAlign symbolic imports ``_cast_Long`` from
  ``torch.onnx.symbolic_opset9``, which torch removed, so an equivalent (``Cast`` to int64) is
  provided while exporting.

So the whole detector is exported by mmdeploy with the TorchScript exporter, and so is the
backbone + neck by default (one exporter for both graphs; its export is ~5x faster here);
``exporter='dynamo'`` exports the backbone + neck with the dynamo exporter instead.
"""
import contextlib
import copy
import functools
import math
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ExportError

#: what can be exported: the part N:M changes, and the whole detector
SCOPES = ('backbone+neck', 'detector')
EXPORTERS = ('torchscript', 'dynamo')
#: opsets each exporter writes for these graphs. TorchScript: from 11 (Resize with the FPN's
#: nearest upsampling, NonMaxSuppression and RoiAlign need 10-11; mmdeploy targets 11) to the
#: exporter's maximum (20). Dynamo: it writes opset 18+ (lower ones only through onnx's version
#: converter, which fails on these graphs), up to what the installed onnx knows.
OPSET_RANGES = {'torchscript': (11, 20), 'dynamo': (18, 22)}
DEFAULT_OPSET = {'torchscript': 17, 'dynamo': 18}


def _dynamo_max_opset() -> int:
    try:
        import onnx
        return min(OPSET_RANGES['dynamo'][1], onnx.defs.onnx_opset_version())
    except ImportError:
        return OPSET_RANGES['dynamo'][1]


def check_export_options(scopes: Sequence[str], exporter: str, opset: Optional[int],
                         shape: Optional[Sequence[int]] = None) -> int:
    """Refuse options the graphs cannot use (before anything is loaded or written); return the
    opset to use (``opset`` or the exporter's default)."""
    if not scopes:
        raise ExportError(f'Nothing to export: choose one or more of {SCOPES}.')
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ExportError(f'Unknown scope {unknown[0]!r}; choose from {SCOPES}.')
    if exporter not in EXPORTERS:
        raise ExportError(f'Unknown exporter {exporter!r}; choose one of {EXPORTERS}.')
    if 'detector' in scopes and exporter != 'torchscript':
        raise ExportError(
            f'The whole detector cannot be exported with the {exporter} exporter: mmdeploy\'s '
            'rewrites of mmdet (boxes, NMS, RoIAlign) are written for the TorchScript exporter, '
            'and torch.export fails inside them. Use --exporter torchscript (the default), or '
            'export only --scope backbone+neck with the dynamo exporter.')
    low, high = OPSET_RANGES[exporter]
    if exporter == 'dynamo':
        high = _dynamo_max_opset()
    opset = DEFAULT_OPSET[exporter] if opset is None else opset
    if not isinstance(opset, int) or not low <= opset <= high:
        why = ('Resize (the FPN upsampling), NonMaxSuppression and RoiAlign need opset 11 or '
               'later, and the TorchScript exporter writes at most 20'
               if exporter == 'torchscript' else
               'the dynamo exporter writes opset 18 or later, up to what the installed onnx '
               'knows')
        raise ExportError(f'Opset {opset} cannot be used with the {exporter} exporter: {why}. '
                          f'Choose --opset between {low} and {high} (default '
                          f'{DEFAULT_OPSET[exporter]}).')
    if shape is not None:
        if len(shape) != 2 or not all(isinstance(v, int) and v > 0 for v in shape):
            raise ExportError(f'--shape must be two positive integers, H W; got {list(shape)}.')
    return opset


def _find_resize(pipeline) -> Optional[dict]:
    for step in pipeline or []:
        if isinstance(step, dict) and 'Resize' in str(step.get('type', '')):
            return step
    return None


def pad_divisor(cfg) -> int:
    """The detector's ``data_preprocessor.pad_size_divisor`` (1 without one)."""
    pre = cfg.model.get('data_preprocessor') or {}
    return int(pre.get('pad_size_divisor', 1) or 1)


def default_shape(cfg) -> Tuple[int, int]:
    """The network input (H, W) of the config's test pipeline: its ``Resize`` scale (mmdet
    writes ``(w, h)``) padded to the preprocessor's ``pad_size_divisor`` -- the largest input
    that pipeline gives the network, so every test image fits the static graph."""
    pipeline = None
    loader = cfg.get('test_dataloader') or {}
    dataset = loader.get('dataset') or {}
    while isinstance(dataset, dict) and pipeline is None:
        pipeline = dataset.get('pipeline')
        dataset = dataset.get('dataset')
    resize = _find_resize(pipeline or cfg.get('test_pipeline'))
    scale = resize.get('scale') if resize else None
    if isinstance(scale, int):
        scale = (scale, scale)
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2):
        raise ExportError('The config\'s test pipeline has no Resize with a fixed scale, so the '
                          'input size of the static graph is unknown: give it with --shape H W.')
    div = pad_divisor(cfg)
    width, height = (int(v) for v in scale)
    return (math.ceil(height / div) * div, math.ceil(width / div) * div)


class BackboneNeck(nn.Module):
    """The backbone and neck of a detector as one module: image -> the neck's feature maps (the
    backbone's, without a neck)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.backbone = detector.backbone
        self.neck = getattr(detector, 'neck', None) if getattr(detector, 'with_neck', True) \
            else None

    def forward(self, x: torch.Tensor):
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        return tuple(feats)


class HalfPrecision(nn.Module):
    """``module`` computing in fp16 with fp32 input and outputs: exported, the graph casts the
    input to fp16, holds fp16 weights and casts the outputs back (what a strongly typed
    TensorRT network, TensorRT 11's only kind, needs to build fp16 kernels)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(module).half()

    def forward(self, x: torch.Tensor):
        return tuple(y.float() for y in self.inner(x.half()))


def export_backbone_neck(detector: nn.Module, path: str, shape: Tuple[int, int],
                         exporter: str = 'torchscript', opset: int = 17,
                         half: bool = False, batch: int = 1) -> Dict:
    """Export ``detector``'s backbone + neck (any module with ``backbone`` and optionally
    ``neck`` attributes, e.g. an mmdet detector; eval mode, static ``(batch, 3, *shape)``
    input; fp32, or fp16 inside with fp32 input/outputs when ``half``:
    :class:`HalfPrecision`) to ``path``, weights inside the file (nothing else is written).
    Traced on the device the module is on. Returns the input/output names and the export
    time."""
    import time
    module = BackboneNeck(detector).eval()
    if half:
        module = HalfPrecision(module).eval()
    device = next(module.parameters()).device
    x = torch.zeros(batch, 3, *shape, device=device)
    with torch.no_grad():
        num_outputs = len(module(x))
    outputs = [f'feat{i}' for i in range(num_outputs)]
    start = time.perf_counter()
    with torch.no_grad(), quiet_export():
        if exporter == 'dynamo':
            torch.onnx.export(module, (x,), path, dynamo=True, opset_version=opset,
                              input_names=['input'], output_names=outputs, external_data=False,
                              optimize=True, report=False, verify=False,
                              artifacts_dir=osp.dirname(path))
        else:
            torch.onnx.export(module, (x,), path, dynamo=False, opset_version=opset,
                              input_names=['input'], output_names=outputs,
                              do_constant_folding=True)
    return dict(input='input', outputs=outputs, export_s=time.perf_counter() - start)


@contextlib.contextmanager
def quiet_export():
    """Hide the exporters' tracing notes (the TorchScript exporter's deprecation notice, trace
    warnings about Python values taken as constants, mmdet's notes): the graph is checked
    against the PyTorch model afterwards instead."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', UserWarning)
        yield


def _cast_long(g, input, non_blocking):  # noqa: A002  (torch's symbolic signature)
    """What torch's removed ``symbolic_opset9._cast_Long`` did: Cast to int64."""
    return g.op('Cast', input, to_i=7)  # TensorProto.INT64


@contextlib.contextmanager
def mmdeploy_compat():
    """While mmdeploy exports on torch >= 2.9: its ``torch.onnx.export`` call uses the
    TorchScript exporter, and ``symbolic_opset9._cast_Long`` exists (see the module doc).
    Everything is restored afterwards."""
    import torch.onnx.symbolic_opset9 as opset9
    original = torch.onnx.export
    added = not hasattr(opset9, '_cast_Long')
    torch.onnx.export = functools.partial(original, dynamo=False)
    if added:
        opset9._cast_Long = _cast_long
    try:
        with quiet_export():
            yield
    finally:
        torch.onnx.export = original
        if added:
            del opset9._cast_Long


def mmdeploy_config(cfg, opset: int, shape: Tuple[int, int]):
    """mmdeploy's deploy config for an end-to-end mmdet graph run by ONNX Runtime: static
    input ``(1, 3, H, W)``, outputs ``dets`` ``(1, K, 5)``, ``labels`` ``(1, K)`` and, for
    Mask R-CNN, ``masks`` ``(1, K, 28, 28)`` (pasted into the image afterwards, as mmdet does).
    Thresholds come from the model's ``test_cfg`` (as mmdeploy's rewrites read them), so ONNX
    Runtime post-processes like mmdet; the per-class NMS limit is the per-image one."""
    from mmengine.config import Config
    rcnn = (cfg.model.get('test_cfg') or {}).get('rcnn') or {}
    keep = int(rcnn.get('max_per_img', 100))
    with_mask = bool(cfg.model.get('roi_head', {}).get('mask_head'))
    outputs = ['dets', 'labels'] + (['masks'] if with_mask else [])
    return Config(dict(
        onnx_config=dict(type='onnx', export_params=True, keep_initializers_as_inputs=False,
                         opset_version=opset, save_file='detector.onnx', input_names=['input'],
                         output_names=outputs, input_shape=[shape[1], shape[0]],
                         optimize=False),
        codebase_config=dict(
            type='mmdet', task='ObjectDetection', model_type='end2end',
            # score_threshold is read only where the model's test_cfg has none: the RPN, which
            # in mmdet keeps every proposal of non-zero size (the graph's pads score 0)
            post_processing=dict(score_threshold=RPN_SCORE_THRESHOLD,
                                 confidence_threshold=0.005,
                                 iou_threshold=float((rcnn.get('nms') or {}).get(
                                     'iou_threshold', 0.5)),
                                 max_output_boxes_per_class=keep, pre_top_k=5000,
                                 keep_top_k=keep, background_label_id=-1,
                                 export_postprocess_mask=False)),
        backend_config=dict(type='onnxruntime')))


#: the RPN's score threshold in the graph: mmdet's RPN has none (it drops only empty boxes)
RPN_SCORE_THRESHOLD = 1e-6


def rpn_level_sizes(detector: nn.Module, shape: Tuple[int, int]) -> Optional[List[int]]:
    """How many candidate boxes each FPN level gives mmdeploy's RPN rewrite, in the order it
    concatenates them (per level its top ``nms_pre``, or all of a smaller level; the ONNX Runtime
    backend pads nothing), from the feature sizes at ``shape``. ``None`` without an
    ``RPNHead``."""
    head = getattr(detector, 'rpn_head', None)
    if head is None or type(head).__name__ != 'RPNHead':
        return None
    with torch.no_grad():
        feats = detector.extract_feat(torch.zeros(1, 3, *shape))
    priors = head.num_base_priors
    pre = int((head.test_cfg or {}).get('nms_pre', -1))
    sizes = [int(f.shape[-2] * f.shape[-1] * priors) for f in feats]
    return [min(pre, n) for n in sizes] if pre > 0 else sizes


@contextlib.contextmanager
def levelwise_rpn_nms(sizes: Optional[Sequence[int]]):
    """While mmdeploy exports: its RPN rewrite runs one NMS over the boxes of all FPN levels,
    where mmdet's RPN runs it per level (``batched_nms`` with the level as the class), so the
    graph would keep other proposals (measured on the toy Mask R-CNN: bbox mAP 0.543 -> 0.537).
    This gives that NMS mmdet's per-level behaviour with mmcv's own trick: each level's boxes
    are shifted by ``level * (max coordinate + 1)`` so that boxes of different levels never
    overlap, and shifted back afterwards (boxes are clipped to the image, so
    ``floor(x1 / (max + 1))`` is the level). ``sizes``: :func:`rpn_level_sizes`."""
    if not sizes:
        yield
        return
    import mmdeploy.codebase.mmdet.models.dense_heads.rpn_head as rewrite
    original = rewrite.multiclass_nms

    def per_level_nms(boxes, scores, *args, **kwargs):
        if int(boxes.shape[1]) != sum(sizes):
            raise ExportError(f'mmdeploy\'s RPN gave {int(boxes.shape[1])} boxes, not the '
                              f'{sum(sizes)} of the levels {list(sizes)}: this version of its '
                              'rewrite is not supported.')
        levels = torch.cat([torch.full((n,), float(i)) for i, n in enumerate(sizes)])
        step = boxes.max() + 1
        shifted = boxes + levels.to(boxes).view(1, -1, 1) * step
        dets, labels = original(shifted, scores, *args, **kwargs)
        level = torch.floor(dets[..., :1] / step)
        return torch.cat([dets[..., :4] - level * step, dets[..., 4:]], dim=-1), labels

    rewrite.multiclass_nms = per_level_nms
    try:
        yield
    finally:
        rewrite.multiclass_nms = original


def export_detector(cfg, checkpoint_path: str, path: str, shape: Tuple[int, int],
                    opset: int = 17, detector: Optional[nn.Module] = None) -> Dict:
    """Export the whole detector with mmdeploy's ``torch2onnx`` (CPU) to ``path``; mmdeploy
    builds the model from the deploy config ``cfg`` (with any overrides) and loads
    ``checkpoint_path`` itself. ``detector`` (the same model, built): its RPN's level sizes for
    :func:`levelwise_rpn_nms`. Returns the deploy config used, the output names and the export
    time."""
    import time

    import numpy as np
    from mmengine.logging import MMLogger
    deploy_cfg = mmdeploy_config(cfg, opset, shape)
    image = np.zeros((shape[0], shape[1], 3), dtype=np.uint8)
    start = time.perf_counter()
    logger = MMLogger.get_instance('mmdeploy')
    level = logger.level
    sizes = rpn_level_sizes(detector, shape) if detector is not None else None
    with mmdeploy_compat(), levelwise_rpn_nms(sizes):
        from mmdeploy.apis import torch2onnx
        logger.setLevel('WARNING')  # mmdeploy logs every step at INFO
        try:
            torch2onnx(image, osp.dirname(path), osp.basename(path), deploy_cfg, cfg,
                       checkpoint_path, device='cpu')
        finally:
            logger.setLevel(level)
    return dict(deploy_cfg=deploy_cfg, input='input',
                outputs=list(deploy_cfg.onnx_config.output_names),
                export_s=time.perf_counter() - start)
