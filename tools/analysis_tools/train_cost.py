"""Training-step cost and deployed inference cost of dense vs SR-STE vs SpRe (vs LBC, IP).

Same detector, same fixed synthetic batch, same optimizer for every variant:

* **step time**: forward + backward + optimizer step (``model.train_step``) plus, for sparse
  variants, the SparsityHook's mask refresh ``refresh_masks(model, it + 1)``. All variants live
  in one process and are timed interleaved (round-robin, one step each per round); the median
  per variant is reported, so machine noise hits every variant alike. With ``--backbone-only``
  the step is the backbone and neck alone (a synthetic loss on the FPN outputs): the RoI heads'
  work depends on each variant's proposals, which makes whole-detector step ratios noisy.
* **training FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward
  (what the graph executes: SpRe's doubled-width 3x3 convs included; mmcv's RoIAlign/NMS are
  not counted), for the whole detector and for the backbone alone.
* **peak memory**: peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of a fresh
  subprocess per variant that builds the model and runs a few training steps; the RSS after
  building (before the first step) is reported too. CPU only: this is host memory, not CUDA.
* **deploy**: ``reparameterize`` of each sparse variant (after its timed steps) versus the dense
  model: state-dict keys/shapes and parameter count, and ``predict`` time (interleaved, median).

    python tools/analysis_tools/train_cost.py --arch r50 --img-size 512 --batch 2
    python tools/analysis_tools/train_cost.py --arch r18 --img-size 128 --batch 4  # the toy model

``--json OUT`` writes everything measured, with the environment it was measured in
(:func:`spre_mmdet.environment.collect_environment`). The configs are this checkout's (found
relative to this script, from any working directory).
"""
import argparse
import copy
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from spre_mmdet.benchmark.detector import load_config, load_detector
from spre_mmdet.benchmark.timing import time_interleaved
from spre_mmdet.environment import collect_environment, summary_line

#: the checkout this script is part of: the configs below are relative to it
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

CONFIGS = {
    'r50': {
        'dense': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
        'srste': 'configs/mask_rcnn_r50_srste_2x4.py',
        'spre': 'configs/mask_rcnn_r50_spre_2x4.py',
        'lbc': 'configs/mask_rcnn_r50_lbc_2x4.py',
        'spre_lbc': 'configs/mask_rcnn_r50_spre_lbc_2x4.py',
        'ip_srste': 'configs/mask_rcnn_r50_ip_srste_2x4.py',
    },
    'r18': {
        'dense': 'configs/mask_rcnn_r18_dense_toy.py',
        'srste': 'configs/toy/mask_rcnn_r18_srste_2x4_toy.py',
        'spre': 'configs/toy/mask_rcnn_r18_spre_2x4_toy.py',
        'lbc': 'configs/toy/mask_rcnn_r18_lbc_2x4_toy.py',
        'spre_lbc': 'configs/toy/mask_rcnn_r18_spre_lbc_2x4_toy.py',
        'ip_srste': 'configs/toy/mask_rcnn_r18_ip_srste_2x4_toy.py',
    },
}


# --------------------------------------------------------------------------- model + batch
def model_config(arch, variant, interval=None, equal_head_work=False):
    """The config of ``variant``'s detector, changed for this benchmark: no pretrained weights.
    For R-50 every variant gets the sparse configs' backbone settings (``frozen_stages=0``,
    ``norm_eval=True``) so that only the sparsity differs. Sparse masks are refreshed every
    ``interval`` iterations (default: the config's: 1); LBC gets
    ``t_i=0, t_f=1000`` so that it is removing subsets during the timed steps.
    ``equal_head_work``: only the ground-truth boxes (always added as proposals) are RoI
    positives, and RoIAlign takes a fixed 2x2 samples per bin, so every variant's RoI heads do
    the same work whatever its proposals. Otherwise the randomly initialized RPN gives each
    variant different positives and differently sized RoIs (mmdet's ``sampling_ratio=0`` samples
    in proportion to the RoI's size), and RoIAlign's share of the step differs between variants
    (measured on R-50: RoIAlign forward + backward 2.0 s in one variant's step, 3.2 s in
    another's)."""
    path = CONFIGS[arch][variant]
    cfg = load_config(path if '::' in path else osp.join(ROOT, path))
    backbone = cfg.model.backbone
    backbone.init_cfg = None
    if arch == 'r50':
        backbone.frozen_stages = 0
        backbone.norm_eval = True
    if 'sparsity' in backbone:
        learner = backbone.sparsity.learner
        if learner.get('type') in ('lbc', 'LBCMask'):
            learner.pop('span', None)
            learner.t_i, learner.t_f = 0, 1000  # mid-removal during the timed steps
        elif interval is not None and 'interval' in learner:
            learner.interval = interval
        if interval is not None and backbone.sparsity.get('spre'):
            backbone.sparsity.spre.spatial_interval = interval
    if equal_head_work:
        cfg.model.train_cfg.rcnn.assigner.update(pos_iou_thr=1.0, min_pos_iou=1.0,
                                                 match_low_quality=False)
        for extractor in ('bbox_roi_extractor', 'mask_roi_extractor'):
            if extractor in cfg.model.roi_head:
                cfg.model.roi_head[extractor].roi_layer.sampling_ratio = 2
    return cfg


def build_model(arch, variant, interval=None, equal_head_work=False):
    """The detector of :func:`model_config`, seeded random init, in train mode."""
    from mmengine.logging import MMLogger
    MMLogger.get_instance('train_cost', log_level='WARNING')  # no init_weights log
    cfg = model_config(arch, variant, interval, equal_head_work)
    torch.manual_seed(0)
    model = load_detector(cfg, None)
    model.init_weights()
    model.train()
    return model


def make_batch(batch, size, num_objects=4, seed=0):
    """A fixed synthetic batch in mmdet's packed format: random images, boxes, masks."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8))
        xy = torch.rand(num_objects, 2, generator=g) * size * 0.6
        wh = (0.1 + torch.rand(num_objects, 2, generator=g) * 0.3) * size
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        masks = torch.zeros(num_objects, size, size, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        inst = InstanceData()
        inst.bboxes = boxes
        inst.labels = torch.randint(0, 6, (num_objects,), generator=g)
        inst.masks = BitmapMasks(masks.numpy(), size, size)
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             pad_shape=(size, size), scale_factor=(1.0, 1.0),
                                             batch_input_shape=(size, size)))
        sample.gt_instances = inst
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def optim_wrapper(model):
    from mmengine.optim import OptimWrapper
    params = [p for p in model.parameters() if p.requires_grad]
    return OptimWrapper(torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4))


class Trainer:
    """One variant: model, optimizer, iteration counter; ``step()`` is one training iteration
    including the mask refresh the SparsityHook does after it."""

    def __init__(self, arch, variant, batch, interval=None, equal_head_work=False,
                 backbone_only=False):
        from spre_mmdet.sparsity import refresh_masks, sparse_layers
        self.variant = variant
        self.model = build_model(arch, variant, interval, equal_head_work)
        self.backbone_only = backbone_only
        self.images = self.model.data_preprocessor(copy.copy(batch), True)['inputs']
        self.refresh_s = []
        self.sparse = any(True for _ in sparse_layers(self.model))
        self.refresh = refresh_masks
        self.optim = optim_wrapper(self.model)
        self.batch = batch
        self.it = 0
        if self.sparse:
            refresh_masks(self.model, 0)  # SparsityHook.before_train

    def step(self):
        if self.backbone_only:  # what the sparse methods change; no data-dependent head work
            features = self.model.extract_feat(self.images)
            self.optim.update_params(sum(f.float().square().mean() for f in features))
        else:
            self.model.train_step(copy.copy(self.batch), self.optim)
        if self.sparse:
            t0 = time.perf_counter()
            self.refresh(self.model, self.it + 1)
            self.refresh_s.append(time.perf_counter() - t0)
        self.it += 1


# --------------------------------------------------------------------------- measurements
def train_flops(trainer):
    """(detector, backbone) FLOPs of one forward + backward (no optimizer step)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = trainer.model
    data = model.data_preprocessor(copy.copy(trainer.batch), True)
    counter = FlopCounterMode(display=False)
    with counter:
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()
    model.zero_grad(set_to_none=True)
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    backbone = [sum(ops.values()) for name, ops in counts.items() if name.endswith('.backbone')]
    return total, (backbone[0] if backbone else None)


def state_signature(model):
    return sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def peak_rss_mb():
    """This process's peak RSS in MiB: ``VmHWM`` of ``/proc/self/status`` on Linux (per
    address space; ``ru_maxrss`` would keep the parent's high-water mark across fork+exec),
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` elsewhere."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / (1024 * 1024 if sys.platform == 'darwin' else 1024)


def memory_child(args):
    """Runs in a fresh process: build one variant, train ``--mem-steps`` steps, print JSON."""
    torch.set_num_threads(args.threads)
    batch = make_batch(args.batch, args.img_size)
    trainer = Trainer(args.arch, args.memory_child, batch, args.interval, args.equal_head_work)
    built = peak_rss_mb()
    for _ in range(args.mem_steps):
        trainer.step()
    peak = peak_rss_mb()
    print('MEMORY ' + json.dumps(dict(variant=args.memory_child, rss_built_mb=built,
                                      peak_rss_mb=peak)))


def memory_command(args, variant) -> List[str]:
    """The command of the fresh process measuring ``variant``'s memory (this script)."""
    cmd = [sys.executable, osp.abspath(__file__), '--arch', args.arch,
           '--img-size', str(args.img_size), '--batch', str(args.batch),
           '--threads', str(args.threads), '--mem-steps', str(args.mem_steps),
           '--memory-child', variant]
    if args.interval is not None:
        cmd += ['--interval', str(args.interval)]
    if args.equal_head_work:
        cmd.append('--equal-head-work')
    return cmd


def measure_memory(args, variants):
    out = {}
    for variant in variants:
        proc = subprocess.run(memory_command(args, variant), capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith('MEMORY ')]
        if proc.returncode != 0 or not line:
            raise RuntimeError(f'memory run of {variant} failed:\n{proc.stderr[-3000:]}')
        out[variant] = json.loads(line[-1][len('MEMORY '):])
        print(f'  {variant:9s} peak RSS {out[variant]["peak_rss_mb"]:.0f} MiB '
              f'(after build {out[variant]["rss_built_mb"]:.0f} MiB)', flush=True)
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


#: the ``a/b`` ratios reported, where both variants ran
PAIRS = (('spre', 'srste'), ('srste', 'dense'), ('spre', 'dense'), ('lbc', 'dense'),
         ('ip_srste', 'dense'), ('spre', 'lbc'))


def pair_ratios(res: Dict[str, dict], pairs: Sequence = PAIRS) -> Dict[str, dict]:
    """``{'a/b': ratios}`` of two variants' results: of the medians (step time, FLOPs, peak
    RSS) and ``step_paired``, the median of the per-round step-time ratios (the two steps of one
    round ran back to back: their ratio cancels slow load drift)."""
    out = {}
    for a, b in pairs:
        if a in res and b in res:
            rr = {k: ratio(res[a].get(k), res[b].get(k))
                  for k in ('step_s', 'train_gflops', 'backbone_train_gflops', 'peak_rss_mb')}
            rr['step_paired'] = statistics.median(
                x / y for x, y in zip(res[a]['step_s_all'], res[b]['step_s_all']))
            out[f'{a}/{b}'] = rr
    return out


def _count(least: int):
    """An argparse type: a whole number >= ``least`` (checked before any work starts)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f'must be >= {least}, got {value}')
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python tools/analysis_tools/train_cost.py',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--arch', choices=list(CONFIGS), default='r50')
    parser.add_argument('--variants', nargs='+', default=['dense', 'srste', 'spre', 'lbc',
                                                         'spre_lbc', 'ip_srste'])
    parser.add_argument('--img-size', type=int, default=512)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--rounds', type=_count(1), default=5, help='timed steps per variant')
    parser.add_argument('--warmup', type=_count(0), default=2)
    parser.add_argument('--infer-rounds', type=_count(0), default=5,
                        help='timed predictions of each deployed model (0: none)')
    parser.add_argument('--mem-steps', type=_count(1), default=3)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--interval', type=int, default=None,
                        help='mask refresh interval (default: the config\'s)')
    parser.add_argument('--equal-head-work', action='store_true',
                        help='only ground-truth boxes are RoI positives (same head work in '
                             'every variant: step ratios then compare the backbones)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='time backbone + neck steps only (forward, a synthetic loss, '
                             'backward, optimizer step, mask refresh): the part the sparse '
                             'methods change, without the RoI heads, whose work depends on '
                             'each variant\'s proposals')
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--memory-child', help=argparse.SUPPRESS)
    return parser


def measure(args) -> dict:
    """Everything measured for ``args`` (see the module docstring), without the ratios."""
    from spre_mmdet.sparsity import reparameterize
    batch = make_batch(args.batch, args.img_size)
    trainers = {v: Trainer(args.arch, v, batch, args.interval, args.equal_head_work,
                           args.backbone_only)
                for v in args.variants}
    result = dict(arch=args.arch, img_size=args.img_size, batch=args.batch,
                  threads=torch.get_num_threads(), rounds=args.rounds,
                  backbone_only=args.backbone_only, variants={})

    print('FLOPs (forward + backward, FlopCounterMode) ...', flush=True)
    for v, t in trainers.items():
        total, backbone = train_flops(t)
        result['variants'][v] = dict(train_gflops=total / 1e9, backbone_train_gflops=backbone / 1e9,
                                     params=param_count(t.model))

    print(f'step time: {args.warmup} warm-up + {args.rounds} interleaved steps each ...',
          flush=True)
    times = time_interleaved({v: t.step for v, t in trainers.items()}, args.rounds,
                             warmup=args.warmup)
    for v, ts in times.items():
        t = trainers[v]
        result['variants'][v].update(
            step_s=statistics.median(ts), step_s_all=ts,
            refresh_s=statistics.median(t.refresh_s[-len(ts):]) if t.refresh_s else 0.0)

    print('deploy: reparameterize + predict time ...', flush=True)
    dense = trainers.get('dense')
    infer = {}
    if dense is not None:
        dense.model.eval()
        infer['dense'] = dense.model
    for v, t in trainers.items():
        if v == 'dense':
            continue
        t.model.eval()
        try:
            # interspace convs as dense k x k convs (the stock-mmdet deploy form)
            deployed = reparameterize(t.model, interspace_form='merged').eval()
        except Exception as e:  # LBC before t_f is not final: say so
            result['variants'][v]['deploy'] = f'not deployable here: {type(e).__name__}'
            continue
        info = dict(params=param_count(deployed))
        if dense is not None:
            info['same_architecture_as_dense'] = \
                state_signature(deployed) == state_signature(dense.model)
            info['params_equal_dense'] = info['params'] == param_count(dense.model)
        result['variants'][v]['deploy'] = info
        infer[f'{v}_deploy'] = deployed
    if infer and args.infer_rounds:
        any_model = next(iter(infer.values()))
        data = any_model.data_preprocessor(copy.copy(batch), False)

        def predictor(model):
            def run():
                with torch.no_grad():
                    model(**data, mode='predict')
            return run
        itimes = time_interleaved({k: predictor(m) for k, m in infer.items()},
                                  args.infer_rounds, warmup=1)
        result['inference_s'] = {k: statistics.median(ts) for k, ts in itimes.items()}

    if not args.no_memory:
        print(f'peak RSS: fresh process per variant, {args.mem_steps} steps ...', flush=True)
        for v, mem in measure_memory(args, args.variants).items():
            result['variants'][v].update(mem)
    return result


def format_report(result: dict, infer_rounds: int) -> str:
    """The Markdown table of the variants, the pair ratios and the deploy times."""
    res = result['variants']
    d = res.get('dense', {})
    step = 'backbone + neck step' if result.get('backbone_only') else 'step'
    lines = [f'\n| variant | {step} (s, median of {result["rounds"]}) | of which mask refresh (s) '
             '| step / dense | train GFLOPs '
             '| / dense | backbone GFLOPs | / dense | peak RSS (MiB) | / dense | params |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for v, r in res.items():
        lines.append(
            f'| {v} | {r["step_s"]:.2f} | {r["refresh_s"]:.3f} | '
            f'{ratio(r["step_s"], d.get("step_s")) or 0:.2f} | '
            f'{r["train_gflops"]:.0f} | {ratio(r["train_gflops"], d.get("train_gflops")) or 0:.2f}'
            f' | {r["backbone_train_gflops"]:.0f} | '
            f'{ratio(r["backbone_train_gflops"], d.get("backbone_train_gflops")) or 0:.2f} | '
            f'{r.get("peak_rss_mb", 0):.0f} | '
            f'{ratio(r.get("peak_rss_mb"), d.get("peak_rss_mb")) or 0:.2f}'
            f' | {r["params"] / 1e6:.2f}M |')
    lines.append('')
    for name, rr in result['ratios'].items():
        lines.append(f'{name}: step {rr["step_s"]:.2f} (median of per-round ratios '
                     f'{rr["step_paired"]:.2f}), train FLOPs {rr["train_gflops"]:.2f}, '
                     f'backbone FLOPs {rr["backbone_train_gflops"]:.2f}'
                     + (f', peak RSS {rr["peak_rss_mb"]:.2f}' if rr['peak_rss_mb'] else ''))
    if 'inference_s' in result:
        lines.append('\ndeploy (predict, median of %d):' % infer_rounds)
        base = result['inference_s'].get('dense')
        for k, s in result['inference_s'].items():
            extra = res.get(k.replace('_deploy', ''), {}).get('deploy', {})
            lines.append(f'  {k:16s} {s:.3f} s  ratio to dense {ratio(s, base) or 0:.2f}  '
                         + (json.dumps(extra) if isinstance(extra, dict) and extra else ''))
    for v, r in res.items():
        if isinstance(r.get('deploy'), str):
            lines.append(f'  {v}: {r["deploy"]}')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    args = build_parser().parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    torch.set_num_threads(args.threads)
    environment = collect_environment('cpu')
    print(f'Mask R-CNN {args.arch.upper()}-FPN, batch {args.batch} x {args.img_size}^2; '
          f'{summary_line(environment)}', flush=True)
    result = measure(args)
    result['environment'] = environment
    result['ratios'] = pair_ratios(result['variants'])
    print(format_report(result, args.infer_rounds))
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
        print(f'written: {args.json}')
    return result


if __name__ == '__main__':
    main()
