"""ONNX export of a deploy checkpoint, checked in ONNX Runtime, and TensorRT sparse engines.

The input is what ``tools/reparameterize.py`` writes (``deploy_config.py`` + ``deploy.pth``:
a plain detector whose N:M layers are exactly N:M, their list in ``meta['sparse_layers']``).
Two graphs can be exported (:data:`~.exporters.SCOPES`):

* ``backbone+neck`` -- the part N:M sparsity changes, exported with ``torch.onnx.export``
  (TorchScript exporter by default, the dynamo exporter with ``exporter='dynamo'``);
* ``detector`` -- the whole detector (boxes, scores, labels, masks) through mmdeploy 1.3.1's
  ``torch2onnx`` and its mmdet rewrites, which need the TorchScript exporter
  (:mod:`.exporters` says why and which two compatibility shims torch 2.13 needs).

Every export is checked before it is delivered (:func:`~.pipeline.export_onnx`): every N:M
layer's weight in the ONNX graph is still exactly N:M along the input channels, with the zero
pattern of the deploy checkpoint (:mod:`.graph`); ONNX Runtime on the CPU reproduces the
PyTorch deploy model (features within a stated tolerance, or the detector's COCO mAP on the
test set) (:mod:`.runtime`). :func:`~.tensorrt.benchmark_tensorrt` builds fp16 TensorRT engines
with and without sparse weights from such a graph and times them (GPU only; elsewhere it
returns why it was skipped).

Needs the optional dependencies ``pip install -e '.[onnx]'`` (onnx, onnxruntime, onnxscript,
mmdeploy) and, for engines, ``'.[tensorrt]'``; training never imports this package. Importing
it needs none of them: each function names what is missing when it is called.
"""
from .deps import ONNX_EXTRA, TENSORRT_EXTRA, MissingDependencyError, require
from .exporters import (DEFAULT_OPSET, EXPORTERS, OPSET_RANGES, SCOPES, check_export_options,
                        default_shape, export_backbone_neck)
from .pipeline import ONNX_FILES, ONNX_MARKER, export_onnx, format_report, load_deploy
from .tensorrt import benchmark_tensorrt, benchmark_tensorrt_module, tensorrt_skip_reason

__all__ = ['DEFAULT_OPSET', 'EXPORTERS', 'MissingDependencyError', 'ONNX_EXTRA', 'ONNX_FILES',
           'ONNX_MARKER', 'OPSET_RANGES', 'SCOPES', 'TENSORRT_EXTRA', 'benchmark_tensorrt',
           'benchmark_tensorrt_module', 'export_backbone_neck',
           'check_export_options', 'default_shape', 'export_onnx', 'format_report',
           'load_deploy', 'require', 'tensorrt_skip_reason']
