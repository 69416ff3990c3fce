"""SpRe: the spatial mask S, the training-time block and its fold (docs/methods/spre.md)."""
import copy
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from helpers import assert_nm_pattern, reference_nm_mask, reference_spatial_mask
from spre_mmdet.sparsity import (SpReBatchNorm2d, SpReConv2d, refresh_masks, nm_mask,
                                 reparameterize, spatial_mask, sparsify_layer)

PLUS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
CROSS = [(0, 1), (1, 0), (1, 2), (2, 1)]
CORNERS = [(0, 0), (0, 2), (2, 0), (2, 2)]


def _plus_weight(out_c=2, in_c=4, seed=0):
    """2:4 case with a known S: the centre holds the largest weights, the cross the next ones
    (the few cross weights unstructured pruning removes are spread over the four positions),
    the corners tiny ones. Keep 50%: centre + 7/8 of each cross position."""
    gen = torch.Generator().manual_seed(seed)
    per_pos = out_c * in_c
    weight = torch.empty(out_c, in_c, 3, 3)
    ramp = torch.arange(per_pos, dtype=torch.float32).reshape(out_c, in_c)
    weight[:, :, 1, 1] = 10 + 0.01 * ramp
    for p, (i, j) in enumerate(CROSS):
        weight[:, :, i, j] = 5 + 0.001 * p + 0.1 * ramp
    for p, (i, j) in enumerate(CORNERS):
        weight[:, :, i, j] = 0.1 + 0.001 * p + 0.0001 * ramp
    signs = torch.randint(0, 2, weight.shape, generator=gen) * 2 - 1
    return weight * signs


def _corner_weight(out_c=2, in_c=4, seed=1):
    """The transpose situation: corners and centre large, cross tiny."""
    weight = _plus_weight(out_c, in_c, seed)
    cross = weight[:, :, [0, 1, 1, 2], [1, 0, 2, 1]].clone()
    corners = weight[:, :, [0, 0, 2, 2], [0, 2, 0, 2]].clone()
    weight[:, :, [0, 1, 1, 2], [1, 0, 2, 1]] = corners
    weight[:, :, [0, 0, 2, 2], [0, 2, 0, 2]] = cross
    return weight


def test_spatial_mask_plus_shape():
    """2:4 with large centre/cross weights: S is 1 exactly at the centre and cross."""
    weight = _plus_weight()
    assert torch.equal(spatial_mask(weight, 2, 4), PLUS)
    np.testing.assert_array_equal(reference_spatial_mask(weight, 2, 4), PLUS.numpy())
    corners = 1 - PLUS
    corners[1, 1] = 1
    assert torch.equal(spatial_mask(_corner_weight(), 2, 4), corners)


def test_spatial_mask_pruned_fraction_equal_to_p_is_not_kept():
    """S uses a strict s_ij < p: a position pruned exactly at rate p gets S = 0 (1:3 case)."""
    weight = torch.full((1, 3, 3, 3), 0.01)
    weight[0, :, 1, 1] = 9.0                      # 3/3 kept: s = 0
    for (i, j) in CROSS:
        weight[0, 0, i, j] = 5.0                  # 1/3 kept: s = 2/3 == p
    weight[0, :2, 0, 0] = 3.0                     # 2/3 kept: s = 1/3
    weight = weight + torch.arange(27.0).reshape(weight.shape) * 1e-4  # no ties
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(reference_spatial_mask(weight, 1, 3), expected.numpy())
    assert torch.equal(spatial_mask(weight, 1, 3), expected)


@settings(max_examples=60, deadline=None,  # mask_kernels: one path for all examples
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(2, 8).flatmap(lambda m: st.tuples(st.integers(1, m - 1), st.just(m))),
       st.integers(1, 4), st.integers(1, 3), st.sampled_from([(3, 3), (1, 3), (5, 5)]),
       st.integers(0, 2 ** 16))
def test_spatial_mask_matches_exact_reference(nm, out_c, groups, kernel, seed):
    """spatial_mask equals an exact-arithmetic numpy implementation of steps 1-4 of S."""
    n, m = nm
    weight = torch.randn(out_c, groups * m, *kernel, generator=torch.Generator().manual_seed(seed))
    np.testing.assert_array_equal(spatial_mask(weight, n, m).numpy(),
                                  reference_spatial_mask(weight, n, m))


class Block(nn.Module):
    """conv3x3 (no bias) + BN, the pair SpRe replaces."""

    def __init__(self, in_c=8, out_c=8, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, 3, stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x):
        return self.bn(self.conv(x))


def _spre_block(seed=0, rep_gamma=0.0, **kwargs):
    torch.manual_seed(seed)
    block = Block()
    assert sparsify_layer(block, 'conv', 'srste', 2, 4, norm_name='bn', rep_gamma=rep_gamma,
                          **kwargs) is None
    assert isinstance(block.conv, SpReConv2d) and isinstance(block.bn, SpReBatchNorm2d)
    return block


def test_spatial_all_ones_before_first_refresh():
    """S is all ones until the first refresh, then the mask S of the latent weight."""
    block = _spre_block()
    assert torch.equal(block.conv.spatial, torch.ones(3, 3))
    with torch.no_grad():
        block.conv.weight.copy_(_plus_weight(8, 8))
    block.conv.refresh(0)
    assert torch.equal(block.conv.spatial, PLUS)


def test_rep_weight_lies_inside_main_mask():
    """W_rep * B * S is zero wherever B (or S) is zero, so it is N:M itself."""
    block = _spre_block()
    with torch.no_grad():
        block.conv.weight.copy_(_plus_weight(8, 8))
    block.conv.refresh(0)
    rep = block.conv.rep_weight().detach()
    mask = block.conv.sparsity.mask
    assert torch.equal(mask, torch.from_numpy(reference_nm_mask(block.conv.weight, 2, 4)))
    assert (rep[~mask] == 0).all()
    assert (rep[:, :, PLUS == 0] == 0).all()
    assert torch.equal(rep, block.conv.weight_rep.detach() * mask * PLUS)
    assert_nm_pattern(rep, 2, 4)


def test_no_gradient_through_b_and_s():
    """B and S are constants: the main weight gets no gradient from the rep branch, and the rep
    weight's gradient is zero off B * S."""
    block = _spre_block(rep_gamma=1.0, decay=0.0)
    block.conv.refresh(0)
    with torch.no_grad():
        block.bn.weight.zero_()  # the main branch contributes a constant: loss from rep only
    x = torch.randn(4, 8, 6, 6)
    (block(x) * torch.randn(4, 8, 6, 6)).sum().backward()
    assert block.conv.sparsity.mask.grad is None and block.conv.spatial.grad is None
    assert torch.equal(block.conv.weight.grad, torch.zeros_like(block.conv.weight))
    support = block.conv.sparsity.mask * block.conv.spatial
    grad = block.conv.weight_rep.grad
    assert (grad[support == 0] == 0).all() and (grad[support != 0] != 0).any()


def test_zero_rep_gamma_equals_main_branch():
    """rep_gamma=0: the SpRe block equals a plain SR-STE conv + BN (train and eval, grads too)."""
    torch.manual_seed(3)
    dense = Block()
    spre, plain = Block(), Block()
    spre.load_state_dict(dense.state_dict())
    plain.load_state_dict(dense.state_dict())
    sparsify_layer(spre, 'conv', 'srste', 2, 4, norm_name='bn', rep_gamma=0.0)
    sparsify_layer(plain, 'conv', 'srste', 2, 4)
    refresh_masks(spre, 0)
    refresh_masks(plain, 0)
    x = torch.randn(4, 8, 6, 6) * 2 + 1
    y_spre, y_plain = spre(x), plain(x)
    torch.testing.assert_close(y_spre, y_plain)
    torch.testing.assert_close(spre.bn.running_mean, plain.bn.running_mean)
    torch.testing.assert_close(spre.bn.running_var, plain.bn.running_var)
    target = torch.randn_like(y_spre)  # (not sum(y**2): through train-mode BN that is constant)
    (y_spre * target).sum().backward()
    (y_plain * target).sum().backward()
    torch.testing.assert_close(spre.conv.weight.grad, plain.conv.weight.grad)
    spre.eval(), plain.eval()
    torch.testing.assert_close(spre(x), plain(x))


def _train_spre(block, steps=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(block.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    block.train()
    for it in range(steps):
        refresh_masks(block, it)
        x = torch.randn(8, 8, 7, 7, generator=gen) * 3 + 0.5
        opt.zero_grad()
        block(x).sub(1.0).pow(2).mean().backward()
        opt.step()
    block.eval()


def test_fold_equals_training_block_in_eval():
    """After training with train-mode BN, deploy conv+BN == training block (eval) on the same
    input; the folded weight is N:M; the deploy BN is identity plus bias."""
    block = _spre_block(rep_gamma=0.7)
    _train_spre(block)
    assert not torch.allclose(block.bn.rep_bn.running_var, torch.ones(8))  # non-trivial stats
    assert not torch.allclose(block.bn.running_mean, torch.zeros(8))
    x = torch.randn(3, 8, 9, 9) * 2
    with torch.no_grad():
        y_train = block(x)
        deployed = reparameterize(block)
        y_deploy = deployed(x)
    rel_err = float((y_train - y_deploy).abs().max() / y_train.abs().max())
    assert rel_err < 1e-5, rel_err  # measured 2-3e-7 (float32, 5 seeds)
    conv, bn = deployed.conv, deployed.bn
    assert type(conv) is nn.Conv2d and conv.bias is None and type(bn) is nn.BatchNorm2d
    assert_nm_pattern(conv.weight, 2, 4)
    assert ((conv.weight != 0) <= block.conv.sparsity.mask).all()
    assert torch.equal(bn.weight.detach(), torch.ones(8))
    assert torch.equal(bn.running_mean, torch.zeros(8))
    torch.testing.assert_close(bn.running_var + bn.eps, torch.ones(8), rtol=0, atol=1e-7)
    z = torch.randn(2, 8, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(bn(z), z + bn.bias.reshape(1, -1, 1, 1))


def test_spatial_interval_respected():
    """S is recomputed only at iterations that are multiples of spatial_interval."""
    block = _spre_block(spatial_interval=3)
    plus, corner = _plus_weight(8, 8), _corner_weight(8, 8)
    corner_s = spatial_mask(corner, 2, 4)
    assert not torch.equal(corner_s, PLUS)
    with torch.no_grad():
        block.conv.weight.copy_(plus)
    block.conv.refresh(0)
    assert torch.equal(block.conv.spatial, PLUS)
    with torch.no_grad():
        block.conv.weight.copy_(corner)
    for it in (1, 2):
        block.conv.refresh(it)
        assert torch.equal(block.conv.spatial, PLUS), it
    block.conv.refresh(3)
    assert torch.equal(block.conv.spatial, corner_s)



def test_spatial_changes_counts_flipped_entries_of_s():
    """spatial_changes adds, at each refresh after the first, the entries where the new S
    differs from the old one (the first S, from all ones, is not a change)."""
    block = _spre_block(spatial_interval=1)
    plus, corner = _plus_weight(8, 8), _corner_weight(8, 8)
    corner_s = spatial_mask(corner, 2, 4)
    flips = int((corner_s != PLUS).sum())
    assert flips > 0
    with torch.no_grad():
        block.conv.weight.copy_(plus)
    block.conv.refresh(0)
    assert block.conv.spatial_changes == 0
    block.conv.refresh(1)  # same weight: S unchanged
    assert block.conv.spatial_changes == 0
    with torch.no_grad():
        block.conv.weight.copy_(corner)
    block.conv.refresh(2)
    assert block.conv.spatial_changes == flips
    with torch.no_grad():
        block.conv.weight.copy_(plus)
    block.conv.refresh(3)
    assert block.conv.spatial_changes == 2 * flips

def test_spre_dense_checkpoint_rederives_spatial():
    """Loading a dense conv-BN checkpoint does not report S or B missing; S is derived later."""
    block = _spre_block()
    block.conv.refresh(0)
    dense = Block()
    with torch.no_grad():
        dense.conv.weight.copy_(_plus_weight(8, 8))
    result = block.load_state_dict(dense.state_dict(), strict=False)
    assert 'conv.spatial' not in result.missing_keys
    assert 'conv.sparsity.mask' not in result.missing_keys
    assert set(result.missing_keys) <= {'conv.weight_rep', 'bn.rep_bn.weight', 'bn.rep_bn.bias',
                                        'bn.rep_bn.running_mean', 'bn.rep_bn.running_var',
                                        'bn.rep_bn.num_batches_tracked'}
    block.conv.refresh(5)  # off-interval is fine: derived state is due
    assert torch.equal(block.conv.spatial, PLUS)


def test_spre_argument_errors():
    """SpRe refuses a biased conv, spatial_interval < 1, and direct to_deploy."""
    with pytest.raises(ValueError, match='bias-free'):
        SpReConv2d.from_dense(nn.Conv2d(8, 8, 3, bias=True), 'srste', 2, 4)
    with pytest.raises(ValueError, match='spatial_interval'):
        SpReConv2d.from_dense(nn.Conv2d(8, 8, 3, bias=False), 'srste', 2, 4, spatial_interval=0)
    with pytest.raises(RuntimeError, match='fold'):
        _spre_block().conv.to_deploy()


def _unpaired_copy(block):
    """The same block with the conv-BN link removed: always the two-branch path."""
    twin = copy.deepcopy(block)
    del twin.conv.__dict__['_paired_norm']
    return twin


def test_eval_statistics_pair_runs_as_one_conv_with_same_output_and_gradients():
    """With both BNs on running statistics (norm_eval), the pair runs as one O-channel conv;
    output and every gradient (W, W_rep, both BNs' gamma and beta) equal the two-branch path
    (float32, summed in another order: within 1e-5 of each tensor's largest magnitude)."""
    block = _spre_block(rep_gamma=0.7)
    _train_spre(block)  # non-trivial running statistics, S and masks
    refresh_masks(block, 6)
    block.zero_grad(set_to_none=True)
    twin = _unpaired_copy(block)
    x = torch.randn(4, 8, 9, 9) * 2
    assert block.conv(x).shape[1] == 8 and twin.conv(x).shape[1] == 16
    target = torch.randn(4, 8, 9, 9)
    outputs = []
    for model in (block, twin):
        y = model(x)
        (y * target).sum().backward()
        outputs.append(y.detach())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0,
                               atol=1e-5 * outputs[1].abs().max().item())
    grads = [(block.conv.weight, twin.conv.weight), (block.conv.weight_rep, twin.conv.weight_rep),
             (block.bn.weight, twin.bn.weight), (block.bn.bias, twin.bn.bias),
             (block.bn.rep_bn.weight, twin.bn.rep_bn.weight),
             (block.bn.rep_bn.bias, twin.bn.rep_bn.bias)]
    for ours, reference in grads:
        assert reference.grad.abs().sum() > 0
        torch.testing.assert_close(ours.grad, reference.grad, rtol=0,
                                   atol=1e-5 * reference.grad.abs().max().item())


def test_training_statistics_keep_two_branches_and_link_survives_deepcopy():
    """Train-mode BN: the conv emits [main | rep] (2*O channels); a deep copy links its conv to
    its own BN copy; a fused output reaching a train-mode BN is refused."""
    block = _spre_block()
    block.train()
    x = torch.randn(2, 8, 5, 5)
    assert block.conv(x).shape[1] == 16
    twin = copy.deepcopy(block)
    assert twin.conv.__dict__['_paired_norm'] is twin.bn
    assert sum(module is block.bn for module in block.modules()) == 1  # not a submodule
    assert not any('paired' in key for key in block.state_dict())
    with pytest.raises(RuntimeError, match='fused'):
        block.bn(torch.randn(2, 8, 5, 5))


def test_spatial_refresh_follows_optimizer_steps_and_loads():
    """S is recomputed from the current weight at every due refresh: after an optimizer step,
    a load_state_dict and a write through ``.data``."""
    block = _spre_block(seed=2)
    opt = torch.optim.Adam(block.parameters(), lr=0.5, fused=True)
    refresh_masks(block, 0)
    block.train()
    block(torch.randn(2, 8, 6, 6)).pow(2).mean().backward()
    opt.step()
    refresh_masks(block, 1)
    np.testing.assert_array_equal(block.conv.spatial.numpy(),
                                  reference_spatial_mask(block.conv.weight, 2, 4))
    with torch.no_grad():
        block.conv.weight.data.copy_(_plus_weight(8, 8))
    refresh_masks(block, 2)
    assert torch.equal(block.conv.spatial, PLUS)
    other = _spre_block(seed=3)
    block.load_state_dict(other.state_dict())
    refresh_masks(block, 3)
    np.testing.assert_array_equal(block.conv.spatial.numpy(),
                                  reference_spatial_mask(other.conv.weight, 2, 4))


# ------------------------------------------------------------ S against a sort, with ties and NaN

def sorted_reference_spatial_mask(weight, n, m):
    """S from a full ranking of |w| (weight's dtype): NaN first, then larger, then lower flat
    index; the round(n/m * numel) first are kept, then steps 3-4 of S in integers."""
    flat = weight.detach().abs().flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (flat[i] == flat[i], -flat[i]
                                                    if flat[i] == flat[i] else 0.0, i))
    keep = torch.zeros(len(flat), dtype=torch.bool)
    keep[order[:int(round(n / m * len(flat)))]] = True
    out_c, in_c = weight.shape[:2]
    kept = keep.reshape(out_c * in_c, -1).sum(0)
    total = out_c * in_c
    return ((total - kept) * m < (m - n) * total).to(weight.dtype).reshape(weight.shape[2:])


def _spatial_weights(kind, shape, gen):
    if kind == 'random':
        return torch.randn(shape, generator=gen)
    if kind == 'position_scales':  # trained-like: positions differ in magnitude
        return torch.randn(shape, generator=gen) * torch.rand(shape[2:], generator=gen) * 3
    if kind == 'near_bound':  # every position keeps about n/m: the counts decide S
        scales = 1 + 0.01 * torch.randn(shape[2:], generator=gen)
        return torch.randn(shape, generator=gen) * scales
    if kind == 'small_integers':
        return torch.randint(-4, 5, shape, generator=gen).float()
    if kind == 'nan_inf':
        weight = torch.randn(shape, generator=gen)
        spots = torch.randint(0, weight.numel(), (weight.numel() // 5,), generator=gen)
        weight.view(-1)[spots] = torch.tensor([float('nan'), float('inf'), -float('inf'),
                                               3.4e38])[torch.randint(0, 4, spots.shape,
                                                                      generator=gen)]
        return weight
    raise AssertionError(kind)


@pytest.mark.parametrize('n, m', [(2, 4), (1, 4), (3, 4), (2, 8), (1, 2)])
@pytest.mark.parametrize('shape', [(24, 32, 3, 3), (16, 8, 5, 5), (12, 16, 1, 3), (8, 8, 1, 1)],
                         ids=['3x3', '5x5', '1x3', '1x1'])
@pytest.mark.parametrize('kind', ['random', 'position_scales', 'near_bound', 'small_integers',
                                  'nan_inf'])
def test_spatial_mask_equals_full_ranking_with_ties_and_nan(n, m, shape, kind):
    """spatial_mask equals S from a full ranking (ties by flat index, NaN first) in every case."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr((n, m, shape, kind)).encode()))
    for _ in range(2):
        weight = _spatial_weights(kind, shape, gen)
        assert torch.equal(spatial_mask(weight, n, m), sorted_reference_spatial_mask(weight, n, m))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float64])
def test_spatial_mask_other_dtypes(dtype):
    """spatial_mask equals the full ranking for half, bfloat16 and double weights."""
    gen = torch.Generator().manual_seed(3)
    for kind in ('random', 'near_bound', 'small_integers'):
        weight = _spatial_weights(kind, (32, 32, 3, 3), gen).to(dtype)
        assert torch.equal(spatial_mask(weight, 2, 4), sorted_reference_spatial_mask(weight, 2, 4))


def test_refresh_with_nan_and_inf_weights():
    """NaN and inf weights rank as in the references for both B and S."""
    block = _spre_block(seed=5)
    with torch.no_grad():
        block.conv.weight[0, 0, 0, 0] = float('nan')
        block.conv.weight[1, 1, 1, 1] = float('inf')
    refresh_masks(block, 0)
    assert torch.equal(block.conv.spatial, sorted_reference_spatial_mask(block.conv.weight, 2, 4))
    assert torch.equal(block.conv.sparsity.mask, nm_mask(block.conv.weight, 2, 4))


def test_s_through_sgd_steps_equals_the_reference():
    """Through SGD steps, each refresh's S equals the sorted reference."""
    block = _spre_block(seed=4, rep_gamma=1.0)
    opt = torch.optim.SGD(block.parameters(), lr=1e-4, momentum=0.9)
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(4))
    for iteration in range(6):
        refresh_masks(block, iteration)
        assert torch.equal(block.conv.spatial,
                           sorted_reference_spatial_mask(block.conv.weight.detach(), 2, 4))
        opt.zero_grad()
        block(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_masks_are_exact_inside_autocast(dtype):
    """Called inside autocast, B and S are what they are outside it: the counts stay exact
    (integers), whatever autocast does to matrix products."""
    gen = torch.Generator().manual_seed(7)
    weight = _spatial_weights('near_bound', (64, 256, 3, 3), gen)
    with torch.autocast('cpu', dtype=dtype):
        inside = spatial_mask(weight, 2, 4), nm_mask(weight, 2, 4)
    assert torch.equal(inside[0], sorted_reference_spatial_mask(weight, 2, 4))
    assert torch.equal(inside[1], nm_mask(weight, 2, 4))
