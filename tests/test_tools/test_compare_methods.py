"""tools/compare_methods.py: log parsing, deploy checks and table writing on fake work dirs
laid out like mmengine's (no training)."""
import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def cm():
    spec = importlib.util.spec_from_file_location('compare_methods',
                                                  ROOT / 'tools' / 'compare_methods.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_lines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def train_row(it, time_s):
    # the keys mmengine's LoggerHook writes for a training iteration
    return {'lr': 1e-3, 'data_time': 0.01, 'grad_norm': 5.0, 'loss': 1.0, 'time': time_s,
            'epoch': 1 + (it - 1) // 100, 'iter': it, 'step': it}


VAL_ROW = {'coco/bbox_mAP': 0.5, 'coco/bbox_mAP_50': 0.8, 'coco/segm_mAP': 0.55,
           'coco/segm_mAP_50': 0.82, 'data_time': 0.004, 'time': 0.5, 'step': 2}


def fake_training(work, times, stamp='20260101_000000'):
    rows = [train_row(10 * (i + 1), t) for i, t in enumerate(times)] + [VAL_ROW]
    write_lines(work / stamp / 'vis_data' / 'scalars.json', rows)


def test_step_time_skips_warmup_and_merges_resumed_runs(cm, tmp_path):
    fake_training(tmp_path, [9.0, 9.0, 9.0, 9.0, 9.0, 1.0, 2.0, 3.0])
    records = cm.train_records(tmp_path)
    assert [r['iter'] for r in records] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert cm.step_time(records, skip_iters=50) == 2.0
    # a resumed run re-logs iterations 70, 80 and adds 90: the later run wins
    write_lines(tmp_path / '20260101_010000' / 'vis_data' / 'scalars.json',
                [train_row(70, 4.0), train_row(80, 4.0), train_row(90, 4.0)])
    records = cm.train_records(tmp_path)
    assert [r['time'] for r in records if r['iter'] > 50] == [1.0, 4.0, 4.0, 4.0]
    assert cm.step_time(records, skip_iters=50) == 4.0
    assert cm.step_time(records, skip_iters=1000) == 9.0  # nothing left: all records
    assert cm.step_time([], 50) is None


def test_find_metrics_reads_test_log_and_skips_broken_lines(cm, tmp_path):
    assert cm.find_metrics(tmp_path) is None
    stamp = tmp_path / '20260101_000000'
    stamp.mkdir()
    # tools/test.py: the metrics line lands in <timestamp>/<timestamp>.json
    (stamp / '20260101_000000.json').write_text('{"coco/bbox_mAP": 0.1, \n' +
                                                json.dumps(VAL_ROW) + '\n')
    metrics = cm.find_metrics(tmp_path)
    assert metrics['bbox_mAP'] == 0.5 and metrics['segm_mAP'] == 0.55


def test_deploy_check_counts_valid_invalid_and_merged(cm):
    good = torch.tensor([[1., 0., 2., 0.], [0., 3., 0., 4.]]).view(2, 4, 1, 1)
    bad = torch.ones(2, 4, 1, 1)
    state = {'backbone.a.weight': good, 'backbone.b.weight': bad,
             'backbone.d.weight': bad.expand(2, 4, 3, 3),  # interspace, merged
             'backbone.e.basis_conv.weight': torch.ones(9, 1, 1, 3, 3),  # interspace, basis
             'backbone.e.gemm.weight': good}
    report = [dict(name='backbone.stem', kind='dense'),
              dict(name='backbone.a', kind='srste'),
              dict(name='backbone.b', kind='srste+spre'),
              dict(name='backbone.c', kind='srste'),
              dict(name='backbone.d', kind='srste+ip'),
              dict(name='backbone.e', kind='srste+ip')]
    valid, checked, merged, problems = cm.deploy_check(state, report)
    assert (valid, checked, merged) == (2, 4, 1)
    assert len(problems) == 2 and 'backbone.b.weight' in problems[0]
    assert 'missing' in problems[1]
    assert cm.count_params({'w': good, 'bn.running_mean': torch.zeros(3),
                            'bn.num_batches_tracked': torch.tensor(1)}) == 8


def test_budget_options_follow_epochs(cm):
    opts = cm.budget_options('lbc', 2, 200, 'data/x', 0)
    assert 'train_cfg.max_epochs=2' in opts and 'param_scheduler.1.end=2' in opts
    assert 'param_scheduler.1.T_max=2' in opts and 'param_scheduler.0.end=33' in opts
    assert 'model.backbone.sparsity.learner.span=(0.08333333333333333,0.5)' in opts
    assert 'val_evaluator.ann_file=data/x/annotations/instances_val.json' in opts
    assert not any('learner' in o for o in cm.budget_options('spre', 2, 200, 'data/x', 0))
    assert cm.lbc_schedule(1200) == (100, 600)
    t_i, t_f = cm.lbc_schedule(3)
    assert 0 <= t_i < t_f <= 3


def test_reuses_finished_methods_and_writes_tables(cm, tmp_path):
    (tmp_path / 'data' / 'annotations').mkdir(parents=True)
    ann = dict(annotations=[dict(image_id=i) for i in range(1, 9)])
    (tmp_path / 'data' / 'annotations' / 'instances_train.json').write_text(json.dumps(ann))
    assert cm.iters_per_epoch(str(tmp_path / 'data')) == 2
    work = tmp_path / 'work'
    budget = dict(epochs=1, seed=0, total_iters=2, data_root=str(tmp_path / 'data'))
    for method, step, rss, box in (('dense', 0.5, 1000.0, 0.5), ('spre', 1.0, 1500.0, 0.45)):
        (work / method).mkdir(parents=True)
        (work / method / 'result.json').write_text(json.dumps(dict(
            method=method, budget=budget, bbox_mAP=box, segm_mAP=box + 0.03,
            step_time_s=step, peak_rss_mb=rss, deploy_nm='dense' if method == 'dense'
            else '19/19', deploy_params=100, train_wall_min=1.0)))
    cm.main(['--methods', 'dense', 'spre', '--epochs', '1', '--work-dir', str(work),
             '--data-root', str(tmp_path / 'data')])
    data = json.loads((work / 'compare.json').read_text())
    spre = data['rows'][1]
    assert spre['step_time_ratio'] == 2.0 and spre['peak_rss_ratio'] == 1.5
    assert data['meta']['epochs'] == 1
    rows = list(csv.DictReader((work / 'compare.csv').open()))
    assert [r['method'] for r in rows] == ['dense', 'spre']
    assert float(rows[1]['bbox_mAP']) == 0.45
    md = (work / 'compare.md').read_text()
    assert '| spre | 0.450 | 0.480 |' in md and '| 2.00 |' in md and '19/19' in md
    # another budget in the same work dir is refused, not silently mixed
    with pytest.raises(SystemExit, match='another budget'):
        cm.main(['--methods', 'spre', '--epochs', '2', '--work-dir', str(work),
                 '--data-root', str(tmp_path / 'data')])
    # --table-only rebuilds from whatever finished
    cm.main(['--methods', 'dense', 'spre', 'lbc', '--epochs', '1', '--work-dir', str(work),
             '--data-root', str(tmp_path / 'data'), '--table-only'])
    assert len(json.loads((work / 'compare.json').read_text())['rows']) == 2
