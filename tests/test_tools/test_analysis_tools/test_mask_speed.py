"""The mask-refresh benchmark (tools/analysis_tools/mask_speed.py): structure only, no timings."""
import json

import mask_speed
import pytest
import torch

from spre_mmdet.sparsity import nm_mask, sparse_layers, spatial_mask


@pytest.mark.parametrize('arch, depth', [('r18', 18), ('r50', 50)])
def test_conv_shapes_are_mmdet_resnet_layer1_to_4(arch, depth):
    """resnet_conv_shapes lists mmdet ResNet's layer1-4 convs (names, shapes, order)."""
    from mmdet.models.backbones import ResNet
    model = ResNet(depth=depth, base_channels=16)
    expected = [(name, tuple(module.weight.shape)) for name, module in model.named_modules()
                if isinstance(module, torch.nn.Conv2d) and name.startswith('layer')]
    assert mask_speed.resnet_conv_shapes(arch, base_channels=16) == expected


def test_naive_topk_mask_is_the_nm_mask_without_ties():
    """The naive top-k yardstick computes the same mask when no group has a tie."""
    weight = torch.randn(8, 16, 3, 3)
    assert torch.equal(mask_speed.naive_topk_mask(weight, 2, 4), nm_mask(weight, 2, 4))


def test_workloads_do_the_work_they_are_named_after():
    """The SR-STE/SpRe refreshes recompute every mask (and S); the LBC workloads remove one
    subset per group (masks unchanged at the first step, changed at the last) or nothing."""
    workloads = mask_speed.make_workloads('r18', 2, 4, base_channels=8)
    assert set(workloads.run) == set(mask_speed.WORK)
    assert workloads.facts['layers'] == 19 and workloads.facts['spatial_layers'] == 16
    models = workloads.models
    for method in ('srste', 'spre'):
        for _, layer in sparse_layers(models[method]):
            with torch.no_grad():
                layer.weight.copy_(torch.randn_like(layer.weight))
        workloads.run[method]()
        for _, layer in sparse_layers(models[method]):
            assert torch.equal(layer.sparsity.mask, nm_mask(layer.weight, 2, 4))
            if hasattr(layer, 'spatial'):
                assert torch.equal(layer.spatial, spatial_mask(layer.weight, 2, 4))
    lbc = [layer.sparsity for _, layer in sparse_layers(models['lbc'])]

    def survivors():
        counts = {int(count) for learner in lbc for count in learner.alive.sum(1)}
        assert len(counts) == 1  # the same number of subsets alive in every group
        return counts.pop()

    for name, before, after in (('lbc_removal', 6, 5), ('lbc_last_removal', 2, 1),
                                ('lbc_between', 5, 5)):
        workloads.setup[name]()
        assert survivors() == before, name
        masks = [learner.mask.clone() for learner in lbc]
        workloads.run[name]()
        assert survivors() == after, name
        changed = sum(int((learner.mask != mask).sum()) for learner, mask in zip(lbc, masks))
        assert (changed > 0) == (name == 'lbc_last_removal'), name
    workloads.setup['lbc_removal']()
    assert survivors() == 6


def test_main_prints_a_table_per_arch(capsys, tmp_path):
    """main() runs on a tiny width and prints one table per architecture, every row present."""
    results = mask_speed.main(['--arch', 'r18', '--base-channels', '8', '--repeats', '1',
                               '--json', str(tmp_path / 'out.json')])
    out = capsys.readouterr().out
    assert len(results) == 1 and (tmp_path / 'out.json').exists()
    result = results[0]
    assert result['arch'] == 'r18' and result['rounds'] == 1
    for key in ('ms', 'vs_clone', 'vs_topk'):
        assert set(result[key]) == set(mask_speed.WORK)
        assert all(value >= 0 for value in result[key].values())
    assert result['vs_clone']['clone'] == 1.0
    for label in mask_speed.WORK.values():
        assert f'| {label} |' in out
    assert out.startswith('R18 layer1-4: 19 convs')
    written = json.loads((tmp_path / 'out.json').read_text())
    assert written['results'][0]['ms'] == result['ms']
    assert written['environment']['torch']['version'] == torch.__version__
