"""The whole story on the embedded synthetic COCO set, on CPU in minutes.

    python tools/demo.py [--work-dir work_dirs/demo] [--epochs N]

1. generate the synthetic COCO set (data/toy_coco) if it is not there;
2. train SpRe 2:4 Mask R-CNN R-18 (configs/toy/mask_rcnn_r18_spre_2x4_toy.py) with
   tools/train.py; the ReparameterizeHook writes the plain 2:4 deploy model at the end;
3. evaluate the deploy checkpoint (COCO bbox/segm mAP) with stock mmdet, in a process that
   cannot import spre_mmdet;
4. per-layer sparsity report and the spatial-sparsity plots (tools/analyze_sparsity.py);
5. the sparse tensor core benchmark (tools/benchmark_sparse.py): on a machine without an
   NVIDIA Ampere+ GPU it checks 2:4 validity and numerics only, and says so;
6. a summary of the results and of where every artefact is.
Each step is a separate process running the same tool a user would run. The software stack,
thread count and CPU the figures were measured with go to ``<work-dir>/environment.json``:
the mAP is reproducible bit for bit only in the same environment (docs/reproducibility.md).
"""
import argparse
import ast
import json
import os
import os.path as osp
import subprocess
import sys
import time

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..'))

from spre_mmdet.cli import run_tool
from spre_mmdet.environment import summary_line, write_environment

CONFIG = 'configs/toy/mask_rcnn_r18_spre_2x4_toy.py'
DATA = 'data/toy_coco'

def step(title):
    print(f'\n=== {title} ' + '=' * max(0, 70 - len(title)), flush=True)


def run(args, capture=False):
    """Run a tool with this interpreter; stream its output (or capture it) and fail loudly."""
    cmd = [sys.executable, *map(str, args)]
    print('$ python ' + ' '.join(cmd[1:]), flush=True)
    result = subprocess.run(cmd, cwd=REPO, text=True,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.STDOUT if capture else None)
    if capture:
        print(result.stdout[-4000:], flush=True)
    if result.returncode:
        sys.exit(f'demo: step failed with exit code {result.returncode}: {" ".join(cmd[1:3])}')
    return result.stdout if capture else ''


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--epochs', type=int, default=3,
                        help='training epochs (default 3, the demo\'s budget on 2 CPU cores; '
                             '0: the config\'s schedule, 6 epochs)')
    parser.add_argument('--threads', type=int, default=2,
                        help='CPU threads of every step (default 2: training numerics, and so '
                             'the mAP, depend on the thread count; docs/reproducibility.md)')
    args = parser.parse_args()
    # before torch is imported anywhere: the tools below inherit it
    os.environ['OMP_NUM_THREADS'] = str(args.threads)
    work = osp.join(args.work_dir, 'spre_2x4')
    started = time.time()
    # the tools below run with this interpreter and inherit this process's environment
    env_path = osp.join(args.work_dir, 'environment.json')
    env = write_environment(osp.join(REPO, env_path))
    print(f'environment: {summary_line(env)}')

    step('1/6 synthetic COCO dataset')
    run(['tools/make_toy_coco.py', '--out', DATA])

    step('2/6 train SpRe 2:4 Mask R-CNN R-18 (re-parameterized to plain 2:4 at the end)')
    train = ['tools/train.py', CONFIG, '--work-dir', work]
    if args.epochs:
        train += ['--cfg-options', f'train_cfg.max_epochs={args.epochs}',
                  f'param_scheduler.1.end={args.epochs}', f'param_scheduler.1.T_max={args.epochs}',
                  f'train_cfg.val_interval={args.epochs}']
    train_started = time.time()
    run(train)
    train_minutes = (time.time() - train_started) / 60
    with open(osp.join(REPO, work, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    deploy = osp.join(work, 'deploy')

    step('3/6 evaluate the deploy checkpoint with stock mmdet (spre_mmdet not importable)')
    out = run(['tools/test_stock_mmdet.py', osp.join(deploy, 'deploy_config.py'),
               osp.join(deploy, 'deploy.pth'), '--work-dir', osp.join(args.work_dir, 'stock_test')],
              capture=True)
    line = [l for l in out.splitlines() if l.startswith('STOCK_MMDET_METRICS')][-1]
    metrics = ast.literal_eval(line.split(' ', 1)[1])

    step('4/6 sparsity report and spatial sparsity per kernel position')
    with open(osp.join(REPO, work, 'sparsity_report.json')) as f:
        sparse_rows = [row for row in json.load(f) if row['valid'] is not None]
    valid = sum(row['valid'] for row in sparse_rows)
    with open(osp.join(REPO, deploy, 'sparsity_report.txt')) as f:
        print(f.read())
    analysis = osp.join(args.work_dir, 'analysis')
    run(['tools/analyze_sparsity.py', checkpoint, '--prefix', 'backbone.', '--out-dir',
         analysis, '--no-progress'])

    step('5/6 sparse tensor core benchmark')
    bench = osp.join(args.work_dir, 'benchmark')
    run(['tools/benchmark_sparse.py', osp.join(deploy, 'deploy_config.py'),
         osp.join(deploy, 'deploy.pth'), '--input-size', '128', '128', '--out-dir', bench])

    step('6/6 summary')
    print(f'SpRe 2:4 Mask R-CNN R-18, synthetic COCO, trained from scratch on CPU for '
          f'{args.epochs or 6} epochs in {train_minutes:.1f} min (demo total {(time.time() - started) / 60:.1f} min)')
    print(f'Deploy model (stock mmdet ResNet, backbone exactly 2:4: {valid}/{len(sparse_rows)} '
          'sparse layers valid):')
    print(f'  bbox mAP {metrics["coco/bbox_mAP"]:.3f} (AP50 {metrics["coco/bbox_mAP_50"]:.3f})'
          f'   segm mAP {metrics["coco/segm_mAP"]:.3f} (AP50 {metrics["coco/segm_mAP_50"]:.3f})')
    print(f'Measured in: {summary_line(env)}')
    print('Artefacts:')
    for name, path in [
            ('environment record', env_path),
            ('training log, checkpoints', work),
            ('per-layer sparsity report', osp.join(work, 'sparsity_report.txt')),
            ('deploy checkpoint', osp.join(deploy, 'deploy.pth')),
            ('deploy config (stock mmdet)', osp.join(deploy, 'deploy_config.py')),
            ('spatial sparsity plots', osp.join(analysis, 'overview.png')),
            ('benchmark report', bench)]:
        print(f'  {name:<30} {path}')
    if valid != len(sparse_rows) or metrics['coco/bbox_mAP'] <= 0:
        sys.exit('demo: the deploy model is not fully 2:4 or learned nothing (see above)')


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    run_tool(main)  # the malloc setting its tools apply is applied here too, so recorded
