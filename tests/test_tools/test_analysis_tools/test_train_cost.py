"""The training-cost benchmark (tools/analysis_tools/train_cost.py): arguments, configs, ratios."""
import os.path as osp
import statistics

import pytest
import torch
import train_cost


def test_parser_defaults_and_flags():
    """The CLI keeps its defaults and flags (--equal-head-work, --variants, --interval)."""
    parser = train_cost.build_parser()
    args = parser.parse_args([])
    assert (args.arch, args.img_size, args.batch, args.rounds, args.warmup) == ('r50', 512, 2, 5, 2)
    assert args.variants == ['dense', 'srste', 'spre', 'lbc', 'spre_lbc', 'ip_srste']
    assert not args.equal_head_work and not args.no_memory and args.interval is None
    args = parser.parse_args(['--arch', 'r18', '--variants', 'dense', 'spre', '--interval', '3',
                              '--equal-head-work', '--no-memory'])
    assert args.arch == 'r18' and args.variants == ['dense', 'spre'] and args.interval == 3
    assert args.equal_head_work and args.no_memory
    with pytest.raises(SystemExit):
        parser.parse_args(['--arch', 'r34'])


def test_memory_child_gets_the_parents_settings():
    """The memory subprocess runs this script with the parent's model and batch settings."""
    parser = train_cost.build_parser()
    args = parser.parse_args(['--arch', 'r18', '--img-size', '96', '--batch', '3', '--threads',
                              '1', '--mem-steps', '2', '--interval', '4', '--equal-head-work'])
    cmd = train_cost.memory_command(args, 'spre')
    assert cmd[1] == osp.abspath(train_cost.__file__)
    child = parser.parse_args(cmd[2:])
    assert child.memory_child == 'spre'
    for key in ('arch', 'img_size', 'batch', 'threads', 'mem_steps', 'interval',
                'equal_head_work'):
        assert getattr(child, key) == getattr(args, key), key


def test_pair_ratios_on_synthetic_timings():
    """step_paired is the median of per-round ratios (not the ratio of medians); only pairs of
    variants that ran are reported."""
    res = {
        'spre': dict(step_s=3.0, step_s_all=[2.0, 3.0, 9.0], train_gflops=30.0,
                     backbone_train_gflops=12.0, peak_rss_mb=None),
        'srste': dict(step_s=3.0, step_s_all=[1.0, 3.0, 3.0], train_gflops=20.0,
                      backbone_train_gflops=8.0, peak_rss_mb=None),
    }
    ratios = train_cost.pair_ratios(res)
    assert list(ratios) == ['spre/srste']
    rr = ratios['spre/srste']
    assert rr['step_paired'] == 2.0  # per-round ratios 2, 1, 3
    assert rr['step_s'] == 1.0  # ratio of the medians 3 / 3
    assert rr['train_gflops'] == 1.5 and rr['backbone_train_gflops'] == 1.5
    assert rr['peak_rss_mb'] is None


def test_model_config_changes_only_what_the_benchmark_needs():
    """The variant configs get no pretrained weights, LBC mid-removal, the refresh interval and
    (with equal_head_work) ground-truth-only RoI positives and a fixed RoIAlign sampling;
    R-50 dense comes from mmdet."""
    spre = train_cost.model_config('r18', 'spre', interval=3, equal_head_work=True)
    assert spre.model.backbone.init_cfg is None
    assert spre.model.backbone.sparsity.learner.interval == 3
    assert spre.model.backbone.sparsity.spre.spatial_interval == 3
    assigner = spre.model.train_cfg.rcnn.assigner
    assert (assigner.pos_iou_thr, assigner.min_pos_iou, assigner.match_low_quality) == \
        (1.0, 1.0, False)
    roi_head = spre.model.roi_head
    assert roi_head.bbox_roi_extractor.roi_layer.sampling_ratio == 2
    assert roi_head.mask_roi_extractor.roi_layer.sampling_ratio == 2
    lbc = train_cost.model_config('r18', 'lbc', interval=3)
    assert lbc.model.roi_head.bbox_roi_extractor.roi_layer.sampling_ratio == 0  # mmdet's
    learner = lbc.model.backbone.sparsity.learner
    assert (learner.t_i, learner.t_f) == (0, 1000)
    assert lbc.model.train_cfg.rcnn.assigner.pos_iou_thr < 1.0
    dense = train_cost.model_config('r50', 'dense')
    assert dense.model.backbone.depth == 50 and 'sparsity' not in dense.model.backbone
    assert dense.model.backbone.frozen_stages == 0 and dense.model.backbone.norm_eval
    assert dense.model.backbone.init_cfg is None


@pytest.mark.slow
def test_main_tiny_run(tmp_path, capsys):
    """A tiny R-18 run measures every requested variant, the paired ratio and deploy times."""
    result = train_cost.main(['--arch', 'r18', '--variants', 'dense', 'spre', '--img-size', '64',
                              '--batch', '1', '--rounds', '2', '--warmup', '0',
                              '--infer-rounds', '1', '--threads', '1', '--no-memory',
                              '--json', str(tmp_path / 'out.json')])
    out = capsys.readouterr().out
    assert set(result['variants']) == {'dense', 'spre'}
    spre = result['variants']['spre']
    assert len(spre['step_s_all']) == 2 and spre['step_s'] == statistics.median(spre['step_s_all'])
    assert spre['deploy']['same_architecture_as_dense'] is True
    assert set(result['inference_s']) == {'dense', 'spre_deploy'}
    assert 'spre/dense' in result['ratios'] and 'spre/dense: step' in out
    assert result['environment']['torch']['version'] == torch.__version__
    assert (tmp_path / 'out.json').exists()


def test_backbone_only_step_trains_backbone_and_neck_alone():
    """A backbone-only step updates backbone and neck weights, refreshes the masks, and leaves
    the RPN and RoI heads untouched."""
    batch = train_cost.make_batch(1, 64)
    trainer = train_cost.Trainer('r18', 'srste', batch, interval=1, backbone_only=True)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.step()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith('backbone.') and k.endswith('conv1.weight') for k in changed)
    assert any(k.startswith('neck.') for k in changed)
    assert not any(k.startswith(('rpn_head.', 'roi_head.')) for k in changed)
    assert len(trainer.refresh_s) == 1


def test_counts_are_checked_before_any_work():
    """--rounds 0 (or a negative count) is refused by the parser; --infer-rounds 0 means no
    prediction timing."""
    parser = train_cost.build_parser()
    for bad in (['--rounds', '0'], ['--infer-rounds', '-1'], ['--mem-steps', '0']):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert parser.parse_args(['--infer-rounds', '0']).infer_rounds == 0
