"""tools/analysis_tools/sweep.py and its sweep_lib: the grid, the statistics, resumable running
and the report."""
import json
import math

import pytest
import torch
from scipy import stats as scipy_stats

from sweep_lib import (classification_grid, detection_grid, natural_grid, paired_difference,
                       summarize)
from sweep_lib import run as sweep_run
from sweep_lib.grid import METHODS, parse_pattern
from sweep_lib.report import kernel_positions, write_report


def test_grid_has_dense_once_per_seed_and_every_method_pattern_seed():
    """6 methods x 4 patterns x 3 seeds, dense once per seed: 3 + 5 * 4 * 3 = 63 cells."""
    cells = classification_grid()
    assert len(cells) == 63 and len({c.name for c in cells}) == 63
    assert sum(c.method == 'dense' for c in cells) == 3
    assert {c.pattern for c in cells if c.method == 'spre'} == {'2:4', '1:4', '1:8', '1:16'}
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)  # seed-major order
    assert len(detection_grid()) == 2 + 2 * 2 * 2
    with pytest.raises(ValueError, match='Unknown methods'):
        classification_grid(methods=['magic'])
    assert parse_pattern('1:16') == (1, 16)
    natural = natural_grid()
    assert [(c.method, c.pattern, c.seed) for c in natural] == [
        (c.method, c.pattern, c.seed) for c in cells]
    assert {c.task for c in natural} == {'natural'} and not {c.name for c in natural} & {
        c.name for c in cells}
    assert all(c.task_options() == [] for c in natural)


def test_photo_task_runs_the_natural_configs_on_the_photo_labels(tmp_path):
    """Task 'photo': the natural grid with the photo-labelled folder and 14 classes, in the
    trained config and in each seed's shared initial weights."""
    photo = natural_grid(methods=['dense', 'srste'], patterns=[(1, 8)], seeds=[0],
                         labels='photo')
    assert [c.name for c in photo] == ['photo_dense_dense_s0', 'photo_srste_1x8_s0']
    cfg = sweep_run.load_config(sweep_run.NATURAL_METHODS['srste'], photo[1].task_options())
    assert cfg.model.head.num_classes == cfg.data_preprocessor.num_classes == 14
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == 'data/natural_photo_cls/'
    init = torch.load(sweep_run.initial_weights(photo[1], str(tmp_path)), weights_only=True)
    assert init['state_dict']['head.fc.weight'].shape[0] == 14
    with pytest.raises(ValueError, match='labels'):
        natural_grid(labels='texture')


def test_det_photo_task_runs_both_stages_on_the_natural_sets(tmp_path):
    """Task 'det_photo': stage 1 pretrains on the 64-pixel photo-labelled set (13 classes, in
    the config and in the seed's shared initial weights), stage 2 trains and evaluates on the
    shapes drawn on photos; the synthetic 'det' task keeps its folders."""
    from sweep_lib.grid import DETECTION_METHODS
    cells = detection_grid(methods=['srste'], patterns=[(1, 8)], seeds=[0], task='det_photo')
    assert [c.name for c in cells] == ['det_photo_srste_1x8_s0']
    stage1, stage2 = DETECTION_METHODS['srste']
    cfg = sweep_run.load_config(stage1, cells[0].stage_options(1))
    assert cfg.model.head.num_classes == cfg.data_preprocessor.num_classes == 13
    assert cfg.train_dataloader.dataset.data_root == 'data/natural_photo_cls64/'
    cfg = sweep_run.load_config(stage2, cells[0].stage_options(2))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == 'data/toy_coco_photos/'
    for evaluator in ('val_evaluator', 'test_evaluator'):
        assert cfg[evaluator].ann_file == 'data/toy_coco_photos/annotations/instances_val.json'
    init = torch.load(sweep_run.initial_weights(cells[0], str(tmp_path)), weights_only=True)
    assert init['state_dict']['head.fc.weight'].shape[0] == 13
    synthetic = detection_grid(methods=['srste'], patterns=[(1, 8)], seeds=[0])[0]
    assert synthetic.stage_options(1) == synthetic.stage_options(2) == []
    with pytest.raises(ValueError, match='task must be one of'):
        detection_grid(task='photo')


def test_every_method_config_exists(repo_root):
    """Each method of the grid runs a shipped config of the checkout the tool is part of."""
    from sweep_lib.grid import DETECTION_METHODS, NATURAL_METHODS, TOY_METHODS
    assert sweep_run.repo_root() == str(repo_root)
    configs = [*METHODS.values(), *NATURAL_METHODS.values(), *TOY_METHODS.values(),
               *(c for pair in DETECTION_METHODS.values() for c in pair)]
    for config in configs:
        assert (repo_root / config).is_file(), config


def _records():
    values = {('srste', '1:8'): [40.0, 41.0, 39.5], ('spre', '1:8'): [41.0, 42.2, 40.3],
              ('dense', 'dense'): [45.0, 44.0, 46.0]}
    return [dict(task='cls', method=method, pattern=pattern, seed=seed, top1=value,
                 n=None if method == 'dense' else 1, m=None if method == 'dense' else 8,
                 name=f'{method}_{pattern}_s{seed}', wall_s=1.0)
            for (method, pattern), seeds in values.items() for seed, value in enumerate(seeds)]


def test_summary_is_mean_sample_std_and_student_t_interval():
    """Per cell: mean, sample std and the 95% t-interval, matching scipy's."""
    row = next(r for r in summarize(_records(), 'top1') if r['method'] == 'spre')
    values = [41.0, 42.2, 40.3]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    low, high = scipy_stats.t.interval(0.95, 2, loc=mean, scale=std / math.sqrt(3))
    assert row['mean'] == pytest.approx(mean) and row['std'] == pytest.approx(std)
    assert (row['ci_low'], row['ci_high']) == (pytest.approx(low), pytest.approx(high))


def test_paired_difference_pairs_by_seed():
    """SpRe - SR-STE is taken seed by seed: diffs (1, 1.2, 0.8), whose 95% interval
    (1 +- 4.30 * 0.2 / sqrt(3)) excludes 0."""
    diff = paired_difference(_records(), 'top1', 'spre', 'srste', '1:8')
    assert diff['diffs'] == pytest.approx([1.0, 1.2, 0.8]) and diff['seeds'] == [0, 1, 2]
    assert diff['mean'] == pytest.approx(1.0)
    assert diff['excludes_zero'] and diff['ci_low'] > 0
    assert paired_difference(_records(), 'top1', 'spre', 'lbc', '1:8') is None


def test_report_tables_and_plots(tmp_path):
    """The report lists every method and the paired differences, and draws the plot."""
    path = write_report(_records(), str(tmp_path))
    text = open(path).read()
    assert '| spre (3 seeds) | 41.17 ± 0.96' in text
    assert '| spre − srste | +1.00 [' in text and ' *' in text
    assert (tmp_path / 'accuracy_vs_sparsity.png').stat().st_size > 1000


def test_detection_report_is_in_map_points(tmp_path):
    """Detection mAP (0-1 as mmdet logs it) is reported in points: a paired difference of
    0.004 mAP reads +0.40, not +0.00."""
    values = {'srste': [0.600, 0.610, 0.620], 'spre': [0.604, 0.613, 0.625]}
    records = [dict(task='det', method=method, pattern='2:4', n=2, m=4, seed=seed,
                    name=f'det_{method}_s{seed}', bbox_mAP=value, segm_mAP=value,
                    cls_top1=50.0, wall_s=1.0)
               for method, seeds in values.items() for seed, value in enumerate(seeds)]
    text = open(write_report(records, str(tmp_path))).read()
    assert '## Detection (two-stage pipeline): box mAP (%)' in text
    assert '| srste (3 seeds) | 61.00 ± 1.00' in text
    assert '| spre − srste | +0.40 [' in text
    assert records[0]['bbox_mAP'] == 0.600  # the records themselves are left as they were


def test_single_seed_cell_states_no_spread(tmp_path):
    """A cell with one seed has no standard deviation or interval (None), and the report says
    "1 seed" instead of printing a spread of 0.00 that was never measured."""
    records = [r for r in _records() if r['seed'] == 0]
    row = next(r for r in summarize(records, 'top1') if r['method'] == 'spre')
    assert row['std'] is None and row['ci_low'] is None
    text = open(write_report(records, str(tmp_path))).read()
    assert '| spre (1 seed) | 41.00 (1 seed) |' in text
    assert '± 0.00' not in text
    assert '| spre − srste | +1.00 (1 seed) |' in text


def test_kernel_positions_of_a_known_kernel():
    """Pruned fraction and relative weight per 3x3 position of a hand-made deploy model."""
    model = torch.nn.Module()
    model.backbone = torch.nn.Module()
    model.backbone.layer1 = torch.nn.Conv2d(4, 4, 3, bias=False)
    with torch.no_grad():
        model.backbone.layer1.weight.fill_(1.0)
        model.backbone.layer1.weight[:, :, 0, 0] = 0.0   # corner always pruned
        model.backbone.layer1.weight[:, :, 1, 1] = 3.0   # centre three times heavier
    result = kernel_positions(model)
    assert result['layers'] == 1
    assert result['pruned'][0][0] == 1.0 and result['pruned'][1][1] == 0.0
    mean = (7 * 1.0 + 3.0) / 9
    assert result['relative_weight'][1][1] == pytest.approx(3.0 / mean)


def test_deploy_kernels_of_a_photo_cell(tmp_path):
    """The per-position analysis builds the cell's own model (the natural config with the photo
    task's 14 classes and the cell's N:M) and loads its checkpoint; every 3x3 kernel is 1:8."""
    from sweep_lib.report import deploy_kernels
    from spre_mmdet.deploy import build_model
    cell = natural_grid(methods=['srste'], patterns=[(1, 8)], seeds=[0], labels='photo')[0]
    cfg = sweep_run.load_config(sweep_run.NATURAL_METHODS['srste'],
                                [*cell.task_options(), *cell.sparsity_options()])
    from spre_mmdet.sparsity import refresh_masks
    model = build_model(cfg)
    refresh_masks(model, 0)  # what training leaves in the checkpoint: 1:8 masks
    checkpoint = tmp_path / 'epoch_12.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    (tmp_path / 'last_checkpoint').write_text(str(checkpoint))
    result = deploy_kernels(dict(cell.asdict(), work_dir=str(tmp_path)))
    assert result['layers'] > 0
    assert sum(map(sum, result['pruned'])) == pytest.approx(9 * 7 / 8)


def _spre_cell(work_dir, spatial, branch_ratio, flips, seed):
    """A finished SpRe cell on disk: its checkpoint's S buffers and mmengine's scalars."""
    work_dir.mkdir()
    state = {f'backbone.layer{i}.conv.spatial': torch.tensor(s, dtype=torch.float32)
             for i, s in enumerate(spatial)}
    state['backbone.layer0.conv.weight'] = torch.zeros(4, 4, 3, 3)
    torch.save({'state_dict': state, 'meta': {}}, work_dir / 'epoch_12.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_12.pth'))
    (work_dir / 'run' / 'vis_data').mkdir(parents=True)
    with open(work_dir / 'run' / 'vis_data' / 'scalars.json', 'w') as f:
        f.write(json.dumps({'loss': 1.0, 'spre/branch_ratio': 9.0, 'spre/spatial_changes': 0,
                            'step': 1}) + '\n')  # an earlier value: the last one counts
        f.write(json.dumps({'loss': 1.0, 'spre/branch_ratio': branch_ratio,
                            'spre/spatial_changes': flips, 'step': 2}) + '\n')
    return dict(task='photo', method='spre', pattern='1:8', n=1, m=8, seed=seed,
                name=f'spre_{seed}', work_dir=str(work_dir), top1=80.0)


def test_spre_structure_reports_where_s_lands_and_the_branch_ratio(tmp_path):
    """Per pattern over seeds: the share of layers whose S holds each position, its centre /
    cross / corner means with Student-t intervals, and the last logged branch ratio."""
    from sweep_lib.report import spre_structure, spatial_share
    centre = [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    cross = [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    corners = [[1, 0, 1], [0, 0, 0], [1, 0, 1]]
    records = [_spre_cell(tmp_path / 'a', [centre, cross], 0.5, 10, 0),
               _spre_cell(tmp_path / 'b', [centre, corners], 0.7, 30, 1),
               dict(task='photo', method='srste', pattern='1:8', seed=0, name='x',
                    work_dir=str(tmp_path / 'absent'))]
    share = spatial_share({'a.spatial': torch.tensor(centre, dtype=torch.float32),
                           'b.spatial': torch.tensor(cross, dtype=torch.float32)})
    assert share == [[0, 0.5, 0], [0.5, 0.5, 0.5], [0, 0.5, 0]]
    result = spre_structure(records)
    assert list(result) == ['1:8']
    entry = result['1:8']
    assert entry['seeds'] == 2
    assert entry['centre']['mean'] == pytest.approx(0.5)  # one layer of two, in both seeds
    assert entry['centre']['ci_low'] == pytest.approx(0.5)
    assert entry['share'][1][1] == pytest.approx(0.5)
    assert entry['share'][0][0] == entry['share'][0][1] == pytest.approx(0.25)
    assert entry['cross']['mean'] == pytest.approx(0.25)
    assert entry['corners']['mean'] == pytest.approx(0.25)
    half = scipy_stats.t.ppf(0.975, 1) * math.sqrt(0.02) / math.sqrt(2)
    assert entry['branch_ratio']['mean'] == pytest.approx(0.6)
    assert entry['branch_ratio']['ci_low'] == pytest.approx(0.6 - half)
    assert entry['spatial_changes']['mean'] == pytest.approx(20)
    with open(write_report(records[:2], str(tmp_path), structure=result)) as f:
        text = f.read()
    assert ('| 1:8 | 2 | 0.50 [0.50, 0.50] | 0.25 [-2.93, 3.43] | 0.25 [-2.93, 3.43] | '
            f'0.60 [{0.6 - half:.2f}, {0.6 + half:.2f}] |') in text
    assert json.loads((tmp_path / 'spre_structure.json').read_text())['1:8']['seeds'] == 2


def test_spre_structure_of_a_detection_cell_is_its_stage_2(tmp_path):
    """A two-stage cell's S and branch ratio are those of its detection stage, not of the
    classification pretraining that ran first in the same cell."""
    from sweep_lib.report import spre_structure
    centre = [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    corners = [[1, 0, 1], [0, 0, 0], [1, 0, 1]]
    (tmp_path / 'cell').mkdir()
    _spre_cell(tmp_path / 'cell' / 'stage1_cls', [corners], 0.9, 50, 0)
    _spre_cell(tmp_path / 'cell' / 'stage2_det', [centre], 0.4, 7, 0)
    record = dict(task='det_photo', method='spre', pattern='2:4', n=2, m=4, seed=0,
                  name='det_photo_spre_2x4_s0', work_dir=str(tmp_path / 'cell'))
    entry = spre_structure([record])['2:4']
    assert entry['centre']['mean'] == 1.0 and entry['corners']['mean'] == 0.0
    assert entry['branch_ratio']['mean'] == pytest.approx(0.4)
    assert entry['spatial_changes']['mean'] == 7


def test_run_grid_resumes_and_records_failures(tmp_path, monkeypatch):
    """Finished cells are not run again; a failing cell is recorded and the others go on;
    a failed cell is retried on the next call."""
    calls = []

    def fake_run_cell(cell, out, threads):
        calls.append(cell.name)
        if cell.method == 'spre':
            raise RuntimeError('boom')
        return dict(cell.asdict(), top1=50.0, wall_s=1.0)

    monkeypatch.setattr(sweep_run, 'run_cell', fake_run_cell)
    monkeypatch.setattr(sweep_run, 'initial_weights', lambda cell, out: None)
    cells = classification_grid(methods=['srste', 'spre'], patterns=[(1, 8)], seeds=[0])
    records = sweep_run.run_grid(cells, str(tmp_path), jobs=2)
    assert sorted(calls) == sorted(c.name for c in cells)
    assert {r['name']: bool(r.get('error')) for r in records} == {
        'cls_srste_1x8_s0': False, 'cls_spre_1x8_s0': True}
    calls.clear()
    sweep_run.run_grid(cells, str(tmp_path), jobs=2)
    assert calls == ['cls_spre_1x8_s0']
    lines = (tmp_path / 'results.jsonl').read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)['name'] for line in lines)


def test_finished_stage_is_reused_only_for_the_same_run(tmp_path, monkeypatch):
    """A run whose finished file names the same config, options and thread count is not trained
    again (an interrupted detection cell resumes at stage 2); another run's finished file,
    including one trained at another thread count, is discarded and the run trains."""
    work = tmp_path / 'stage1_cls'
    work.mkdir()
    stored = dict(wall_s=12.0, peak_rss_mb=900.0, step_s=0.5)
    (work / sweep_run.FINISHED).write_text(json.dumps(
        dict(run=dict(config='a.py', options=['randomness.seed=0'], threads=1), result=stored)))

    class Launched(Exception):
        pass

    def no_launch(*args, **kwargs):
        raise Launched

    monkeypatch.setattr(sweep_run.subprocess, 'Popen', no_launch)
    assert sweep_run._train('a.py', str(work), ['randomness.seed=0'], 1) == stored
    with pytest.raises(Launched):
        sweep_run._train('a.py', str(work), ['randomness.seed=0'], 2)
    assert not (work / sweep_run.FINISHED).exists()

    (work / sweep_run.FINISHED).write_text(json.dumps(
        dict(run=dict(config='a.py', options=['randomness.seed=0'], threads=1), result=stored)))
    with pytest.raises(Launched):
        sweep_run._train('a.py', str(work), ['randomness.seed=1'], 1)
    assert not (work / sweep_run.FINISHED).exists()
