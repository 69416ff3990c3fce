"""Fingerprint the first iterations of a training run, or compare two such traces, to find
where two environments diverge.

    python tools/analysis_tools/trace_run.py CONFIG --iters 10 --out trace.json [--cfg-options ...]
    python tools/analysis_tools/trace_run.py --compare A.json B.json

Builds the runner exactly as tools/train.py does, trains ``--iters`` iterations and stops
(no checkpoint, no validation). Records, per iteration: a SHA-256 of the batch as the model
sees it (image tensors, boxes, labels, masks), every loss with full float precision, the
gradient norm, and a SHA-256 of all parameters and buffers after the step; plus a digest of the
initial weights and of the decoded dataset images. Two traces from the same config compare
line by line (``--compare A.json B.json``): the first differing entry is the first point of
divergence (data, initial weights, forward/backward numerics, ...). For the first iteration the
output of every module's forward is fingerprinted too, in call order, which names the first
layer whose numerics differ. The trace also holds the environment it was taken in
(:func:`spre_mmdet.environment.collect_environment`).
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import sys
import tempfile

import spre_mmdet  # noqa: F401  (applies spre_mmdet.compat)
from spre_mmdet.environment import collect_environment


class _Stop(Exception):
    pass


def _sha(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(a.contiguous().cpu().numpy() if hasattr(a, 'cpu') else a).cast('B'))
    return h.hexdigest()[:16]


def _state_digest(model):
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(memoryview(t.detach().contiguous().cpu().numpy()).cast('B'))
    return h.hexdigest()[:16]


def _tensors(x):
    import torch
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for k in sorted(x, key=str):
            yield from _tensors(x[k])
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def _module_hooks(model, calls):
    """Forward hooks recording (module name, digest of its tensor outputs) in call order."""
    handles = []
    for name, module in model.named_modules():
        def hook(mod, args, output, name=name):
            ts = [t.detach() for t in _tensors(output)]
            if ts:
                calls.append((name or '<model>', _sha(*ts)))
        handles.append(module.register_forward_hook(hook))
    return handles


def _batch_digest(data_batch):
    inputs = data_batch['inputs']
    parts = [_sha(x) for x in inputs]
    for s in data_batch['data_samples']:
        gt = s.gt_instances
        parts.append(_sha(gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes,
                          gt.labels))
        if 'masks' in gt:
            masks = gt.masks
            parts.append(_sha(masks.masks if hasattr(masks, 'masks') else masks.to_ndarray()))
        parts.append(str(s.metainfo.get('flip')))
    return hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]


def _dataset_image_digest(runner):
    """SHA-256 over the decoded (not the encoded) images of the train and val sets."""
    import mmcv
    out = {}
    for key in ('train_dataloader', 'val_dataloader'):
        ds_cfg = runner.cfg[key]['dataset']
        img_dir = osp.join(ds_cfg['data_root'], ds_cfg['data_prefix']['img'])
        h = hashlib.sha256()
        for name in sorted(os.listdir(img_dir)):
            img = mmcv.imread(osp.join(img_dir, name))
            h.update(name.encode())
            h.update(memoryview(img).cast('B'))
        out[key] = h.hexdigest()[:16]
    return out


def trace(args):
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or tempfile.mkdtemp(prefix='trace_run_')
    cfg.launcher = 'none'
    # keep only the sparsity hook (the reparameterize hook runs after training, never reached)
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] != 'ReparameterizeHook']
    runner = Runner.from_cfg(cfg)
    record = dict(config=args.config, iters=args.iters, environment=collect_environment(),
                  steps=[])
    record['decoded_images'] = _dataset_image_digest(runner)

    class TraceHook(Hook):
        priority = 'LOWEST'

        def before_train(self, runner):
            record['initial_state'] = _state_digest(runner.model)

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self._batch = _batch_digest(data_batch)
            if runner.iter == 0:
                record['first_iter_modules'] = []
                self._handles = _module_hooks(runner.model, record['first_iter_modules'])

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            for handle in getattr(self, '_handles', []):
                handle.remove()
            self._handles = []
            step = dict(iter=runner.iter + 1, batch=self._batch,
                        losses={k: float(v) for k, v in sorted(outputs.items())},
                        state=_state_digest(runner.model))
            record['steps'].append(step)
            print(json.dumps(step), flush=True)
            if runner.iter + 1 >= args.iters:
                raise _Stop

    runner.register_hook(TraceHook(), priority='LOWEST')
    try:
        runner.train()
    except _Stop:
        pass
    with open(args.out, 'w') as f:
        json.dump(record, f, indent=1)
    print(f'trace written to {args.out}')


def compare(a_path, b_path):
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    for key in ('decoded_images', 'initial_state'):
        same = a.get(key) == b.get(key)
        print(f'{key:<16} {"same" if same else "DIFFERENT"}  {a.get(key)}  {b.get(key)}')
    ma, mb = a.get('first_iter_modules', []), b.get('first_iter_modules', [])
    for i, (x, y) in enumerate(zip(ma, mb)):
        if x != y:
            print(f'iter 1 forward: first differing module output #{i} of {len(ma)}: {x[0]}'
                  + ('' if x[0] == y[0] else f' / {y[0]} (call order differs)'))
            after = zip(ma[i + 1:i + 9], mb[i + 1:i + 9])
            print('    then: ' + ', '.join(n for (n, d), (_, e) in after if d != e))
            break
    else:
        if ma and mb:
            print(f'iter 1 forward: all {len(ma)} module outputs identical')
    for sa, sb in zip(a['steps'], b['steps']):
        diffs = [k for k in ('batch', 'state') if sa[k] != sb[k]]
        loss_diff = {k: (sa['losses'][k], sb['losses'].get(k)) for k in sa['losses']
                     if sa['losses'][k] != sb['losses'].get(k)}
        if diffs or loss_diff:
            print(f'iter {sa["iter"]}: differs in {diffs + sorted(loss_diff)}')
            for k, (x, y) in sorted(loss_diff.items()):
                print(f'    {k:<16} {x!r:<24} {y!r:<24} rel {abs(x - y) / max(abs(x), 1e-30):.1e}')
            return 1
    print(f'identical over {min(len(a["steps"]), len(b["steps"]))} iterations')
    return 0


def main(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', nargs='?')
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--out', default='trace.json')
    p.add_argument('--work-dir', default=None)
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--compare', nargs=2, metavar=('A', 'B'), help='compare two traces')
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.config:
        p.error('CONFIG is required unless --compare is given')
    trace(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
