"""Memory of LBC's subset scores for ResNet-50's N:M-able convs (docs/methods/lbc.md).

Counts the convs of mmdet's ``ResNet(depth=50)`` layers 1-4 whose in-channels divide by M
(1x1, 3x3 and downsample; the stem stays dense; shapes from ``resnet_conv_shapes`` of
``mask_speed.py`` next to this script, which a test checks against mmdet)
and prints, per N:M pattern, the fp32 memory of the weights, of LBC's scores
(``groups x C(M, N)``), of the ``alive`` (bool) and ``mask`` (bool) buffers, and of the
optimizer state the scores add.

    python tools/analysis_tools/lbc_memory.py                 # 2:4 and 4:8
    python tools/analysis_tools/lbc_memory.py --nm 1:4 2:8    # other patterns
    python tools/analysis_tools/lbc_memory.py --time          # also time LBC vs SR-STE on one
                                                              # 3x3 conv (CPU)
"""
import argparse
import math
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mask_speed import resnet_conv_shapes
from torch import nn

MB = 2 ** 20


def nm_convs(m: int, arch: str = 'r50') -> List[Tuple[str, Tuple[int, ...]]]:
    """``(name, weight shape)`` of the ResNet layers 1-4 convs that can be N:M with this M."""
    return [(name, shape) for name, shape in resnet_conv_shapes(arch) if shape[1] % m == 0]


def score_count(shape: Sequence[int], n: int, m: int) -> int:
    """LBC's subset scores for one weight of ``shape``: ``C(M, N)`` per group of ``M``."""
    return math.prod(shape) // m * math.comb(m, n)


def memory_rows(patterns: Sequence[Tuple[int, int]]) -> List[Dict[str, object]]:
    """One row per ``(n, m)``: counts (weights, scores) and memory in MiB."""
    rows = []
    for n, m in patterns:
        convs = nm_convs(m)
        weights = sum(math.prod(shape) for _, shape in convs)
        k = math.comb(m, n)
        scores = sum(score_count(shape, n, m) for _, shape in convs)
        rows.append(dict(pattern=f'{n}:{m}', k=k, convs=len(convs), weights=weights,
                         weight_mb=weights * 4 / MB, score_mb=scores * 4 / MB,
                         scores=scores, ratio=scores / weights, alive_mb=scores / MB, mask_mb=weights / MB,
                         sgd_mb=scores * 4 / MB, adamw_mb=2 * scores * 4 / MB))
    return rows


def print_table(rows):
    header = ('N:M', 'K', 'convs', 'weights', 'weights MB', 'scores MB', 'scores/weights',
              'alive MB', 'mask MB', '+SGD mom. MB', '+AdamW MB')
    lines = [(r['pattern'], r['k'], r['convs'], f"{r['weights'] / 1e6:.2f}M",
              f"{r['weight_mb']:.1f}", f"{r['score_mb']:.1f}", f"{r['ratio']:.2f}x",
              f"{r['alive_mb']:.1f}", f"{r['mask_mb']:.1f}", f"{r['sgd_mb']:.1f}",
              f"{r['adamw_mb']:.1f}") for r in rows]
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for line in lines:
        print('| ' + ' | '.join(map(str, line)) + ' |')


def time_layer(n, m, repeats=5):
    """Forward+backward time of one ResNet-50 layer3 3x3 conv (256->256) with LBC vs SR-STE,
    and the time of LBC refreshes: one removal step, several subsets at once, none (CPU,
    fp32)."""
    from spre_mmdet.sparsity import SparseConv2d
    torch.manual_seed(0)
    x = torch.randn(2, 256, 32, 32)
    results = {}
    for method, learner_type, kwargs in (('srste', 'SRSTEMask', {}),
                                         ('lbc', 'LBCMask', dict(t_i=0, t_f=100))):
        conv = nn.Conv2d(256, 256, 3, padding=1, bias=False)
        layer = SparseConv2d.from_dense(conv, learner_type, n, m, **kwargs)
        layer.refresh(0)
        layer(x).sum().backward()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            layer.zero_grad()
            layer(x).sum().backward()
        results[method] = (time.perf_counter() - start) / repeats * 1e3
        if method == 'lbc':
            learner = layer.sparsity
            with torch.no_grad():  # trained-like: distinct scores
                learner.scores.copy_(torch.rand(learner.scores.shape))
            # the first step of the schedule (one subset fewer per group), then a jump to
            # iteration 30 (several at once)
            step = next(it for it in range(1, 100) if learner.survivors(it) < learner.num_subsets)
            def alive():  # subsets alive per group
                return int(learner.alive.sum(1).max())
            for iteration in (step, 30):
                before = alive()
                start = time.perf_counter()
                layer.refresh(iteration)
                results[f'lbc refresh {before} -> {alive()}'] = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            layer.refresh(30)  # no removal: the common case
            results['lbc refresh (no removal)'] = (time.perf_counter() - start) * 1e3
    for name, ms in results.items():
        print(f'{n}:{m} {name:<26} {ms:8.2f} ms')


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(prog='python tools/analysis_tools/lbc_memory.py',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--nm', nargs='+', default=['2:4', '4:8'], help='patterns, e.g. 2:4')
    parser.add_argument('--time', action='store_true', help='also time one layer on CPU')
    args = parser.parse_args(argv)
    patterns = [tuple(int(v) for v in p.split(':')) for p in args.nm]
    print('LBC score memory, ResNet-50 layers 1-4 (fp32 scores, bool alive/mask):')
    rows = memory_rows(patterns)
    print_table(rows)
    if args.time:
        for n, m in patterns:
            time_layer(n, m)
    return rows


if __name__ == '__main__':
    main()
