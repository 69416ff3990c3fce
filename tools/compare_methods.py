"""Train every sparse method (and the dense baseline) on the toy set with one budget; tabulate.

For each method this script

1. trains its toy config through ``tools/train.py`` (one subprocess at a time, same seed, same
   number of epochs; the cosine schedule's end and LBC's ``t_i``/``t_f`` follow the budget),
2. evaluates with ``tools/test.py``: the re-parameterized deploy checkpoint on its deploy config
   for sparse methods (stock mmdet ResNet; for interspace, the basis form built by
   ``SparseResNet(sparsity.deploy=True)``), the last checkpoint for dense,
3. collects box/segm mAP, the median train-step time (mmengine's ``time`` in
   ``<work_dir>/<timestamp>/vis_data/scalars.json``, warm-up iterations skipped) and the peak
   RSS of the training process (``os.wait4`` rusage of that one child: ``ru_maxrss``), both
   also as a ratio to dense, and checks that every sparse layer of the deploy checkpoint is
   exactly N:M (``check_nm_tensor``; the 1x1 weight of an interspace layer in basis form) and
   counts the deploy model's parameters,

and writes ``compare.md``, ``compare.csv`` and ``compare.json`` into the work dir.

It is resumable: a method whose ``result.json`` exists (for the same budget) is reused, a
finished training is not repeated, an interrupted one continues with ``--resume``.

    python tools/make_toy_coco.py --out data/toy_coco
    python tools/compare_methods.py --epochs 2
"""
import argparse
import csv
import glob
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from fractions import Fraction

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # spre_mmdet from this checkout, as the other tools do

CONFIGS = {
    'dense': 'configs/mask_rcnn_r18_dense_toy.py',
    'asp': 'configs/toy/mask_rcnn_r18_asp_2x4_toy.py',
    'srste': 'configs/toy/mask_rcnn_r18_srste_2x4_toy.py',
    'lbc': 'configs/toy/mask_rcnn_r18_lbc_2x4_toy.py',
    'spre': 'configs/toy/mask_rcnn_r18_spre_2x4_toy.py',
    'spre_lbc': 'configs/toy/mask_rcnn_r18_spre_lbc_2x4_toy.py',
    'ip_srste': 'configs/toy/mask_rcnn_r18_ip_srste_2x4_toy.py',
}
LBC_METHODS = ('lbc', 'spre_lbc')
# The LBC toy configs remove subsets between iterations 100 and 600 of a 1200-iteration run
# (see their comments): start after 1/12 of the run, exactly N:M from half-way on.
LBC_T_I_FRACTION = Fraction(1, 12)
LBC_T_F_FRACTION = Fraction(1, 2)

COLUMNS = [
    ('method', 'method'),
    ('bbox_mAP', 'box mAP'),
    ('segm_mAP', 'mask mAP'),
    ('bbox_mAP_50', 'box mAP@50'),
    ('segm_mAP_50', 'mask mAP@50'),
    ('step_time_s', 'step time (s, median)'),
    ('step_time_ratio', 'step time / dense'),
    ('step_time_vs_srste', 'step time / SR-STE'),
    ('peak_rss_mb', 'peak RSS (MiB)'),
    ('peak_rss_ratio', 'peak RSS / dense'),
    ('deploy_nm', 'deploy 2:4 valid'),
    ('deploy_params', 'deploy params'),
    ('train_wall_min', 'train wall (min)'),
]


# --------------------------------------------------------------------------- log parsing
def timestamp_dirs(work_dir):
    """mmengine's per-run ``<timestamp>/`` directories in ``work_dir``, oldest first."""
    dirs = [d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d)
            and osp.isfile(osp.join(d, 'vis_data', 'scalars.json'))]
    return sorted(dirs, key=osp.basename)


def read_json_lines(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut off by a killed run
    return rows


def train_records(work_dir):
    """Training log records (with ``iter``) of every run in ``work_dir``; for iterations logged
    by more than one run (resumed training), the later run's record wins."""
    by_iter = {}
    for d in timestamp_dirs(work_dir):
        for row in read_json_lines(osp.join(d, 'vis_data', 'scalars.json')):
            if 'iter' in row and 'time' in row:
                by_iter[int(row['iter'])] = row
    return [by_iter[i] for i in sorted(by_iter)]


def step_time(records, skip_iters=50):
    """Median of the logged ``time`` (seconds per iteration, mean over the logging window)
    over records after the first ``skip_iters`` iterations (warm-up, mask initialization).
    Falls back to all records if none is left."""
    times = [r['time'] for r in records if r['iter'] > skip_iters]
    if not times:
        times = [r['time'] for r in records]
    return statistics.median(times) if times else None


def find_metrics(work_dir):
    """The last COCO metrics dict (``coco/bbox_mAP`` ...) written by mmengine under
    ``work_dir`` (test runs write them to ``<timestamp>/<timestamp>.json``), or None."""
    found = None
    for d in sorted(glob.glob(osp.join(work_dir, '*')), key=osp.basename):
        if not osp.isdir(d):
            continue
        candidates = [osp.join(d, osp.basename(d) + '.json'),
                      osp.join(d, 'vis_data', osp.basename(d) + '.json'),
                      osp.join(d, 'vis_data', 'scalars.json')]
        for path in candidates:
            if not osp.isfile(path):
                continue
            for row in read_json_lines(path):
                if 'coco/bbox_mAP' in row:
                    found = row
            if found is not None:
                break
    if found is None:
        return None
    return {k.split('/', 1)[1]: v for k, v in found.items() if k.startswith('coco/')}


# --------------------------------------------------------------------------- deploy checks
def deploy_check(state_dict, report_rows, n=2, m=4):
    """Check the layers that were sparse in training (``report_rows``: the work dir's
    ``sparsity_report.json``) in a deploy state dict. Returns ``(valid, checked, merged,
    problems)``. An interspace layer in basis form is checked on its 1x1 weight
    (``<name>.gemm.weight``); one exported merged (dense k x k) is counted in ``merged``."""
    from spre_mmdet.sparsity import check_nm_tensor
    valid = checked = merged = 0
    problems = []
    for row in report_rows:
        if row.get('kind', 'dense') == 'dense':
            continue
        basis_key = row['name'] + '.gemm.weight'
        if row['kind'].endswith('+ip') and basis_key not in state_dict:
            merged += 1
            continue
        key = basis_key if basis_key in state_dict else row['name'] + '.weight'
        checked += 1
        if key not in state_dict:
            problems.append(f'{key}: missing from the deploy checkpoint')
            continue
        result = check_nm_tensor(state_dict[key], n, m)
        if result.ok:
            valid += 1
        else:
            problems.append(f'{key}: {result.explain()}')
    return valid, checked, merged, problems


def count_params(state_dict):
    """Parameters of a detector state dict (BN running statistics and counters excluded)."""
    skip = ('running_mean', 'running_var', 'num_batches_tracked')
    return sum(v.numel() for k, v in state_dict.items()
               if hasattr(v, 'numel') and not k.endswith(skip))


def load_state_dict(path):
    import torch
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    return ckpt.get('state_dict', ckpt)


# --------------------------------------------------------------------------- table
def fmt(value, key):
    if value is None:
        return '-'
    if isinstance(value, float):
        if key.endswith('ratio'):
            return f'{value:.2f}'
        if 'mAP' in key:
            return f'{value:.3f}'
        if key == 'peak_rss_mb':
            return f'{value:.0f}'
        return f'{value:.3f}' if value < 10 else f'{value:.1f}'
    return str(value)


def add_ratios(rows):
    """Fill ``step_time_ratio`` and ``peak_rss_ratio`` relative to the ``dense`` row and
    ``step_time_vs_srste`` relative to the ``srste`` row."""
    dense = next((r for r in rows if r['method'] == 'dense'), None)
    for row in rows:
        for key, ratio in (('step_time_s', 'step_time_ratio'), ('peak_rss_mb', 'peak_rss_ratio')):
            base = dense.get(key) if dense else None
            row[ratio] = (row[key] / base) if (base and row.get(key) is not None) else None
    srste = next((r.get('step_time_s') for r in rows if r['method'] == 'srste'), None)
    for row in rows:
        step = row.get('step_time_s')
        row['step_time_vs_srste'] = step / srste if (srste and step is not None) else None
    return rows


def markdown_table(rows):
    lines = ['| ' + ' | '.join(title for _, title in COLUMNS) + ' |',
             '|' + '|'.join('---' for _ in COLUMNS) + '|']
    for row in rows:
        lines.append('| ' + ' | '.join(fmt(row.get(k), k) for k, _ in COLUMNS) + ' |')
    return '\n'.join(lines)


def write_tables(rows, out_dir, meta=None):
    """Write ``compare.md``/``.csv``/``.json`` into ``out_dir``; returns the markdown table."""
    rows = add_ratios([dict(r) for r in rows])
    os.makedirs(out_dir, exist_ok=True)
    table = markdown_table(rows)
    with open(osp.join(out_dir, 'compare.md'), 'w') as f:
        if meta:
            f.write(' '.join(f'{k}={v}' for k, v in meta.items()) + '\n\n')
        f.write(table + '\n')
    with open(osp.join(out_dir, 'compare.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=[k for k, _ in COLUMNS], extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k, _ in COLUMNS})
    with open(osp.join(out_dir, 'compare.json'), 'w') as f:
        json.dump(dict(meta=meta or {}, rows=rows), f, indent=1)
    return table


# --------------------------------------------------------------------------- running
def iters_per_epoch(data_root, batch_size=4):
    """Training iterations per epoch: images with at least one annotation / batch size."""
    with open(osp.join(data_root, 'annotations', 'instances_train.json')) as f:
        ann = json.load(f)
    images = {a['image_id'] for a in ann['annotations']}
    return math.ceil(len(images) / batch_size)


def budget_options(method, epochs, total_iters, data_root, seed):
    """``--cfg-options`` that give every method the same budget and data."""
    root = data_root.rstrip('/') + '/'
    opts = [
        f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}',
        f'param_scheduler.0.end={warmup_iters(total_iters)}',
        f'param_scheduler.1.end={epochs}', f'param_scheduler.1.T_max={epochs}',
        f'randomness.seed={seed}',
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        f'val_evaluator.ann_file={root}annotations/instances_val.json',
        f'test_evaluator.ann_file={root}annotations/instances_val.json',
    ]
    if method in LBC_METHODS:
        opts.append('model.backbone.sparsity.learner.span='
                    f'({float(LBC_T_I_FRACTION)},{float(LBC_T_F_FRACTION)})')
    return opts


def warmup_iters(total_iters):
    """Linear warm-up length: 1/6 of the run (the toy configs: 100 of 600 iterations)."""
    return max(1, int(round(total_iters / 6)))


def lbc_schedule(total_iters):
    t_i = int(round(total_iters * LBC_T_I_FRACTION))
    t_f = max(t_i + 1, min(total_iters, int(round(total_iters * LBC_T_F_FRACTION))))
    return t_i, t_f


def run_child(cmd, log_path, progress=None, poll=5.0):
    """Run ``cmd`` (output to ``log_path``); returns ``(returncode, peak_rss_mb, wall_s)``.
    The peak RSS is that child's own ``ru_maxrss`` (``os.wait4``; KiB on Linux)."""
    start = time.time()
    with open(log_path, 'a') as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if progress:
                    progress(time.time() - start)
                time.sleep(poll)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kib = usage.ru_maxrss * (1 / 1024 if sys.platform == 'darwin' else 1)
    return proc.returncode, rss_kib / 1024, time.time() - start


def tail(path, lines=30):
    try:
        with open(path) as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


def run_method(method, args, total_iters):
    work = osp.join(args.work_dir, method)
    os.makedirs(work, exist_ok=True)
    budget = dict(epochs=args.epochs, seed=args.seed, total_iters=total_iters,
                  data_root=args.data_root)
    result_path = osp.join(work, 'result.json')
    if osp.isfile(result_path):
        with open(result_path) as f:
            result = json.load(f)
        if result.get('budget') == budget:
            print(f'[{method}] done earlier, reusing {result_path}', flush=True)
            return result
        raise SystemExit(f'{work} holds a run with another budget ({result.get("budget")}); '
                         'use another --work-dir or delete it.')

    config = CONFIGS[method]
    sparse = method != 'dense'
    train_done = osp.join(work, 'train_done.json')
    if not osp.isfile(train_done):
        cmd = [sys.executable, 'tools/train.py', config, '--work-dir', work, '--cfg-options',
               *budget_options(method, args.epochs, total_iters, args.data_root, args.seed)]
        if osp.isfile(osp.join(work, 'last_checkpoint')):
            cmd.insert(cmd.index('--work-dir'), '--resume')
        print(f'[{method}] training {total_iters} iterations: {" ".join(cmd[1:])}', flush=True)
        last = [None]

        def progress(elapsed):
            records = train_records(work)
            it = records[-1]['iter'] if records else 0
            if it != last[0]:
                last[0] = it
                print(f'[{method}]   iter {it}/{total_iters}  {elapsed / 60:.1f} min',
                      flush=True)

        code, rss, wall = run_child(cmd, osp.join(work, 'train_stdout.log'), progress)
        if code != 0:
            raise SystemExit(f'[{method}] training failed (exit {code}):\n'
                             + tail(osp.join(work, 'train_stdout.log')))
        with open(train_done, 'w') as f:
            json.dump(dict(peak_rss_mb=rss, wall_s=wall, resumed='--resume' in cmd), f)
    with open(train_done) as f:
        train_info = json.load(f)

    if sparse:
        test_cfg = osp.join(work, 'deploy', 'deploy_config.py')
        ckpt = osp.join(work, 'deploy', 'deploy.pth')
    else:
        test_cfg = config
        ckpt = osp.join(work, f'epoch_{args.epochs}.pth')
    test_dir = osp.join(work, 'test')
    metrics = find_metrics(test_dir) if osp.isdir(test_dir) else None
    if metrics is None:
        root = args.data_root.rstrip('/') + '/'
        cmd = [sys.executable, 'tools/test.py', test_cfg, ckpt, '--work-dir', test_dir,
               '--cfg-options', f'test_dataloader.dataset.data_root={root}',
               f'test_evaluator.ann_file={root}annotations/instances_val.json']
        print(f'[{method}] testing {"deploy checkpoint" if sparse else "checkpoint"} {ckpt}',
              flush=True)
        os.makedirs(test_dir, exist_ok=True)
        code, _, _ = run_child(cmd, osp.join(test_dir, 'test_stdout.log'))
        metrics = find_metrics(test_dir)
        if code != 0 or metrics is None:
            raise SystemExit(f'[{method}] test failed (exit {code}):\n'
                             + tail(osp.join(test_dir, 'test_stdout.log')))

    state = load_state_dict(ckpt)
    result = dict(method=method, config=config, budget=budget,
                  bbox_mAP=metrics.get('bbox_mAP'), segm_mAP=metrics.get('segm_mAP'),
                  bbox_mAP_50=metrics.get('bbox_mAP_50'), segm_mAP_50=metrics.get('segm_mAP_50'),
                  step_time_s=step_time(train_records(work), args.skip_iters),
                  peak_rss_mb=train_info['peak_rss_mb'],
                  train_wall_min=train_info['wall_s'] / 60,
                  resumed=train_info.get('resumed', False),
                  deploy_params=count_params(state))
    if sparse:
        with open(osp.join(work, 'sparsity_report.json')) as f:
            report = json.load(f)
        valid, checked, merged, problems = deploy_check(state, report)
        text = f'{valid}/{checked}'
        if merged:
            text += f' (+{merged} merged dense)'
        result.update(deploy_nm=text, deploy_nm_ok=(valid == checked and not problems),
                      deploy_problems=problems)
    else:
        result.update(deploy_nm='dense', deploy_nm_ok=None)
    with open(result_path, 'w') as f:
        json.dump(result, f, indent=1)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--methods', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument('--epochs', type=int, default=6,
                        help='training epochs for every method (default: the configs\' 6)')
    parser.add_argument('--work-dir', default='work_dirs/compare')
    parser.add_argument('--data-root', default='data/toy_coco')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--skip-iters', type=int, default=50,
                        help='warm-up iterations left out of the step time')
    parser.add_argument('--table-only', action='store_true',
                        help='only rebuild the table from finished methods')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cwd = os.getcwd()
    os.chdir(ROOT)  # the configs' relative paths (data/, configs/) are relative to the repo
    try:
        run(args)
    finally:
        os.chdir(cwd)


def run(args):
    if not osp.isfile(osp.join(args.data_root, 'annotations', 'instances_train.json')):
        raise SystemExit(f'No toy dataset at {args.data_root}: generate it with '
                         f'python tools/make_toy_coco.py --out {args.data_root}')
    total_iters = args.epochs * iters_per_epoch(args.data_root)
    rows = []
    for i, method in enumerate(args.methods):
        if args.table_only:
            path = osp.join(args.work_dir, method, 'result.json')
            if osp.isfile(path):
                with open(path) as f:
                    rows.append(json.load(f))
            continue
        print(f'=== [{i + 1}/{len(args.methods)}] {method}', flush=True)
        rows.append(run_method(method, args, total_iters))
        write_tables(rows, args.work_dir)  # partial table after every method
    meta = dict(epochs=args.epochs, iters=total_iters, seed=args.seed,
                data_root=args.data_root)
    if any(method in LBC_METHODS for method in args.methods):
        meta['lbc_t_i,t_f'] = '%d,%d' % lbc_schedule(total_iters)
    table = write_tables(rows, args.work_dir, meta)
    print(table)
    print(f'written: {osp.join(args.work_dir, "compare.{md,csv,json}")}')


if __name__ == '__main__':
    main()
