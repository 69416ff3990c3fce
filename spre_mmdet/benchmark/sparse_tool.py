"""Dense vs 2:4 sparse tensor-core speed of a (deploy) detector, per layer and end to end: the
work of ``tools/benchmark_sparse.py``.

    python tools/benchmark_sparse.py CONFIG CHECKPOINT [--input-size 800 1333] [--batch-size 1]
        [--dtype fp16|bf16] [--backend auto|cusparselt|cutlass]
        [--scope backbone|backbone+neck|detector] [--warmup 10] [--repeats 50]
        [--out-dir work_dirs/benchmark] [--device cuda|cpu] [--no-cuda-graphs] [--no-alg-search]

Checks every conv/linear layer for 2:4 validity in the hardware layout, captures each layer's
input shapes from a real forward, then (CUDA, sm80+) times dense cuDNN/cuBLAS vs the 2:4
semi-structured GEMM (im2col included for k x k convs; cuSPARSELt's algorithm searched per GEMM
shape), on the GPU alone (CUDA graphs, host dispatch out of the timed region and the host
overhead reported beside it), checks sparse vs dense numerics, and times backbone /
backbone+neck / detector dense, with per-layer dispatch, and all-sparse.
Without such a GPU it runs the validity and CPU-reference numerics only, records every timing
as null with the reason, and exits 0. See docs/benchmark.md.
"""
import argparse
import os
import os.path as osp
import time

import torch

from ..environment import collect_environment
from ..errors import ConfigError
from ..sparsity import SparseLayerRecord
from ..sparsity.nm import nm_mask
from . import (DTYPES, GemmLayer, bench_end_to_end, bench_layer_cuda, build_report,
               capture_input_shapes, check_layer_cpu, check_layers, compare_outputs,
               dispatch_decisions, format_checks, format_e2e_table,
               format_layer_table, layer_calls, resolve_backend, sparse_support, speedups,
               tolerance_text, write_all)
from .detector import SCOPE_PREFIXES, SCOPES, load_detector, make_inputs, scope_runners
from .runner import GRAPH_SCOPES
from .layers import KERNEL_PATTERN
from .report import layer_row, no_timing_row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='mmdet config of the (deploy) model')
    p.add_argument('checkpoint', help='deploy checkpoint (plain mmdet model, 2:4 weights)')
    p.add_argument('--input-size', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'))
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--dtype', choices=['fp16', 'bf16'], default='fp16')
    p.add_argument('--backend', choices=['auto', 'cusparselt', 'cutlass'], default='auto')
    p.add_argument('--scope', choices=SCOPES, default='backbone',
                   help='which layers may run sparse (and are timed per layer)')
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--repeats', type=int, default=50)
    p.add_argument('--out-dir', default='work_dirs/benchmark_sparse')
    p.add_argument('--device', choices=['cuda', 'cpu'], default=None,
                   help='default: cuda if available')
    p.add_argument('--min-speedup', type=float, default=1.0,
                   help='dispatch a layer to sparse only above this measured speedup')
    p.add_argument('--cpu-check-size', type=int, default=64,
                   help='max H/W of the per-layer CPU reference check inputs')
    p.add_argument('--tensorrt', action='store_true', help='also try the TensorRT path')
    p.add_argument('--no-cuda-graphs', action='store_true',
                   help='issue the timed calls eagerly ahead of a busy GPU instead of replaying '
                        'CUDA graphs (each sample is still checked to be host-free)')
    p.add_argument('--no-alg-search', action='store_true',
                   help="keep cuSPARSELt's default algorithm (no per-shape search)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    can_time, reason = sparse_support(device)
    if device == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('--device cuda was asked for, but no CUDA GPU is available to this '
                          'process (torch.cuda.is_available() is False). Run on a machine with '
                          'an NVIDIA Ampere or newer GPU for timings, or leave --device out for '
                          'the CPU validity and numerics check.')
    run_device = device if can_time or device == 'cpu' else 'cpu'
    dtype = DTYPES[args.dtype] if can_time else torch.float32
    os.makedirs(args.out_dir, exist_ok=True)
    n, m = KERNEL_PATTERN

    model, checkpoint_meta = load_detector(args.config, args.checkpoint, return_meta=True)
    records = [SparseLayerRecord.from_dict(r) for r in checkpoint_meta['sparse_layers']] \
        if 'sparse_layers' in checkpoint_meta else None  # what each layer was trained as
    prefixes = SCOPE_PREFIXES[args.scope]
    checks = check_layers(model, prefixes, n, m, records)
    print('2:4 validity (hardware layout: groups of 4 consecutive input channels at fixed '
          'kernel position):')
    print(format_checks(checks))
    names = [c.name for c in checks if c.valid and c.in_scope]
    invalid = [c for c in checks if c.in_scope and c.candidate and not c.valid]
    print(f'\n{len(names)} layers in scope {args.scope!r} are 2:4; {len(invalid)} candidate '
          f'layers in scope are not (listed above with the reason).')
    if not names:
        print('No 2:4 layer to benchmark: is this a deploy checkpoint of a sparse run '
              '(tools/reparameterize.py output)?')

    if can_time:
        torch.backends.cudnn.benchmark = True
        model = model.to(device=run_device, dtype=dtype).to(memory_format=torch.channels_last)
    h, w = args.input_size
    inputs, samples = make_inputs(model, args.batch_size, h, w, run_device, dtype)
    runners = scope_runners(model, inputs, samples)
    shapes = capture_input_shapes(model, names, runners[args.scope])

    backend = resolve_backend(args.backend) if can_time else None
    layers, sparse_modules = [], {}
    from mmengine.utils import ProgressBar
    bar = ProgressBar(len(names)) if names else None
    for name in names:
        module = model.get_submodule(name)
        check = next(c for c in checks if c.name == name)
        row = layer_row(name, check.kind, check.weight_shape, layer_calls(module, shapes[name]))
        if not shapes[name]:
            row['note'] = 'not called in this forward'
        elif can_time:
            res, sparse = bench_layer_cuda(module, shapes[name], dtype, backend, args.warmup,
                                           args.repeats, search=not args.no_alg_search,
                                           graphs=not args.no_cuda_graphs)
            row.update(res)
            row.update(speedups(row))
            if row.get('numerics'):
                row['numerics']['reference'] = f'dense {args.dtype} cuDNN/cuBLAS on GPU'
            if sparse is not None:
                sparse_modules[name] = sparse
        else:
            num = check_layer_cpu(module, shapes[name], n, m, args.cpu_check_size)
            num['reference'] = 'cpu fp32: im2col GEMM with nm_mask weight vs F.conv2d/linear'
            row['numerics'] = num
        layers.append(row)
        bar.update()
    if bar is not None:
        print()

    end_to_end = {}
    if can_time:
        decisions = dispatch_decisions(layers, args.min_speedup)
        for row in layers:
            row['dispatch'] = decisions[row['name']] if row['name'] in sparse_modules else 'dense'
        end_to_end = bench_end_to_end(
            model, runners, sparse_modules, decisions, args.warmup, args.repeats,
            graph_scopes=() if args.no_cuda_graphs else GRAPH_SCOPES)
        for scope in ('backbone', 'backbone+neck'):
            if scope in runners and scope in end_to_end:
                end_to_end[scope]['numerics_all_sparse'] = compare_outputs(
                    model, runners[scope], sparse_modules, dtype)
    else:
        refs = {name: GemmLayer.from_module(model.get_submodule(name),
                                            mask=nm_mask(model.get_submodule(name).weight, n, m))
                for name in names if shapes[name]}
        for scope in ('backbone', 'backbone+neck', 'detector'):
            row = no_timing_row(len(refs))
            if scope in runners and scope != 'detector':
                row['numerics_all_sparse'] = compare_outputs(model, runners[scope], refs,
                                                             torch.float32)
                row['numerics_all_sparse']['reference'] = 'cpu fp32, all 2:4 layers as GEMMs'
            end_to_end[scope] = row

    trt = None
    if args.tensorrt:  # fp16 engines of the backbone + neck, dense and sparse (docs/deploy.md)
        from ..export import benchmark_tensorrt_module
        from ..export.pipeline import format_tensorrt
        div = int(getattr(getattr(model, 'data_preprocessor', None), 'pad_size_divisor', 1) or 1)
        trt = benchmark_tensorrt_module(model, (-(-h // div) * div, -(-w // div) * div),
                                        args.out_dir, batch=args.batch_size,
                                        warmup=args.warmup, iters=args.repeats)
        print('TensorRT (backbone+neck, fp16): ' + (f'skipped: {trt["skipped"]}'
                                                    if trt['skipped'] else '\n' +
                                                    format_tensorrt(trt)))

    meta = dict(device=str(run_device), environment=collect_environment(run_device))
    meta.update(config=args.config, checkpoint=osp.basename(args.checkpoint),
                input_size=[h, w], batch_size=args.batch_size,
                dtype=args.dtype if can_time else 'fp32 (cpu reference)', backend=backend,
                scope=args.scope, warmup=args.warmup, repeats=args.repeats,
                cudnn_benchmark=bool(can_time), tensorrt=trt,
                cuda_graphs=bool(can_time and not args.no_cuda_graphs),
                alg_search=bool(can_time and backend == 'cusparselt' and not args.no_alg_search),
                timing_method='GPU time without host dispatch (device_time): per layer, the '
                              'calls of a sample (>=0.5 ms of GPU work) captured in one CUDA '
                              'graph (or issued eagerly) and enqueued behind a GPU spin kernel; '
                              'a sample counts only if the GPU had not reached its start event '
                              'when the host had enqueued its end event; median and IQR over '
                              'repeats; per layer = sum over calls of medians. End to end: one '
                              'forward per sample, graphs for backbone and backbone+neck, the '
                              'detector eagerly (it synchronizes: host time included). Host '
                              'columns: us to issue each call, measured separately.',
                date=time.strftime('%Y-%m-%d %H:%M:%S'),
                title=f'{osp.basename(args.config)} {h}x{w} batch {args.batch_size} '
                      f'{args.dtype if can_time else "cpu reference"}')
    report = build_report(meta, [c.to_dict() for c in checks], layers, end_to_end,
                          tolerance_text(dtype), None if can_time else reason)
    paths = write_all(report, args.out_dir)

    print('\nPer layer (times in ms, sums over a layer\'s calls):')
    print(format_layer_table(layers))
    print('\nEnd to end:')
    print(format_e2e_table(end_to_end))
    s = report['summary']
    print(f'\n{s["num_valid_in_scope"]} 2:4 layers in scope, {s["num_numerics_ok"]}/'
          f'{s["num_benchmarked"]} pass the numerical check ({tolerance_text(dtype)}).')
    host = [lay for lay in layers if lay.get('host_dispatch_us') is not None]
    if host:
        print(f'Host: issuing the {len(host)} 2:4 GEMMs once takes '
              f'{sum(lay["host_dispatch_us"] for lay in host):.0f} us through PyTorch\'s '
              f'dispatch (F.linear on the SparseSemiStructuredTensor), '
              f'{sum(lay["host_kernel_us"] for lay in host):.0f} us as ATen ops; their GPU '
              f'time is {1e3 * sum(lay["sparse_gemm_ms"] or 0 for lay in host):.0f} us. '
              f'GPU times above exclude the host '
              f'({sum(1 for lay in layers if lay.get("host_free"))}/{len(layers)} layers with '
              'every sample host-free).')
    if not can_time:
        print(f'\nNo timings: {reason}. Timings are recorded as null in the JSON; validity '
              'and CPU-reference numerics above are real.')
    for kind, path in paths.items():
        print(f'wrote {kind}: {path}')
    return 0

