"""Export a 2:4 deploy checkpoint to ONNX, check it in ONNX Runtime, optionally build TensorRT
sparse engines.

    python tools/deployment/export_onnx.py DEPLOY_CONFIG DEPLOY_CHECKPOINT --out DIR
        [--scope backbone+neck detector] [--exporter {torchscript,dynamo}] [--opset N]
        [--shape H W] [--eval] [--fp16] [--tensorrt] [--force] [--cfg-options KEY=VALUE ...]

DEPLOY_CONFIG / DEPLOY_CHECKPOINT are what tools/reparameterize.py writes (deploy_config.py,
deploy.pth). Writes into DIR (new or empty, or an earlier ONNX export with --force), and only
when every check passed:

* backbone_neck.onnx (--scope backbone+neck, the default): the part N:M sparsity changes;
* backbone_neck_fp16.onnx (--fp16 or --tensorrt): the same computing in fp16;
* detector.onnx (--scope detector): the whole detector (boxes, labels, masks) through mmdeploy;
* onnx_report.json / onnx_report.txt: what was exported and measured.

Checks: every N:M layer's weight in each graph is still exactly N:M along the input channels
with the checkpoint's zero pattern; ONNX Runtime (CPU) gives PyTorch's backbone + neck features
within 1e-4 of their largest magnitude; with --eval, the detector's bbox/segm mAP on the
config's test set from ONNX Runtime equals PyTorch's within 0.005. --tensorrt builds fp16
TensorRT engines of backbone_neck.onnx with and without sparse weights and times them (GPU
only; without one it says why it was skipped). A training-time or dense checkpoint, or an
opset / exporter the graph cannot use, is refused before anything is written. Needs
pip install -e '.[onnx]' (and '.[tensorrt]' for engines); docs/deploy.md.
"""
import argparse

import spre_mmdet  # noqa: F401  (must come first: safe checkpoint loading)
from spre_mmdet.cli import run_tool
from spre_mmdet.export import EXPORTERS, SCOPES, export_onnx, format_report

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='deploy_config.py of a deploy folder')
    parser.add_argument('checkpoint', help='deploy.pth of that folder')
    parser.add_argument('--out', required=True,
                        help='output folder: new or empty (or an earlier export, with --force)')
    parser.add_argument('--scope', nargs='+', choices=SCOPES, default=['backbone+neck'],
                        help='graphs to export (default: backbone+neck)')
    parser.add_argument('--exporter', choices=EXPORTERS, default='torchscript',
                        help="torch.onnx's TorchScript exporter (default; needed by mmdeploy for "
                        'the detector) or the dynamo exporter (backbone+neck only)')
    parser.add_argument('--opset', type=int, default=None,
                        help='ONNX opset (default: 17 TorchScript, 18 dynamo)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help="static input size (default: the test pipeline's, padded)")
    parser.add_argument('--eval', action='store_true',
                        help="detector: COCO mAP of ONNX Runtime vs PyTorch on the config's "
                        'test set')
    parser.add_argument('--eval-limit', type=int, default=None,
                        help='evaluate only the first N test images')
    parser.add_argument('--fp16', action='store_true',
                        help='also write backbone_neck_fp16.onnx (fp16 inside, fp32 I/O; the '
                        'graph TensorRT 11 builds fp16 engines from)')
    parser.add_argument('--tensorrt', action='store_true',
                        help='build and time fp16 TensorRT engines, dense and sparse (GPU)')
    parser.add_argument('--tensorrt-iters', type=int, default=100,
                        help='timed inferences per TensorRT engine')
    parser.add_argument('--force', action='store_true',
                        help='replace the files of an earlier ONNX export in --out')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override deploy config settings (e.g. the test data_root)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    report = export_onnx(args.config, args.checkpoint, args.out, scopes=args.scope,
                         exporter=args.exporter, opset=args.opset,
                         shape=tuple(args.shape) if args.shape else None, force=args.force,
                         evaluate=args.eval, eval_limit=args.eval_limit, fp16=args.fp16,
                         tensorrt=args.tensorrt, tensorrt_iters=args.tensorrt_iters,
                         cfg_options=args.cfg_options)
    print(format_report(report))
    print(f'Written to {args.out}')


if __name__ == '__main__':
    run_tool(main)
