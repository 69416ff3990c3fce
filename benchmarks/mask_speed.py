"""Time ``nm_mask`` over every conv of a ResNet-50 (mmdet's backbone, random init).

SR-STE recomputes every mask once per training iteration, so this is a per-iteration cost.

    python benchmarks/mask_speed.py [--n 2 --m 4 --repeats 5 --device cpu]
"""
import argparse
import os.path as osp
import statistics
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this checkout

from spre_mmdet.sparsity import nm_incompatibility, nm_mask  # noqa: E402


def resnet50_conv_weights():
    """``(name, weight)`` of every Conv2d of an mmdet ResNet-50 (the only mmdet use here)."""
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    model = ResNet(depth=50)
    return [(name, module.weight.detach()) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Conv2d)]


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n', type=int, default=2)
    parser.add_argument('--m', type=int, default=4)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    convs = resnet50_conv_weights()
    weights = [(name, w.to(device)) for name, w in convs
               if nm_incompatibility(w.shape, args.m) is None]
    skipped = [name for name, w in convs if nm_incompatibility(w.shape, args.m) is not None]
    numel = sum(w.numel() for _, w in weights)
    print(f'ResNet-50: {len(convs)} convs, {len(weights)} N:M-compatible '
          f'({numel / 1e6:.2f}M weights), dense: {", ".join(skipped) or "none"}')
    print(f'nm_mask {args.n}:{args.m} on {device} ({torch.get_num_threads()} threads)')

    for _, w in weights:  # warm-up (allocator, kernels)
        nm_mask(w, args.n, args.m)
    _sync(device)

    totals, cpu_totals, per_layer = [], [], {name: [] for name, _ in weights}
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for name, w in weights:
            t0 = time.perf_counter()
            nm_mask(w, args.n, args.m)
            _sync(device)
            per_layer[name].append(time.perf_counter() - t0)
        _sync(device)
        totals.append((time.perf_counter() - start) * 1e3)
        cpu_totals.append((time.process_time() - cpu_start) * 1e3)

    slowest = sorted(per_layer.items(), key=lambda kv: -statistics.median(kv[1]))[:5]
    for name, times in slowest:
        shape = 'x'.join(map(str, dict(weights)[name].shape))
        print(f'  {name:<28} {shape:<14} {statistics.median(times) * 1e3:7.2f} ms')
    print(f'total per refresh of all masks: median {statistics.median(totals):.1f} ms, '
          f'min {min(totals):.1f} ms over {args.repeats} runs '
          f'({", ".join(f"{t:.0f}" for t in totals)})')
    # CPU time of this process: robust to other processes sharing the cores (wall time is not)
    print(f'process CPU time per refresh: median {statistics.median(cpu_totals):.1f} ms')


if __name__ == '__main__':
    main()
