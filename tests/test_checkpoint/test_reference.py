"""Import of SpRe / SR-STE reference checkpoints (spre_mmdet.checkpoint, tools/import_reference.py).

No released file is available offline: every input is a synthetic state dict in the reference
layout, made by ``reference_nets`` (an independent re-implementation of the reference networks)
with random weights and BN statistics. Outputs are compared in eval mode on 1x3x64x64 inputs
with ``rtol=1e-5`` and ``atol=1e-5 * max|reference output|`` (float32; our SpRe pair runs as
one fused conv, so sums are ordered differently; measured differences are about 1e-6 of the
output magnitude).
"""
import os
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from reference_nets import (LAYERS, NMBasicBlock, NMBottleneck, NMResNet, nm_resnet,
                            sparse_nchw_mask, sparse_nhwc_mask, sparse_nhwc_mask_linear,
                            spre_deploy_state_dict, spre_resnet)
from spre_mmdet.checkpoint import (ReferenceFormatError, convert_reference, detect_depth,
                                   detect_layout)
from spre_mmdet.checkpoint.importing import describe, import_reference_file
from spre_mmdet.checkpoint.reference import _read, usage_snippets
from spre_mmdet.errors import CheckpointError
from spre_mmdet.models import SparseResNet
from spre_mmdet.sparsity import check_nm_tensor, nm_mask
from tool_process import run_tool_process

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'import_reference.py'
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def assert_close_to_reference(ours, reference):
    torch.testing.assert_close(ours, reference, rtol=1e-5,
                               atol=1e-5 * reference.abs().max().item())


def backbone_state(converted):
    return {k[len('backbone.'):]: v for k, v in converted.state_dict.items()
            if k.startswith('backbone.')}


def logits_of(converted, features):
    """The mmpretrain head on the backbone's last stage: global average pooling + Linear."""
    return torch.nn.functional.linear(features.mean(dim=(2, 3)),
                                      converted.state_dict['head.fc.weight'],
                                      converted.state_dict['head.fc.bias'])


def assert_same_kept_weights(masked, reference_masked):
    """Two masked weights keep the same magnitudes in every group of 4 consecutive elements
    of the (out, kh, kw, in) weight: the masks may differ only where equal magnitudes tie
    (exact zeros, or equal values that argsort and our tie rule order differently), which
    changes no output."""
    def kept(weight):
        return weight.detach().abs().permute(0, 2, 3, 1).reshape(-1, 4).sort(dim=1).values
    assert torch.equal(kept(masked), kept(reference_masked))


def spre_checkpoint(model):
    """What SpRe's imagenet.py saves: a DataParallel state dict in a training container."""
    return {'epoch': 120, 'arch': type(model).__name__, 'best_acc1': 71.0, 'curr_acc1': 70.9,
            'state_dict': {f'module.{k}': v for k, v in model.state_dict().items()},
            'optimizer': {'state': {}, 'param_groups': [{'lr': 0.0, 'params': [0]}]}}


def nm_checkpoint(model, depth):
    """What NM-sparsity's train_imagenet.py saves (no wrapper prefix)."""
    return {'epoch': 120, 'model': f'resnet{depth}', 'best_prec1': 77.0,
            'state_dict': model.state_dict(),
            'optimizer': {'state': {}, 'param_groups': [{'lr': 0.0, 'params': [0]}]}}


@torch.no_grad()
def with_kept_zeros(model):
    """Zero 3 of 4 weights in some groups of the first 3x3 conv: the 2:4 mask then keeps an
    exact zero, which SpRe drops from W_rep's mask (sign(|W * B|)) and ours must too."""
    block = model.layer1[0]
    conv, rep = ((block.conv1, block.conv_rep1) if hasattr(block, 'conv_rep1') else
                 (block.conv2, block.conv_rep))
    conv.weight[:8, 1:4, 1, 1] = 0.0
    rep.set_rep_masks(conv.weight.data)  # what set_spatial_mask does for this pair
    return model


class SpReCase:
    """A reference SpRe model, its outputs on ``X`` and its converted checkpoint."""

    def __init__(self, depth):
        self.depth = depth
        self.model = with_kept_zeros(spre_resnet(depth, seed=depth))
        with torch.no_grad():  # the reference recomputes every mask in forward: run it once
            self.stages = self.model.stages(X)
            self.logits = self.model.head(self.stages[-1])
        self.converted = convert_reference(spre_checkpoint(self.model))


_SPRE_CASES = {}


def spre_case(depth):
    if depth not in _SPRE_CASES:
        _SPRE_CASES[depth] = SpReCase(depth)
    return _SPRE_CASES[depth]


@pytest.fixture(scope='module', autouse=True)
def release_cases():
    yield
    _SPRE_CASES.clear()


# ResNet-50 cases take tens of seconds on CPU: `make test` only (`make test-fast` skips them)
@pytest.fixture(scope='module', params=[18, pytest.param(50, marks=pytest.mark.slow)],
                ids=['resnet18', 'resnet50'])
def spre(request):
    return spre_case(request.param)


@pytest.fixture(scope='module')
def spre18():
    return spre_case(18)


# --------------------------------------------------------------------------------------
# SpRe training-time form
# --------------------------------------------------------------------------------------
def test_spre_training_form_loads_strictly_and_matches_reference(spre):
    """A SpRe checkpoint (module. prefix, training container) loads strictly into SparseResNet
    (SpRe + SR-STE) and gives the reference network's stage outputs and logits."""
    depth, converted = spre.depth, spre.converted
    ours = SparseResNet(depth=depth, sparsity=dict(n=2, m=4, spre=dict()))
    ours.load_state_dict(backbone_state(converted), strict=True)
    ours.eval()
    with torch.no_grad():
        features = ours(X)
    for ref_out, our_out in zip(spre.stages, features):
        assert_close_to_reference(our_out, ref_out)
    assert_close_to_reference(logits_of(converted, features[-1]), spre.logits)
    meta = converted.meta
    assert (meta['source_format'], meta['depth'], meta['method']) == ('spre', depth, 'srste+spre')
    assert meta['backbone'] == dict(type='SparseResNet', depth=depth, sparsity=dict(
        n=2, m=4, learner=dict(type='SRSTEMask'), spre=dict()))
    assert meta['num_spre_layers'] == 16 and meta['nm_valid']
    assert any('W_rep entries zeroed' in note for note in meta['notes'])


def test_spre_masks_spatial_masks_and_branches_are_the_references(spre):
    """Every N:M mask keeps what Sparse_NHWC keeps, S is the stored mask, W_rep and both BNs are the
    reference's (W_rep zeroed only where SpRe's sign(|W * B|) is 0), the stem bias is folded."""
    model, state = spre.model, spre.converted.state_dict
    pairs = 0
    for name, module in model.named_modules():
        key = f'backbone.{name}'
        if type(module).__name__ in ('SparseConv', 'SparseRepConv') and name != 'fc':
            assert torch.equal(state[f'{key}.weight'], module.weight)
            assert_same_kept_weights(state[f'{key}.sparsity.mask'] * module.weight,
                                     sparse_nhwc_mask(module.weight, 2, 4) * module.weight)
        if type(module).__name__ == 'SpReConv':
            parent, _, rep_name = name.rpartition('.')
            index = rep_name[len('conv_rep'):] or '2'
            main = model.get_submodule(f'{parent}.conv{index}')
            conv_key = f'backbone.{parent}.conv{index}'
            kept = main.get_sparse_weights() != 0
            assert torch.equal(state[f'{conv_key}.weight_rep'] * kept, module.weight * kept)
            assert torch.equal(state[f'{conv_key}.spatial'], module.mask)
            rep_bn = model.get_submodule(f'{parent}.bn_rep{rep_name[len("conv_rep"):]}')
            for field in ('weight', 'bias', 'running_mean', 'running_var'):
                assert torch.equal(state[f'backbone.{parent}.bn{index}.rep_bn.{field}'],
                                   getattr(rep_bn, field))
            pairs += 1
    assert pairs == 16
    torch.testing.assert_close(state['backbone.bn1.running_mean'],
                               model.bn1.running_mean - model.conv1.bias, rtol=0, atol=0)
    fc = model.fc.weight[:, :, 0, 0]
    assert torch.equal(state['head.fc.weight'], fc * sparse_nhwc_mask_linear(fc, 2, 4))


# --------------------------------------------------------------------------------------
# SpRe deploy form
# --------------------------------------------------------------------------------------
def test_spre_deploy_form_is_stock_resnet_exactly_nm_and_matches_training_reference(spre):
    """SpRe's convert.py output becomes a stock ResNet (strict load) whose layer convs are
    exactly 2:4, folded BNs identity-plus-bias, computing the training-time reference."""
    from mmdet.models.backbones import ResNet
    depth = spre.depth
    converted = convert_reference(spre_deploy_state_dict(spre.model))
    assert converted.meta['method'] == 'deploy'
    assert converted.meta['backbone'] == dict(type='ResNet', depth=depth)
    assert converted.meta['ignored_training_keys'] > 0
    stock = ResNet(depth=depth)
    stock.load_state_dict(backbone_state(converted), strict=True)
    stock.eval()
    with torch.no_grad():
        features = stock(X)
    for ref_out, our_out in zip(spre.stages, features):
        assert_close_to_reference(our_out, ref_out)
    assert_close_to_reference(logits_of(converted, features[-1]), spre.logits)
    layer_convs = [(name, module) for name, module in stock.named_modules()
                   if isinstance(module, torch.nn.Conv2d) and name.startswith('layer')]
    assert len(layer_convs) == (19 if depth == 18 else 52)  # 3x3/1x1 and downsample convs
    for name, conv in layer_convs:
        check = check_nm_tensor(conv.weight, 2, 4)
        assert check.ok, f'{name}: {check.explain()}'
    folded = stock.layer1[0].bn2
    assert torch.equal(folded.weight, torch.ones_like(folded.weight))
    assert torch.equal(folded.running_mean, torch.zeros_like(folded.running_mean))
    torch.testing.assert_close(folded.running_var, torch.full_like(folded.running_var, 1 - 1e-5))


# --------------------------------------------------------------------------------------
# SR-STE (NM-sparsity)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize('depth', [18, pytest.param(50, marks=pytest.mark.slow)])
def test_srste_masks_equal_reference_magnitude_masks_and_outputs_match(depth):
    """An NM-sparsity checkpoint is detected from its container; its boolean masks keep what
    Sparse_NHWC's magnitude masks keep, the stem's flattened mask is baked in, outputs match."""
    model = nm_resnet(depth, seed=depth + 1)
    converted = convert_reference(nm_checkpoint(model, depth))
    state = converted.state_dict
    assert converted.meta['source_format'] == 'srste' and converted.meta['method'] == 'srste'
    for name, module in model.named_modules():
        if type(module).__name__ == 'SparseConv' and name != 'conv1':
            mask = state[f'backbone.{name}.sparsity.mask']
            assert mask.dtype == torch.bool
            assert_same_kept_weights(mask * module.weight,
                                     sparse_nhwc_mask(module.weight, 2, 4) * module.weight)
    stem = model.conv1.weight
    assert_same_kept_weights(state['backbone.conv1.weight'], stem * sparse_nhwc_mask(stem, 2, 4))
    assert 'stem conv1' in ' '.join(converted.meta['notes'])
    ours = SparseResNet(depth=depth, sparsity=dict(n=2, m=4, spre=None))
    ours.load_state_dict(backbone_state(converted), strict=True)
    ours.eval()
    with torch.no_grad():
        features = ours(X)
        reference = model.stages(X)
        for ref_out, our_out in zip(reference, features):
            assert_close_to_reference(our_out, ref_out)
        assert_close_to_reference(logits_of(converted, features[-1]), model.head(reference[-1]))
    fit = converted.meta['pruned_energy']
    assert fit['kernel_layout'] >= 0.8 * fit['hardware_layout']  # random weights: no layout


def test_srste_trained_in_kernel_layout_is_refused_unless_repruning_allowed():
    """Weights whose small entries follow NM-sparsity's older kernel-dimension groups (not N:M
    in the hardware layout) are refused, with the fix; --allow-repruning converts them."""
    model = nm_resnet(18, seed=3)
    with torch.no_grad():  # what SR-STE's decay does to the pruned weights of that layout
        for module in model.modules():
            if type(module).__name__ == 'SparseConv':
                keep = sparse_nchw_mask(module.weight, 2, 4)
                module.weight.mul_(keep + 0.05 * (1 - keep))
    with pytest.raises(ReferenceFormatError, match='kernel dimension.*--allow-repruning'):
        convert_reference(nm_checkpoint(model, 18))
    converted = convert_reference(nm_checkpoint(model, 18), allow_repruning=True)
    assert any('re-derived in the hardware layout' in note for note in converted.meta['notes'])


# --------------------------------------------------------------------------------------
# Layout detection and refusals (no conversion needed)
# --------------------------------------------------------------------------------------
def stock_state(depth=18):
    """A dense ResNet's state dict: torchvision's keys, which NM-sparsity's ResNet shares."""
    block = NMBottleneck if depth >= 50 else NMBasicBlock
    return NMResNet(block, LAYERS[depth], num_classes=10).state_dict()


def test_reading_strips_module_prefix_and_keeps_container_facts():
    """`module.` is stripped from every key; the container's scalars are kept for meta; a file
    without a state dict is a format error."""
    state, container = _read(
        {'epoch': 3, 'arch': 'ResNet50', 'state_dict': {'module.conv1.weight': torch.ones(1)},
         'optimizer': {}})
    assert list(state) == ['conv1.weight']
    assert container['arch'] == 'ResNet50' and container['epoch'] == 3
    assert 'optimizer' in container['keys']
    with pytest.raises(ReferenceFormatError, match="holds no state dict.*found a list"):
        _read([torch.ones(1)])


def test_layout_and_depth_detection():
    """The three layouts and the five depths are told apart by their keys."""
    stock = stock_state(18)
    assert detect_layout(stock) == 'stock' and detect_depth(stock) == (18, False)
    assert detect_depth(stock_state(50)) == (50, True)
    spre_keys = dict(stock, **{'layer1.0.conv_rep1.weight': torch.zeros(1)})
    assert detect_layout(spre_keys) == 'spre'
    deploy_keys = dict(spre_keys, **{'layer1.0.conv2_deploy.weight': torch.zeros(1)})
    assert detect_layout(deploy_keys) == 'spre-deploy'
    assert detect_layout({'backbone.conv1.weight': torch.zeros(1)}) == 'unknown'


@pytest.mark.parametrize('checkpoint, fmt, message', [
    ({'encoder.weight': torch.zeros(2), 'decoder.bias': torch.zeros(2)}, 'auto',
     r'Unknown checkpoint layout: found keys such as encoder\.weight.*spre, spre-deploy, srste'),
    ('stock', 'auto', r'stock ResNet.*--format srste'),
    ('stock', 'spre', r'Not a SpRe checkpoint.*no SpRe branch'),
    ('stock', 'spre-deploy', r'Not a SpRe checkpoint'),
    ('cifar', 'srste', r'Unsupported depth: 3 stages.*ResNet-18/34/50/101/152'),
], ids=['unknown', 'stock-auto', 'dense-as-spre', 'dense-as-spre-deploy', 'cifar-depth'])
def test_bad_inputs_are_refused_with_the_fix(checkpoint, fmt, message):
    """Unknown layouts, dense ResNets given as SpRe (or unlabelled), unsupported depths."""
    if checkpoint == 'stock':
        checkpoint = stock_state(18)
    elif checkpoint == 'cifar':
        checkpoint = {k: v for k, v in stock_state(18).items() if not k.startswith('layer4')}
    with pytest.raises(ReferenceFormatError, match=message):
        convert_reference(checkpoint, fmt)


def test_spre_file_with_other_nm_is_refused(spre18):
    """A 2:4 SpRe file converted as 1:4: its spatial masks do not match and the error names
    the density that does; its deploy convs hold 2 non-zeros per group of 4; a 1:4 deploy
    file converted as 2:4 is named 1:4."""
    model = spre18.model
    with pytest.raises(ReferenceFormatError, match=r'1:4 \(they match the density of 2:4.*--n/--m'):
        convert_reference(spre_checkpoint(model), n=1, m=4)
    with pytest.raises(ReferenceFormatError, match=r'conv1_deploy is not 1:4.*--n/--m'):
        convert_reference(spre_deploy_state_dict(model), n=1, m=4)
    sparser = spre_deploy_state_dict(model)  # the deploy convs of a 1:4 model, given as 2:4
    for key, value in sparser.items():
        if key.endswith('_deploy.weight'):
            sparser[key] = value * nm_mask(value, 1, 4)
    with pytest.raises(ReferenceFormatError, match=r'at most 1 non-zeros.*--n 1 --m 4'):
        convert_reference(sparser, n=2, m=4)


def test_stale_spatial_mask_is_kept_and_reported(spre18):
    """A stored S that differs from S recomputed (SpRe computes it before the last step) is
    kept as stored, since the reference evaluates with it, and reported."""
    checkpoint = spre_checkpoint(spre18.model)
    key = 'module.layer2.1.conv_rep2.mask'
    checkpoint['state_dict'][key] = 1 - checkpoint['state_dict'][key]
    converted = convert_reference(checkpoint)
    assert torch.equal(converted.state_dict['backbone.layer2.1.conv2.spatial'],
                       checkpoint['state_dict'][key])
    assert converted.meta['spatial_masks']['differ_from_recomputed'] == 1
    assert any('1 stored spatial masks S differ' in line for line in converted.summary)


# --------------------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------------------
class RunsCommandOnLoad:
    """Pickles as a call of os.system: full unpickling would run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.fixture(scope='module')
def converted_file(spre18, tmp_path_factory):
    """The import of a SpRe ResNet-18 training checkpoint: (dst, what the tool prints)."""
    folder = tmp_path_factory.mktemp('import')
    src, dst = folder / 'r18_spre.pth', folder / 'out' / 'r18_converted.pth'
    torch.save(spre_checkpoint(spre18.model), src)
    converted = import_reference_file(str(src), str(dst))
    return dst, describe(converted, str(src), str(dst))


def test_import_writes_checkpoint_and_summary(converted_file):
    """The tool writes {'state_dict', 'meta'} atomically and prints what it found and the
    configs that load the file."""
    dst, printed = converted_file
    assert 'Format: spre' in printed and 'ResNet-18 (BasicBlock), 2:4' in printed
    assert 'Sparse layers: 19 (16 with a SpRe branch); all 2:4 valid' in printed
    assert "init_cfg=dict(type='Pretrained'" in printed and "prefix='backbone.'" in printed
    assert "_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'" in printed
    saved = torch.load(dst, map_location='cpu', weights_only=True)
    assert set(saved) == {'state_dict', 'meta'} and saved['meta']['source_file'] == 'r18_spre.pth'
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no temporary file left


def test_printed_detection_config_loads_the_backbone(converted_file, spre18, tmp_path):
    """The printed detection backbone config (init_cfg with prefix 'backbone.') builds a
    SparseResNet that computes the reference network after init_weights."""
    from mmdet.registry import MODELS
    dst, _ = converted_file
    meta = torch.load(dst, map_location='cpu', weights_only=True)['meta']
    (tmp_path / 'det.py').write_text(usage_snippets(meta, str(dst))['detection'])
    backbone = MODELS.build(Config.fromfile(str(tmp_path / 'det.py')).model.backbone)
    backbone.init_weights()  # loads the checkpoint, then re-derives masks and S from it
    backbone.eval()
    with torch.no_grad():
        features = backbone(X)
    for ref_out, our_out in zip(spre18.stages, features):
        assert_close_to_reference(our_out, ref_out)


def test_printed_mmpretrain_config_evaluates_the_classifier(converted_file, spre18, tmp_path):
    """The printed mmpretrain config builds an ImageClassifier that loads the file strictly
    and returns the reference network's logits."""
    from mmpretrain.registry import MODELS
    dst, _ = converted_file
    saved = torch.load(dst, map_location='cpu', weights_only=True)
    (tmp_path / 'cls.py').write_text(usage_snippets(saved['meta'], str(dst))['mmpretrain'])
    classifier = MODELS.build(Config.fromfile(str(tmp_path / 'cls.py')).model)
    classifier.load_state_dict(saved['state_dict'], strict=True)
    classifier.eval()
    with torch.no_grad():
        assert_close_to_reference(classifier(X, mode='tensor'), spre18.logits)


def test_import_refuses_bad_input_and_writes_nothing(spre18, tmp_path):
    """Unknown layout, dense as SpRe, wrong N:M, unsupported depth, pickled code (never run),
    a non-checkpoint file and an existing output are refused, naming the fix; nothing is
    written."""
    model = spre18.model
    marker = tmp_path / 'code_ran'
    inputs = {
        'unknown.pth': ({'head.weight': torch.zeros(2)}, {}, 'Unknown checkpoint layout'),
        'dense.pth': (stock_state(18), dict(fmt='spre'), 'Not a SpRe checkpoint'),
        'deploy.pth': (spre_deploy_state_dict(model), dict(n=1), 'is not 1:4'),
        'cifar.pth': ({k: v for k, v in stock_state(18).items() if not k.startswith('layer4')},
                      dict(fmt='srste'), 'Unsupported depth'),
        'code.pth': ({'state_dict': stock_state(18), 'hook': RunsCommandOnLoad(marker)}, {},
                     'Refusing to load.*posix.system'),
        'garbage.pth': (b'not a checkpoint', {}, 'corrupt or truncated'),
    }
    for name, (content, options, message) in inputs.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            torch.save(content, tmp_path / name)
        with pytest.raises((ReferenceFormatError, RuntimeError), match=message):
            import_reference_file(str(tmp_path / name), str(tmp_path / 'out.pth'), **options)
        assert not (tmp_path / 'out.pth').exists(), name
    assert not marker.exists()
    (tmp_path / 'out.pth').write_bytes(b'keep')
    with pytest.raises(CheckpointError, match='exists.*--force'):
        import_reference_file(str(tmp_path / 'deploy.pth'), str(tmp_path / 'out.pth'))
    with pytest.raises(CheckpointError, match='not written by this tool'):
        import_reference_file(str(tmp_path / 'deploy.pth'), str(tmp_path / 'out.pth'),
                              force=True)
    assert (tmp_path / 'out.pth').read_bytes() == b'keep'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.')) == []


@pytest.mark.slow  # runs the tool in a process of its own
def test_tool_prints_one_error_line_without_traceback(tmp_path, subprocess_env):
    """From the command line a refusal is `ERROR: ...` on stderr and exit status 1."""
    torch.save({'encoder.weight': torch.zeros(2)}, tmp_path / 'unknown.pth')
    result = run_tool_process([TOOL, tmp_path / 'unknown.pth', '--out', tmp_path / 'out.pth'],
                              subprocess_env, cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith('ERROR: Unknown checkpoint layout')
    assert len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr
    assert not (tmp_path / 'out.pth').exists()
