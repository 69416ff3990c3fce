"""Running the cells: one ``tools/train.py`` process per run, a few at a time, resumable.

The configs and ``tools/train.py`` are the checkout's (this folder is part of it); the runs
import the installed ``spre_mmdet``."""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

from .grid import (DETECTION_METHODS, METHODS, NATURAL_METHODS, STAGE_DIRS, TOY_METHODS,
                   Cell)

RESULTS = 'results.jsonl'


def repo_root() -> str:
    """The checkout this tool is part of (``tools/analysis_tools/sweep_lib/`` is three levels
    below it): the shipped configs and ``tools/train.py`` are found there."""
    return osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def load_config(config: str, options: Sequence[str] = ()):
    """The checkout's ``config`` with ``options`` (``key=value`` strings) merged in, parsed as
    ``tools/train.py`` parses ``--cfg-options``."""
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(osp.join(repo_root(), config))
    if options:
        parser = argparse.ArgumentParser()
        parser.add_argument('--cfg-options', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(['--cfg-options', *options]).cfg_options)
    return cfg


def write_initial_weights(config: str, seed: int, path: str,
                          options: Sequence[str] = ()) -> str:
    """The dense initial weights of ``config``'s model for ``seed``, saved once and loaded by
    every method of that seed (``load_from``): the same start for all of them. SpRe's extra
    branch and LBC's scores, which a dense model has not, start from their own init.
    ``options`` are ``--cfg-options`` style ``key=value`` changes (e.g. the class count)."""
    if osp.isfile(path):
        return path
    from mmengine.runner import set_random_seed
    from spre_mmdet.deploy import build_model
    set_random_seed(seed)
    model = build_model(load_config(config, options))
    model.init_weights()
    os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save({'state_dict': model.state_dict(), 'meta': dict(seed=seed, config=config)},
               path + '.tmp')
    os.replace(path + '.tmp', path)
    return path


def last_metrics(work_dir: str, key: str) -> Dict[str, float]:
    """The last logged record holding ``key`` (mmengine's ``vis_data/scalars.json``)."""
    found = None
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files and root.endswith('vis_data'):
            with open(osp.join(root, 'scalars.json')) as f:
                for line in f:
                    record = json.loads(line)
                    if key in record:
                        found = record
    if found is None:
        raise RuntimeError(f'No {key!r} was logged under {work_dir}: see its train.log.')
    return found


def step_time(work_dir: str, skip: float = 0.1) -> Optional[float]:
    """Median seconds per training iteration (mmengine's logged ``time``), leaving out the
    first ``skip`` of the run (warm-up, first allocations)."""
    times = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files and root.endswith('vis_data'):
            with open(osp.join(root, 'scalars.json')) as f:
                records = [json.loads(line) for line in f if '"loss"' in line]
            times += [r['time'] for r in records[int(len(records) * skip):] if 'time' in r]
    return statistics.median(times) if times else None


#: written into a run's work dir when its training finished: a resumed sweep reuses the run
FINISHED = 'finished_run.json'


def _train(config: str, work_dir: str, options: List[str], threads: int) -> dict:
    """``tools/train.py config`` in a child process; returns its wall time (s), peak resident
    memory (MiB, that process alone) and median step time (s).

    A run that already finished in ``work_dir`` with the same config, options and thread count
    (its :data:`FINISHED` file) is not trained again: a detection cell interrupted in stage 2
    resumes there, not at stage 1. The thread count is part of the run because it changes the
    figures (float reduction order). Any other content of ``work_dir`` is trained over."""
    os.makedirs(work_dir, exist_ok=True)
    done_file = osp.join(work_dir, FINISHED)
    what = dict(config=config, options=list(options), threads=threads)
    if osp.isfile(done_file):
        with open(done_file) as f:
            done = json.load(f)
        if done.get('run') == what:
            return done['result']
        os.remove(done_file)  # a different run's: this one starts over
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, osp.join(repo_root(), 'tools', 'train.py'),
               osp.join(repo_root(), config), '--work-dir', work_dir, '--cfg-options', *options]
    started = time.time()
    with open(osp.join(work_dir, 'train.log'), 'w') as log:
        log.write('$ ' + ' '.join(command) + '\n')
        log.flush()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=repo_root())
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f'{config} failed (exit {child.returncode}); see '
                           f'{osp.join(work_dir, "train.log")}')
    result = dict(wall_s=time.time() - started, peak_rss_mb=usage.ru_maxrss / 1024,
                  step_s=step_time(work_dir))
    with open(done_file, 'w') as f:
        json.dump(dict(run=what, result=result), f)
    return result


def deploy_summary(work_dir: str) -> Optional[dict]:
    """The deploy checkpoint the run's ReparameterizeHook wrote, checked against its own
    records: how many layers must be N:M and are, and its parameter count (``None`` if the run
    wrote none, e.g. dense or unstructured)."""
    path = osp.join(work_dir, 'deploy', 'deploy.pth')
    if not osp.isfile(path):
        return None
    from spre_mmdet.checkpoint import safe_torch_load, state_dict_of
    from spre_mmdet.sparsity import SparseLayerRecord, check_nm_tensor
    checkpoint = safe_torch_load(path)
    state = state_dict_of(checkpoint)
    records = [SparseLayerRecord.from_dict(r) for r in checkpoint['meta']['sparse_layers']]
    must = [r for r in records if r.nm]
    valid = sum(check_nm_tensor(state[r.tensor], r.n, r.m).ok for r in must)
    params = sum(v.numel() for k, v in state.items()
                 if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
    return dict(checked=len(must), valid=valid, params=params)


def last_checkpoint(work_dir: str) -> str:
    """The checkpoint mmengine's runner saved last in ``work_dir`` (its ``last_checkpoint``)."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def initial_weights(cell: Cell, out: str) -> Optional[str]:
    """The file holding the initial weights of ``cell``'s seed (written on first use); the
    from-scratch detection comparison has none (each config initializes itself)."""
    if cell.task == 'toy':
        return None
    if cell.task == 'cls':
        return write_initial_weights(METHODS['dense'], cell.seed,
                                     osp.join(out, 'init', f'cls_seed{cell.seed}.pth'))
    if cell.task in ('natural', 'photo'):
        return write_initial_weights(NATURAL_METHODS['dense'], cell.seed,
                                     osp.join(out, 'init', f'{cell.task}_seed{cell.seed}.pth'),
                                     cell.task_options())
    name = 'det_cls' if cell.task == 'det' else f'{cell.task}_cls'
    return write_initial_weights(DETECTION_METHODS['dense'][0], cell.seed,
                                 osp.join(out, 'init', f'{name}_seed{cell.seed}.pth'),
                                 cell.stage_options(1))


def run_cell(cell: Cell, out: str, threads: int = 1) -> dict:
    """Train (and for detection, pretrain then fine-tune) one cell; returns its record."""
    work = osp.join(out, 'runs', cell.name)
    record = cell.asdict()
    seed_options = [f'randomness.seed={cell.seed}', *cell.sparsity_options(),
                    *cell.task_options()]
    init = initial_weights(cell, out)
    if cell.task in ('cls', 'natural', 'photo'):
        configs = METHODS if cell.task == 'cls' else NATURAL_METHODS
        record.update(_train(configs[cell.method], work,
                             [*seed_options, f'load_from={init}'], threads))
        metrics = last_metrics(work, 'accuracy/top1')
        record.update(top1=metrics['accuracy/top1'], top5=metrics.get('accuracy/top5'),
                      deploy=deploy_summary(work))
    elif cell.task == 'toy':  # from scratch: each config's own init for the seed
        record.update(_train(TOY_METHODS[cell.method], work, seed_options, threads))
        metrics = last_metrics(work, 'coco/bbox_mAP')
        record.update({key.split('/')[1]: value for key, value in metrics.items()
                       if key.startswith('coco/') and key.endswith(('mAP', 'mAP_50'))})
        record['deploy'] = deploy_summary(work)
    else:
        stage1, stage2 = DETECTION_METHODS[cell.method]
        work1, work2 = (osp.join(work, name) for name in STAGE_DIRS)
        first = _train(stage1, work1,
                       [*seed_options, *cell.stage_options(1), f'load_from={init}'], threads)
        record['cls_top1'] = last_metrics(work1, 'accuracy/top1')['accuracy/top1']
        second = _train(stage2, work2,
                        [*seed_options, *cell.stage_options(2),
                         f'model.backbone.init_cfg.checkpoint={last_checkpoint(work1)}'], threads)
        metrics = last_metrics(work2, 'coco/bbox_mAP')
        record.update(bbox_mAP=metrics['coco/bbox_mAP'], segm_mAP=metrics['coco/segm_mAP'],
                      wall_s=first['wall_s'] + second['wall_s'],
                      peak_rss_mb=max(first['peak_rss_mb'], second['peak_rss_mb']),
                      step_s=second['step_s'], deploy=deploy_summary(work2))
    record['work_dir'] = work
    return record


def finished(out: str) -> Dict[str, dict]:
    """The records of the cells already done (``results.jsonl``), by cell name."""
    path = osp.join(out, RESULTS)
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        return {r['name']: r for r in map(json.loads, filter(str.strip, f))}


def run_grid(cells: Iterable[Cell], out: str, jobs: int = 2, threads: int = 1,
             progress: Optional[Callable[[dict], None]] = None) -> List[dict]:
    """Run every cell not yet in ``out/results.jsonl``, ``jobs`` at a time (each with
    ``threads`` CPU threads), appending each record as it finishes. A failed cell is recorded
    with its error and the others go on. Returns the records of all ``cells``."""
    cells = list(cells)
    os.makedirs(out, exist_ok=True)
    done = finished(out)
    todo = [c for c in cells if c.name not in done or done[c.name].get('error')]
    for cell in todo:  # written once, before the parallel runs read them
        initial_weights(cell, out)
    lock = threading.Lock()

    def one(cell):
        try:
            record = run_cell(cell, out, threads)
        except Exception as e:  # noqa: BLE001  (recorded; the sweep goes on)
            record = dict(cell.asdict(), error=str(e))
        with lock:
            with open(osp.join(out, RESULTS), 'a') as f:
                f.write(json.dumps(record) + '\n')
            done[cell.name] = record
            if progress is not None:
                progress(record)
        return record

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in as_completed([pool.submit(one, cell) for cell in todo]):
            future.result()
    return [done[c.name] for c in cells]
