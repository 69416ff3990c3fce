#!/usr/bin/env python
"""The method comparison where N:M sparsity binds: a reproducible multi-seed sweep.

    python tools/make_toy_cls.py --out data/toy_cls
    python tools/analysis_tools/sweep.py --out work_dirs/sweep                # classification
    python tools/analysis_tools/sweep.py --out work_dirs/sweep_det --task det # two-stage det.
    python tools/make_natural_cls.py --out data/natural_cls
    python tools/analysis_tools/sweep.py --out work_dirs/sweep_natural --task natural
    python tools/make_natural_cls.py --out data/natural_photo_cls --labels photo \
        --num-train 1000 --num-val 200
    python tools/analysis_tools/sweep.py --out work_dirs/sweep_photo --task photo
    python tools/make_natural_cls.py --out data/natural_photo_cls64 --labels photo --colour \
        --size 64 --cell 192 --val-size 64 --max-zoom 1 --num-train 600 --num-val 80
    python tools/make_toy_coco.py --out data/toy_coco_photos --backgrounds photos
    python tools/analysis_tools/sweep.py --out work_dirs/sweep_det_photo --task det_photo \
        --methods srste spre --patterns 2:4 1:8 --seeds 0 1 2

Classification: {dense, unstructured, srste, spre, lbc, spre_lbc} x {2:4, 1:4, 1:8, 1:16} x
seeds, ResNet-10 on the synthetic classification set (configs/toy/cls/). Detection: {dense,
srste, spre} x {2:4, 1:8} x seeds through the two-stage pipeline (ResNet-18 classification
pretraining at 64x64, then Mask R-CNN on the synthetic COCO set; needs data/toy_cls64 and
data/toy_coco). Toy: every method's toy Mask R-CNN R-18 config from scratch (2:4, seed 0 by
default), with step time, peak memory and deploy checks. Every cell is one run of
tools/train.py on a shipped config with the seed's shared initial weights; finished cells are
kept in OUT/results.jsonl, so an interrupted sweep continues where it stopped (a detection cell
whose stage 1 finished resumes at stage 2). Writes OUT/summary.md (mean ± std [95% interval]
per cell, paired differences), OUT/accuracy_vs_sparsity.png and, for classification, the
per-kernel-position analysis of the final deploy kernels (OUT/kernel_positions.{png,json});
for classification and detection, where SpRe's S lands at the end of the last stage, with its
branch ratio (OUT/spre_structure.json). The grid, the runs, the
statistics and the report are the package ``sweep_lib`` next to this script.
"""
import argparse
import os.path as osp
import time

from spre_mmdet.cli import check_dataset_paths, run_tool
from sweep_lib import (DETECTION_METHODS, METHODS, NATURAL_METHODS, TOY_METHODS,
                       classification_grid, detection_grid, natural_grid, toy_grid)
from sweep_lib.grid import STAGE_OPTIONS, TASK_OPTIONS, parse_pattern
from sweep_lib.report import deploy_kernels, spre_structure, write_report
from sweep_lib.run import finished, load_config, run_grid

#: the methods whose final deploy kernels the per-kernel-position analysis compares
ANALYSED = ('unstructured', 'srste', 'spre')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='work_dirs/sweep', help='output folder (resumable)')
    p.add_argument('--task', choices=['cls', 'natural', 'photo', 'det', 'det_photo', 'toy'],
                   default='cls',
                   help='cls: classification grid; natural: the same grid on the natural-image '
                   'set (data/natural_cls, a class per photo region); photo: the same with a '
                   'class per photo (data/natural_photo_cls); det: two-stage detection; '
                   'det_photo: the same from the natural-image stage 1 '
                   '(data/natural_photo_cls64) to shapes on photo backgrounds '
                   '(data/toy_coco_photos); toy: every method\'s toy Mask R-CNN from scratch '
                   '(the demo\'s setting)')
    p.add_argument('--methods', nargs='+', default=None)
    p.add_argument('--patterns', nargs='+', default=None, help='e.g. 2:4 1:8')
    p.add_argument('--seeds', nargs='+', type=int, default=None)
    p.add_argument('--jobs', type=int, default=2, help='runs at a time')
    p.add_argument('--threads', type=int, default=1, help='CPU threads per run')
    p.add_argument('--report-only', action='store_true',
                   help='only rewrite the report from OUT/results.jsonl')
    return p.parse_args(argv)


def _check_data(task):
    if task in STAGE_OPTIONS:
        configs = list(zip(DETECTION_METHODS['dense'], STAGE_OPTIONS[task]))
    else:
        config = {'cls': METHODS, 'natural': NATURAL_METHODS, 'photo': NATURAL_METHODS,
                  'toy': TOY_METHODS}[task]['dense']
        configs = [(config, TASK_OPTIONS.get(task, []))]
    for config, options in configs:
        check_dataset_paths(load_config(config, options), ['train_dataloader', 'val_dataloader'])


def main(argv=None):
    args = parse_args(argv)
    kwargs = {}
    if args.methods:
        kwargs['methods'] = args.methods
    if args.patterns:
        kwargs['patterns'] = [parse_pattern(p) for p in args.patterns]
    if args.seeds:
        kwargs['seeds'] = args.seeds
    if args.task == 'photo':
        kwargs['labels'] = 'photo'
    if args.task in STAGE_OPTIONS:
        kwargs['task'] = args.task
    cells = dict(cls=classification_grid, natural=natural_grid, photo=natural_grid,
                 det=detection_grid, det_photo=detection_grid, toy=toy_grid)[args.task](**kwargs)
    started = time.time()
    if args.report_only:
        done = finished(args.out)
        records = [done[c.name] for c in cells if c.name in done]
    else:
        _check_data(args.task)
        from spre_mmdet.environment import write_environment
        # what the figures were measured in; every run uses --threads threads (OMP_NUM_THREADS)
        write_environment(osp.join(args.out, 'environment.json'), threads_per_run=args.threads,
                          runs_at_a_time=args.jobs)
        print(f'{len(cells)} cells, {args.jobs} at a time with {args.threads} thread(s) each; '
              f'results in {osp.join(args.out, "results.jsonl")}', flush=True)
        from tqdm import tqdm
        done = finished(args.out)
        bar = tqdm(total=len(cells), desc='sweep', unit='run',
                   initial=sum(1 for c in cells
                               if c.name in done and not done[c.name].get('error')))

        def progress(record):
            metric = record.get('top1', record.get('bbox_mAP'))
            bar.write(f'{record["name"]}: ' + (f'ERROR {record["error"]}' if record.get('error')
                                               else f'{metric:.2f} in {record["wall_s"]:.0f} s'))
            bar.update(1)

        records = run_grid(cells, args.out, jobs=args.jobs, threads=args.threads,
                           progress=progress)
        bar.close()
    analysis = {}
    if args.task in ('cls', 'natural', 'photo'):
        for record in records:
            if record['method'] in ANALYSED and record['seed'] == min(r['seed'] for r in records) \
                    and not record.get('error'):
                analysis.setdefault(record['method'], {})[record['pattern']] = \
                    deploy_kernels(record)
    structure = spre_structure(records) if args.task != 'toy' else None
    path = write_report(records, args.out, analysis, structure)
    print(open(path).read())
    print(f'Sweep done in {(time.time() - started) / 60:.1f} min; report: {path}')


if __name__ == '__main__':
    run_tool(main)
