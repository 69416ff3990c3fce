"""ONNX Runtime (CPU) against the PyTorch deploy model.

* :func:`compare_backbone_neck`: the feature maps of the exported backbone + neck against
  PyTorch's on the same input. Tolerance :data:`FEATURE_RTOL`: for every output,
  ``max|y_ort - y_torch| <= FEATURE_RTOL * max|y_torch|`` (fp32; ONNX Runtime fuses and orders
  the sums differently and the exporter folds BN into the convs; measured ~2e-6, docs/deploy.md);
  the fp16 graph (fp32 input/outputs) within :data:`FP16_RTOL` of the fp32 PyTorch model.
* :func:`evaluate_detector`: the whole detector's COCO metrics on the config's test set, from
  ONNX Runtime (mmdeploy's ONNX Runtime wrapper and post-processing) and from the PyTorch
  deploy model (mmdet's ``predict``), on the same preprocessed inputs. The static graph takes
  one ``(H, W)`` input: each image is padded at the bottom/right to it, for both models.
"""
import copy
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import ExportError

#: backbone + neck: ONNX Runtime vs PyTorch, relative to each output's largest magnitude
FEATURE_RTOL = 1e-4
#: the fp16 backbone + neck graph (fp32 I/O) in ONNX Runtime vs the fp32 PyTorch model, same
#: measure: bounds the fp16 rounding of weights and activations (docs/deploy.md has the errors)
FP16_RTOL = 1e-2
#: detector: ONNX Runtime vs PyTorch COCO mAP (bbox and segm), absolute
MAP_TOLERANCE = 0.005


def session(path: str, threads: Optional[int] = None):
    """An ONNX Runtime CPU session of ``path`` with all graph optimizations (the deployment
    setting), as many intra-op threads as torch uses."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=options, providers=['CPUExecutionProvider'])


def sample_input(shape: Tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A normalized-image-like input ``(1, 3, H, W)``, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, *shape, generator=gen)


def compare_backbone_neck(module: nn.Module, onnx_path: str, shape: Tuple[int, int],
                          output_names: Sequence[str], seeds: Sequence[int] = (0, 1),
                          rtol: float = FEATURE_RTOL) -> Dict:
    """Run ``module`` (PyTorch, fp32) and the graph (ONNX Runtime, CPU) on ``seeds`` inputs;
    return the worst relative error per output, the tolerance, whether all are within it, and
    the time per image of each (ms, the mean of the runs after the first)."""
    import time
    sess = session(onnx_path)
    worst = {name: 0.0 for name in output_names}
    times = {'pytorch_ms': [], 'onnxruntime_ms': []}
    module = module.eval()
    for seed in seeds:
        x = sample_input(shape, seed)
        start = time.perf_counter()
        with torch.no_grad():
            expected = module(x)
        times['pytorch_ms'].append(1e3 * (time.perf_counter() - start))
        start = time.perf_counter()
        got = sess.run(list(output_names), {'input': x.numpy()})
        times['onnxruntime_ms'].append(1e3 * (time.perf_counter() - start))
        for name, want, have in zip(output_names, expected, got):
            want = want.numpy()
            if want.shape != have.shape:
                raise ExportError(f'ONNX Runtime output {name} has shape {list(have.shape)}, '
                                  f'PyTorch {list(want.shape)}: the export is broken.')
            scale = float(np.abs(want).max()) or 1.0
            worst[name] = max(worst[name], float(np.abs(have - want).max()) / scale)
    timed = {key: float(np.mean(values[1:] if len(values) > 1 else values))
             for key, values in times.items()}
    return dict(rtol=rtol, max_rel_error=worst, max_rel_error_all=max(worst.values()),
                ok=all(v <= rtol for v in worst.values()), inputs=len(seeds), **timed)


def _pad_batch(data: dict, shape: Tuple[int, int]) -> Tuple[torch.Tensor, list]:
    """The preprocessed batch padded (bottom/right, zeros as mmdet pads) to the graph's input
    shape, with the data samples' ``batch_input_shape``/``pad_shape`` updated."""
    inputs, samples = data['inputs'], data['data_samples']
    height, width = inputs.shape[-2:]
    if height > shape[0] or width > shape[1]:
        raise ExportError(f'A test image reaches the network as {height}x{width}, larger than '
                          f'the exported input {shape[0]}x{shape[1]}: export with --shape '
                          'H W at least that large.')
    if (height, width) != tuple(shape):
        inputs = torch.nn.functional.pad(inputs, (0, shape[1] - width, 0, shape[0] - height))
    for sample in samples:
        sample.set_metainfo(dict(batch_input_shape=tuple(shape), pad_shape=tuple(shape)))
    return inputs, samples


def evaluate_detector(cfg, detector: nn.Module, onnx_path: str, deploy_cfg,
                      shape: Tuple[int, int], scratch: str, limit: Optional[int] = None) -> Dict:
    """COCO metrics of the PyTorch deploy model and of the ONNX graph in ONNX Runtime on the
    config's test set (batch 1, the same padded inputs), with the largest difference of the
    bbox/segm mAPs and whether it is within :data:`MAP_TOLERANCE`.

    ``scratch``: a folder for the evaluator's result files (the caller removes it). ``limit``:
    evaluate only the first images (for tests)."""
    import os.path as osp
    import time

    from mmdeploy.apis.utils import build_task_processor
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    cfg = copy.deepcopy(cfg)
    cfg.test_dataloader.batch_size = 1
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    if limit:
        cfg.test_dataloader.dataset.indices = int(limit)
    loader = Runner.build_dataloader(cfg.test_dataloader, seed=0)
    evaluators = {}
    for key in ('pytorch', 'onnxruntime'):
        metric_cfg = copy.deepcopy(cfg.test_evaluator)
        for metric in (metric_cfg if isinstance(metric_cfg, list) else [metric_cfg]):
            metric['outfile_prefix'] = osp.join(scratch, key)  # not a temp folder elsewhere
        evaluators[key] = Evaluator(metric_cfg)
        evaluators[key].dataset_meta = loader.dataset.metainfo
    processor = build_task_processor(cfg, deploy_cfg, 'cpu')
    ort_model = processor.build_backend_model([onnx_path],
                                              data_preprocessor_updater=None)
    detector = detector.eval()
    seconds = {'pytorch': 0.0, 'onnxruntime': 0.0}
    images = 0
    for data in loader:
        with torch.no_grad():
            data = detector.data_preprocessor(data, False)
            inputs, samples = _pad_batch(data, shape)
            start = time.perf_counter()
            ours = detector.predict(inputs, copy.deepcopy(samples))
            seconds['pytorch'] += time.perf_counter() - start
            start = time.perf_counter()
            theirs = ort_model.forward(inputs, copy.deepcopy(samples), mode='predict')
            seconds['onnxruntime'] += time.perf_counter() - start
        evaluators['pytorch'].process(ours, data)
        evaluators['onnxruntime'].process(theirs, data)
        images += len(samples)
    metrics = {key: {k: float(v) for k, v in evaluator.evaluate(images).items()}
               for key, evaluator in evaluators.items()}
    keys = [k for k in metrics['pytorch'] if k.endswith(('bbox_mAP', 'segm_mAP'))]
    diff = max((abs(metrics['pytorch'][k] - metrics['onnxruntime'][k]) for k in keys),
               default=0.0)
    return dict(images=images, metrics=metrics, mAP_keys=keys, max_mAP_difference=diff,
                tolerance=MAP_TOLERANCE, ok=bool(keys) and diff <= MAP_TOLERANCE,
                ms_per_image={k: 1e3 * v / max(images, 1) for k, v in seconds.items()})
