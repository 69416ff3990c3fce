"""What a full mask refresh of a ResNet backbone costs, against memory speed.

For every conv of layer1-4 of a ResNet (random init; the stem's 3 input channels cannot be N:M),
the work one training iteration asks of the masks is timed:

* **SR-STE**: ``refresh_masks`` recomputing every magnitude N:M mask;
* **SpRe**: the same with SpRe's branch on every k x k conv, i.e. the N:M masks plus each
  k x k conv's spatial mask ``S``;
* **LBC**: a refresh at a step of the removal schedule (one subset per group removed, subset
  scores random as after some training): the first (all subsets alive, no mask changes) and
  the last (two subsets left, most masks change), and one between steps (nothing to remove);

against two yardsticks: **one clone** of the same weights (memory speed) and a **naive top-k**
mask (``topk`` over rows of ``M``, as one would write it first). Every round times each
variant once, in rotating order, in one process, so load from other processes hits all of them
alike; the report gives medians over rounds, of the times and of the per-round ratios, and
``--json`` adds the environment they were measured in
(:func:`spre_mmdet.environment.collect_environment`).

    python tools/analysis_tools/mask_speed.py --arch r18 r50 [--n 2 --m 4 --repeats 5]

Plain PyTorch (no mmdet): the conv shapes are those of mmdet's ``ResNet`` (checked by a test).
``lbc_memory.py`` next to this script imports :func:`resnet_conv_shapes`.
"""
import argparse
import json
import statistics
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from spre_mmdet.benchmark.timing import synchronize, time_interleaved
from spre_mmdet.environment import collect_environment
from spre_mmdet.sparsity import (SparseConv2d, from_groups, refresh_masks, sparse_layers,
                                 sparsify_layer, to_groups)
from spre_mmdet.sparsity.lbc import LBCMask

#: depth -> (block kind, blocks per stage)
ARCHS = {
    'r18': ('basic', (2, 2, 2, 2)),
    'r34': ('basic', (3, 4, 6, 3)),
    'r50': ('bottleneck', (3, 4, 6, 3)),
    'r101': ('bottleneck', (3, 4, 23, 3)),
}

#: the rows of the report, in order: key -> label
WORK = {
    'clone': 'one clone of the weights',
    'topk': 'naive top-k N:M masks',
    'srste': 'SR-STE refresh (all N:M masks)',
    'spre': 'SpRe refresh (N:M masks + S)',
    'lbc_removal': 'LBC step with a removal (first: K to K - 1 subsets)',
    'lbc_last_removal': 'LBC step with a removal (last: 2 subsets to 1)',
    'lbc_between': 'LBC step without removal',
}


def resnet_conv_shapes(arch: str, base_channels: int = 64) -> List[Tuple[str, Tuple[int, ...]]]:
    """``(name, weight shape)`` of every conv of layer1-4 of mmdet's ``ResNet`` (``style=
    'pytorch'``), downsample convs included, in module order."""
    block, stages = ARCHS[arch]
    expansion = 1 if block == 'basic' else 4
    shapes, inplanes = [], base_channels
    for stage, blocks in enumerate(stages):
        planes = base_channels * 2 ** stage
        for b in range(blocks):
            prefix = f'layer{stage + 1}.{b}'
            if block == 'basic':
                shapes += [(f'{prefix}.conv1', (planes, inplanes, 3, 3)),
                           (f'{prefix}.conv2', (planes, planes, 3, 3))]
            else:
                shapes += [(f'{prefix}.conv1', (planes, inplanes, 1, 1)),
                           (f'{prefix}.conv2', (planes, planes, 3, 3)),
                           (f'{prefix}.conv3', (planes * expansion, planes, 1, 1))]
            if b == 0 and (stage > 0 or inplanes != planes * expansion):
                shapes.append((f'{prefix}.downsample.0', (planes * expansion, inplanes, 1, 1)))
            inplanes = planes * expansion
    return shapes


class _ConvNorm(nn.Module):
    """A conv and its BN, the pair SpRe replaces."""

    def __init__(self, shape: Tuple[int, ...]):
        super().__init__()
        self.conv = nn.Conv2d(shape[1], shape[0], shape[2:], bias=False)
        self.bn = nn.BatchNorm2d(shape[0])


def build_layers(arch: str, method: str, n: int, m: int, base_channels: int = 64,
                 seed: int = 0, device: str = 'cpu') -> nn.ModuleList:
    """The sparse layers of :func:`resnet_conv_shapes` (nn.Conv2d's default init, seeded):
    ``'srste'`` (:class:`SRSTEMask`) and ``'lbc'`` (:class:`LBCMask`, ``t_i=0, t_f=1000``)
    learners on every conv, or ``'spre'``: SR-STE with SpRe's branch on every k x k conv (as
    ``SparseResNet`` does)."""
    torch.manual_seed(seed)
    layers = nn.ModuleList()
    for _, shape in resnet_conv_shapes(arch, base_channels):
        pair = _ConvNorm(shape)
        if method == 'spre' and shape[2] * shape[3] > 1:
            sparsify_layer(pair, 'conv', 'SRSTEMask', n, m, norm_name='bn')
            layers.append(pair)
            continue
        kwargs = dict(t_i=0, t_f=1000) if method == 'lbc' else {}
        learner = 'LBCMask' if method == 'lbc' else 'SRSTEMask'
        layers.append(SparseConv2d.from_dense(pair.conv, learner, n, m, **kwargs))
    return layers.to(device)


def naive_topk_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The obvious N:M mask: ``topk`` of ``|w|`` over rows of ``m`` (ties: whatever topk does)."""
    groups = to_groups(weight.detach().abs(), m)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    keep.scatter_(1, groups.topk(n, dim=1, sorted=False).indices, True)
    return from_groups(keep, weight.shape)


def _schedule_iterations(learner: LBCMask) -> Tuple[int, int, int]:
    """Three iterations of the removal schedule: the first at which it removes a subset, the
    first after it at which it removes none, and the one at which two subsets are left per
    group (the last removal follows)."""
    removal = learner.t_i
    while learner.survivors(removal) == learner.num_subsets:
        removal += 1
    between = removal + 1
    while learner.survivors(between) != learner.survivors(removal):
        between += 1
    two_left = removal
    while learner.survivors(two_left) > 2:
        two_left += 1
    return removal, between, two_left


@dataclass
class Workloads:
    """What :func:`measure` times for one architecture.

    Attributes:
        run: the timed callables, keys of :data:`WORK`.
        setup: untimed callables to run right before some of them.
        facts: layer and weight counts, the LBC iterations used.
        models: the sparse layers of each method (``'srste'``, ``'spre'``, ``'lbc'``).
    """

    run: Dict[str, Callable[[], None]]
    setup: Dict[str, Callable[[], None]]
    facts: Dict[str, object]
    models: Dict[str, nn.Module]


def make_workloads(arch: str, n: int, m: int, base_channels: int = 64, seed: int = 0,
                   device: str = 'cpu') -> Workloads:
    """The :class:`Workloads` of one architecture."""
    srste, spre, lbc = (build_layers(arch, method, n, m, base_channels, seed, device)
                        for method in ('srste', 'spre', 'lbc'))
    weights = [layer.weight.detach() for _, layer in sparse_layers(srste)]
    for model in (srste, spre, lbc):
        refresh_masks(model, 0)
    learners = [layer.sparsity for _, layer in sparse_layers(lbc)]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-like: distinct scores (equal ones would all tie)
        for learner in learners:
            learner.scores.copy_(torch.rand(learner.scores.shape, generator=gen))
    synchronize(device)
    removal, between, two_left = _schedule_iterations(learners[0])

    def snapshot():
        return [{k: v.clone() for k, v in learner.state_dict().items()} for learner in learners]

    start = snapshot()
    refresh_masks(lbc, two_left)  # the schedule's state before its last removal
    before_last = snapshot()
    iteration = [0]

    def clone():
        for weight in weights:
            weight.clone()

    def topk():
        for weight in weights:
            naive_topk_mask(weight, n, m)

    def refresh(model):
        def run():  # every learner recomputes its mask at each iteration (interval 1)
            iteration[0] += 1
            refresh_masks(model, iteration[0])
        return run

    def lbc_removal():
        refresh_masks(lbc, removal)

    def lbc_last_removal():  # at t_f: from two subsets per group to one, most masks change
        refresh_masks(lbc, learners[0].t_f)

    def lbc_reset(states=start):  # untimed: back to the state before the removal
        for learner, state in zip(learners, states):
            learner.load_state_dict(state)

    def lbc_between():
        refresh_masks(lbc, between)

    lbc_reset()
    run = dict(clone=clone, topk=topk, srste=refresh(srste), spre=refresh(spre),
               lbc_removal=lbc_removal, lbc_last_removal=lbc_last_removal,
               lbc_between=lbc_between)
    setup = dict(lbc_removal=lbc_reset, lbc_last_removal=lambda: lbc_reset(before_last),
                 lbc_between=lambda: (lbc_reset(), refresh_masks(lbc, removal)))
    facts = dict(arch=arch, n=n, m=m, base_channels=base_channels, layers=len(weights),
                 weights=sum(w.numel() for w in weights),
                 spatial_layers=sum(1 for layer in spre if isinstance(layer, _ConvNorm)),
                 lbc_iterations=(removal, between, two_left))
    return Workloads(run, setup, facts, dict(srste=srste, spre=spre, lbc=lbc))


def measure(arch: str, n: int = 2, m: int = 4, repeats: int = 5, base_channels: int = 64,
            seed: int = 0, device: str = 'cpu') -> Dict[str, object]:
    """Time :data:`WORK` for ``arch``; medians of times (ms) and of per-round ratios."""
    workloads = make_workloads(arch, n, m, base_channels, seed, device)
    times = time_interleaved(workloads.run, repeats, workloads.setup, device=device)
    result = dict(workloads.facts, device=str(device), threads=torch.get_num_threads(),
                  rounds=repeats, ms={}, vs_clone={}, vs_topk={}, times_ms={})
    for name, seconds in times.items():
        result['ms'][name] = statistics.median(seconds) * 1e3
        result['times_ms'][name] = [s * 1e3 for s in seconds]
        result['vs_clone'][name] = statistics.median(
            s / c for s, c in zip(seconds, times['clone']))
        result['vs_topk'][name] = statistics.median(
            s / t for s, t in zip(seconds, times['topk']))
    return result


def format_result(result: Dict[str, object]) -> str:
    """A Markdown table of one :func:`measure` result, with a one-line header."""
    lines = [f'{result["arch"].upper()} layer1-4: {result["layers"]} convs, '
             f'{result["weights"] / 1e6:.2f}M fp32 weights ({result["weights"] * 4 / 1e6:.1f} MB), '
             f'{result["spatial_layers"]} with S under SpRe; {result["n"]}:{result["m"]}, '
             f'{result["device"]}, {result["threads"]} threads, medians of {result["rounds"]} '
             'interleaved rounds',
             '', '| work | ms | / clone | / naive top-k |', '|---|---|---|---|']
    for name, label in WORK.items():
        lines.append(f'| {label} | {result["ms"][name]:.1f} | {result["vs_clone"][name]:.2f} | '
                     f'{result["vs_topk"][name]:.2f} |')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(prog='python tools/analysis_tools/mask_speed.py',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--arch', nargs='+', choices=list(ARCHS), default=['r18', 'r50'])
    parser.add_argument('--n', type=int, default=2)
    parser.add_argument('--m', type=int, default=4)
    parser.add_argument('--repeats', type=int, default=5, help='interleaved rounds')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--device', default='cpu', help="e.g. 'cuda'")
    parser.add_argument('--base-channels', type=int, default=64,
                        help='ResNet width (64 is the real one; smaller for a quick check)')
    parser.add_argument('--json', help='also write the results (all rounds) here')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for arch in args.arch:
        result = measure(arch, args.n, args.m, args.repeats, args.base_channels,
                         device=args.device)
        print(format_result(result) + '\n', flush=True)
        results.append(result)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(environment=collect_environment(args.device), results=results), f,
                      indent=1)
    return results


if __name__ == '__main__':
    main()
