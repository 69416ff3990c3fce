"""LBC mask learner (docs/methods/lbc.md): gradient, schedule, permanence, resume, export."""
import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spre_mmdet.sparsity import (NotFinalError, SparseConv2d, SparseLinear, build_learner,
                                 check_nm_tensor, from_groups, nm_mask, reparameterize, to_groups)
from spre_mmdet.sparsity.lbc import LBCMask, cubic_survivors, subset_matrix


def make_conv(out_channels=4, in_channels=8, k=3, n=2, m=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    conv = nn.Conv2d(in_channels, out_channels, k, padding=k // 2, bias=False)
    return SparseConv2d.from_dense(conv, 'lbc', n, m, **kwargs)


def group_index(o, c, i, j, shape, m):
    """Hardware-layout group of W[o, c, i, j], written out by hand (docs/methods/srste_asp.md,
    N:M layout)."""
    _, channels, kh, kw = shape
    return ((o * kh + i) * kw + j) * (channels // m) + c // m


def test_registered_by_method_name():
    """'lbc' builds an LBCMask through build_learner."""
    learner = build_learner('lbc', torch.Size((4, 8, 3, 3)), 2, 4, t_i=0, t_f=10)
    assert isinstance(learner, LBCMask)
    assert learner.scores.shape == (4 * 3 * 3 * 2, 6)
    assert learner.subsets.shape == (6, 4)
    assert 'subsets' not in learner.state_dict()  # P is non-persistent


def test_subset_matrix_is_combinations_order():
    """P lists the C(M, N) subsets in itertools.combinations order."""
    p = subset_matrix(2, 4)
    expected = [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1],
                [0, 0, 1, 1]]
    assert p.tolist() == expected
    assert subset_matrix(4, 8).shape == (70, 8)
    assert (subset_matrix(4, 8).sum(1) == 4).all()


def test_initial_mask_dense_and_forward_is_dense_weight():
    """Before any removal every soft value is 1, the mask is all ones and W~ == W."""
    for n, m in ((2, 4), (4, 8)):
        layer = make_conv(n=n, m=m, t_i=0, t_f=10)
        learner = layer.sparsity
        assert torch.allclose(learner.soft(), torch.ones_like(layer.weight))
        assert learner.mask.all()
        assert torch.equal(learner(layer.weight), layer.weight)
        x = torch.randn(2, 8, 5, 5)
        assert torch.equal(layer(x), F.conv2d(x, layer.weight, padding=1))
        layer.refresh(0)  # t_i: K survivors, still dense
        assert learner.mask.all() and learner.alive.all()


def test_score_gradient_matches_spec_formula():
    """dL/dalpha[g,k] = sum_{j in k} dL/dW~_j W_j (0 for dead subsets), dL/dW = dL/dW~ * mask."""
    layer = make_conv(out_channels=3, in_channels=8, k=3, t_i=0, t_f=8)
    learner = layer.sparsity
    layer.refresh(3)  # remove some subsets so that the mask is not dense
    assert 1 < int(learner.alive.sum(dim=1).max()) < 6 and not learner.mask.all()
    with torch.no_grad():
        learner.scores.add_(torch.rand_like(learner.scores))  # varied scores
    x = torch.randn(2, 8, 6, 6)
    weight_used = learner(layer.weight)
    weight_used.retain_grad()
    F.conv2d(x, weight_used, padding=1).square().sum().backward()
    grad_tilde, weight = weight_used.grad, layer.weight.detach()
    combos = [list(c) for c in itertools.combinations(range(4), 2)]
    expected = torch.zeros_like(learner.scores)
    shape = weight.shape
    for o in range(shape[0]):
        for c in range(shape[1]):
            for i in range(shape[2]):
                for j in range(shape[3]):
                    g = group_index(o, c, i, j, shape, 4)
                    for k, combo in enumerate(combos):
                        if c % 4 in combo and learner.alive[g, k]:
                            expected[g, k] += grad_tilde[o, c, i, j] * weight[o, c, i, j]
    assert torch.allclose(learner.scores.grad, expected, rtol=1e-5, atol=1e-6)
    assert (learner.scores.grad[~learner.alive] == 0).all()
    assert torch.equal(layer.weight.grad, grad_tilde * learner.mask)


@pytest.mark.parametrize('n,m,expected', [
    # K = 6: survivors(t) = 1 + ceil(5 * (1 - p)^3)
    #   p=0: 6; p=.25: 5*.421875=2.11 -> 4; p=.5: 5*.125=.625 -> 2; p=.75: .078 -> 2;
    #   p=.99: 2; p=1: 1
    (2, 4, {0: 6, 25: 4, 50: 2, 75: 2, 99: 2, 100: 1}),
    # K = 70: 69*.421875=29.11 -> 31; 69*.125=8.625 -> 10; 69*.015625=1.078 -> 3;
    #   69*1e-6 -> 2; 1
    (4, 8, {0: 70, 25: 31, 50: 10, 75: 3, 99: 2, 100: 1}),
])
def test_schedule_survivor_counts_and_final_nm(n, m, expected):
    """Survivor counts follow the cubic schedule (docs/methods/lbc.md) at t_i, 25%, 50%, 75%,
    99%, t_f; the end is N:M."""
    t_i, t_f = 20, 120  # progress p at iteration t_i + 100 p
    K = math.comb(m, n)
    layer = make_conv(out_channels=4, in_channels=16, n=n, m=m, t_i=t_i, t_f=t_f)
    learner = layer.sparsity
    assert learner.survivors(0) == K and learner.survivors(t_i - 1) == K
    assert learner.survivors(t_f + 50) == 1
    for step, count in expected.items():
        assert cubic_survivors(t_i + step, K, t_i, t_f) == count
        layer.refresh(t_i + step)
        assert (learner.alive.sum(1) == count).all(), step
        groups_nonzero = learner.mask.permute(0, 2, 3, 1).reshape(-1, m).sum(1)
        assert (groups_nonzero >= n).all()
        assert learner.is_final == (count == 1)
    assert check_nm_tensor(layer.deploy_weight(), n, m).ok
    assert (learner.mask.permute(0, 2, 3, 1).reshape(-1, m).sum(1) == n).all()


def test_bad_schedule_arguments_raise_with_fix():
    """t_f <= t_i, negative or fractional iterations raise ValueError naming the fix."""
    shape = torch.Size((4, 8, 3, 3))
    with pytest.raises(ValueError, match='t_f > t_i'):
        LBCMask(shape, 2, 4, t_i=10, t_f=10)
    with pytest.raises(ValueError, match='t_i=0'):
        LBCMask(shape, 2, 4, t_i=-1, t_f=10)
    with pytest.raises(ValueError, match='iterations'):
        LBCMask(shape, 2, 4, t_i=0, t_f=2.5)
    with pytest.raises(ValueError, match='divisible'):
        LBCMask(torch.Size((4, 3, 3, 3)), 2, 4)
    with pytest.raises(ValueError):
        LBCMask(shape, 4, 4)


def train_steps(layer, optimizer, iterations, seed=100):
    """Refresh + forward/backward + step for each iteration, with data fixed by iteration."""
    for it in iterations:
        layer.refresh(it)
        gen = torch.Generator().manual_seed(seed + it)
        x = torch.randn(2, layer.in_channels, 5, 5, generator=gen)
        target = torch.randn(2, layer.out_channels, 5, 5, generator=gen)
        optimizer.zero_grad()
        F.mse_loss(layer(x), target).backward()
        optimizer.step()


def test_removed_subsets_never_come_back():
    """A removed subset stays dead under SGD momentum + weight decay pushing its score up,
    and across a state_dict save/load."""
    layer = make_conv(t_i=0, t_f=20)
    learner = layer.sparsity
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    train_steps(layer, optimizer, range(0, 6))
    dead = ~learner.alive.clone()
    assert dead.any()
    mask_before = learner.mask.clone()
    # push the dead scores far above everything: big score + momentum driving it further up
    with torch.no_grad():
        learner.scores[dead] = 100.0
    optimizer.state[learner.scores]['momentum_buffer'][dead] = -1000.0
    optimizer.step()  # grad of dead scores is 0: momentum and decay alone move them
    assert learner.scores[dead].min() > learner.scores[learner.alive].max()
    assert cubic_survivors(7, 6, 0, 20) < cubic_survivors(5, 6, 0, 20)  # 7 removes subsets
    train_steps(layer, optimizer, range(7, 10))
    assert not (learner.alive & dead).any()
    assert not (learner.mask & ~mask_before).any()  # the mask only shrinks
    # resume: a fresh layer loading the state keeps them dead
    state = copy.deepcopy(layer.state_dict())
    with torch.no_grad():
        state['sparsity.scores'][dead] = 1e6
    fresh = make_conv(seed=1, t_i=0, t_f=20)
    fresh.load_state_dict(state)
    assert not fresh.sparsity.needs_init
    assert torch.equal(fresh.sparsity.alive, learner.alive)
    assert torch.equal(fresh.sparsity.mask, learner.mask)
    for it in range(9, 21):
        fresh.refresh(it)
        assert not (fresh.sparsity.alive & dead).any()
    assert fresh.sparsity.is_final


def test_final_scores_frozen_and_skipped_by_optimizer():
    """After t_f the scores have requires_grad False and no grad, so SGD/AdamW leave them."""
    for opt_cls, kwargs in ((torch.optim.SGD, dict(momentum=0.9, weight_decay=0.1)),
                            (torch.optim.AdamW, dict(weight_decay=0.1))):
        layer = make_conv(t_i=0, t_f=4)
        optimizer = opt_cls(layer.parameters(), lr=0.1, **kwargs)
        train_steps(layer, optimizer, range(0, 4))
        layer.refresh(4)
        learner = layer.sparsity
        assert learner.is_final and not learner.scores.requires_grad
        assert learner.scores.grad is None
        scores, mask = learner.scores.detach().clone(), learner.mask.clone()
        weight = layer.weight.detach().clone()
        train_steps(layer, optimizer, range(5, 8))
        assert torch.equal(learner.scores, scores) and torch.equal(learner.mask, mask)
        assert not torch.equal(layer.weight, weight)  # the weights still train
        assert check_nm_tensor(layer.deploy_weight(), 2, 4).ok


@pytest.mark.parametrize('n,m', [(2, 4), (4, 8)])
def test_resume_mid_schedule_equals_uninterrupted(n, m):
    """Save model+optimizer mid-schedule, restore into fresh objects, continue: bit-identical."""
    t_i, t_f, total, cut = 2, 10, 14, 5

    def build(seed=0):
        layer = make_conv(out_channels=4, in_channels=8, n=n, m=m, seed=seed, t_i=t_i, t_f=t_f)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.05, momentum=0.9,
                                    weight_decay=1e-3)
        return layer, optimizer

    reference, ref_opt = build()
    train_steps(reference, ref_opt, range(total))

    first, first_opt = build()
    train_steps(first, first_opt, range(cut))
    model_state = copy.deepcopy(first.state_dict())
    optim_state = copy.deepcopy(first_opt.state_dict())
    resumed, resumed_opt = build(seed=7)  # different init: everything must come from the state
    resumed.load_state_dict(model_state)
    resumed_opt.load_state_dict(optim_state)
    train_steps(resumed, resumed_opt, range(cut, total))

    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert resumed.sparsity.is_final and reference.sparsity.is_final
    assert resumed.sparsity.scores.requires_grad == reference.sparsity.scores.requires_grad
    assert check_nm_tensor(resumed.deploy_weight(), n, m).ok


def test_resume_after_final_restores_frozen_state():
    """Loading a finished LBC state marks the learner final and freezes the scores."""
    layer = make_conv(t_i=0, t_f=3)
    for it in range(4):
        layer.refresh(it)
    fresh = make_conv(seed=3, t_i=0, t_f=3)
    assert fresh.sparsity.scores.requires_grad and not fresh.sparsity.is_final
    fresh.load_state_dict(layer.state_dict())
    assert fresh.sparsity.is_final and not fresh.sparsity.scores.requires_grad
    assert torch.equal(fresh.deploy_weight(), layer.deploy_weight())


def test_dense_checkpoint_loads_without_missing_keys():
    """A dense conv checkpoint loads strictly; scores/alive/mask start at the initial state."""
    torch.manual_seed(0)
    dense = nn.Conv2d(8, 4, 3, bias=True)
    layer = make_conv(seed=5, t_i=0, t_f=10)
    layer.bias = nn.Parameter(torch.zeros(4))
    result = layer.load_state_dict(dense.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert layer.sparsity.needs_init
    layer.refresh(0)
    assert layer.sparsity.mask.all()
    assert torch.allclose(layer.sparsity.scores, torch.full_like(layer.sparsity.scores, 1 / 3))


def test_not_final_export_refused_and_finish_by_magnitude():
    """reparameterize raises NotFinalError before t_f; finish_by_magnitude makes it exactly N:M."""
    for n, m in ((2, 4), (4, 8)):
        model = nn.Sequential(make_conv(in_channels=16, n=n, m=m, t_i=0, t_f=100), nn.ReLU())
        model[0].refresh(30)
        assert not model[0].sparsity.is_final
        with pytest.raises(NotFinalError):
            reparameterize(model)
        with pytest.raises(NotFinalError, match='finish_by_magnitude'):
            model[0].sparsity.deploy_mask(model[0].weight)
        alive_before = model[0].sparsity.alive.clone()
        model[0].sparsity.finish_by_magnitude(model[0].weight)
        assert not (model[0].sparsity.alive & ~alive_before).any()
        deployed = reparameterize(model)
        assert type(deployed[0]) is nn.Conv2d
        assert check_nm_tensor(deployed[0].weight, n, m).ok
        x = torch.randn(1, 16, 5, 5)
        assert torch.allclose(deployed(x), model(x))


def test_equal_scores_fall_back_to_magnitude():
    """With untrained (equal) scores the final LBC mask is the magnitude N:M mask."""
    for n, m in ((2, 4), (4, 8)):
        layer = make_conv(in_channels=16, n=n, m=m, t_i=0, t_f=5)
        for it in range(6):
            layer.refresh(it)
        assert torch.equal(layer.sparsity.mask, nm_mask(layer.weight, n, m))


def test_linear_layer():
    """LBC works on a Linear weight (groups along in-features)."""
    torch.manual_seed(0)
    layer = SparseLinear.from_dense(nn.Linear(16, 6), 'lbc', 2, 4, t_i=0, t_f=4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    for it in range(6):
        layer.refresh(it)
        optimizer.zero_grad()
        layer(torch.randn(3, 16)).square().sum().backward()
        optimizer.step()
    assert check_nm_tensor(layer.deploy_weight(), 2, 4).ok


def test_optim_wrapper_paramwise_zero_decay_for_scores():
    """mmengine custom_keys '.sparsity.scores' gives the scores weight_decay 0, weights keep it."""
    from mmengine.optim import DefaultOptimWrapperConstructor
    model = nn.Sequential(make_conv(t_i=0, t_f=10), nn.ReLU(),
                          nn.Sequential(make_conv(in_channels=4, out_channels=8, t_i=0,
                                                  t_f=10)))
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper',
             optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4)),
        paramwise_cfg=dict(custom_keys={'.sparsity.scores': dict(decay_mult=0.0)}))
    optimizer = constructor(model).optimizer
    scores = {id(model[0].sparsity.scores), id(model[2][0].sparsity.scores)}
    seen = 0
    for group in optimizer.param_groups:
        for param in group['params']:
            if id(param) in scores:
                seen += 1
                assert group['weight_decay'] == 0.0
            else:
                assert group['weight_decay'] == 1e-4
    assert seen == 2


def test_spre_block_with_lbc_main_branch():
    """SpRe uses LBC's union mask as B during training and folds to exact N:M after t_f."""
    from spre_mmdet.sparsity import sparsify_layer
    torch.manual_seed(0)
    block = nn.Sequential()
    block.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
    block.bn = nn.BatchNorm2d(8)
    assert sparsify_layer(block, 'conv', 'lbc', 2, 4, norm_name='bn', rep_gamma=0.5,
                          t_i=0, t_f=4) is None
    optimizer = torch.optim.SGD(block.parameters(), lr=0.05, momentum=0.9)
    for it in range(6):
        block.conv.refresh(it)
        assert torch.equal(block.conv.rep_weight() != 0,
                           (block.conv.weight_rep * block.conv.sparsity.mask
                            * block.conv.spatial) != 0)
        optimizer.zero_grad()
        block.bn(block.conv(torch.randn(4, 8, 6, 6))).square().mean().backward()
        optimizer.step()
    block.eval()
    deployed = reparameterize(block)
    assert check_nm_tensor(deployed.conv.weight, 2, 4).ok
    x = torch.randn(2, 8, 6, 6)
    assert torch.allclose(deployed.bn(deployed.conv(x)), block.bn(block.conv(x)), atol=1e-5)


def test_unfrozen_final_scores_get_zero_gradient():
    """freeze_scores=False: after t_f the scores keep requires_grad and get an exact zero grad."""
    layer = make_conv(t_i=0, t_f=2, freeze_scores=False)
    for it in range(3):
        layer.refresh(it)
    assert layer.sparsity.is_final and layer.sparsity.scores.requires_grad
    layer(torch.randn(1, 8, 4, 4)).sum().backward()
    assert layer.sparsity.scores.grad is not None
    assert (layer.sparsity.scores.grad == 0).all()


def test_set_schedule_validates_and_keeps_removed_subsets():
    """set_schedule changes t_i/t_f (validated) without reviving removed subsets."""
    layer = make_conv(t_i=0, t_f=10)
    layer.refresh(5)
    alive = layer.sparsity.alive.clone()
    with pytest.raises(ValueError, match='t_f > t_i'):
        layer.sparsity.set_schedule(50, 20)
    layer.sparsity.set_schedule(100, 200)
    layer.refresh(6)
    assert torch.equal(layer.sparsity.alive, alive)
    layer.refresh(200)
    assert layer.sparsity.is_final


# -------------------------------------------- removal without sorting equals the full ranking

def ranking_reference_keep(learner, weight, count):
    """``alive`` after keeping ``count`` subsets per group by a plain per-group sort: higher
    score (dead and NaN as -inf), then larger sum |W_j| (the same float32 matmul as the
    learner), then lower index; alive subsets outside the first ``count`` are removed."""
    magnitude = (to_groups(weight.detach().abs(), learner.m).float() @ learner.subsets.t())
    scores = torch.nan_to_num(learner.scores.detach().float().masked_fill(
        ~learner.alive, float('-inf')), nan=float('-inf'))
    alive = learner.alive.clone()
    for g in range(alive.shape[0]):
        order = sorted(range(alive.shape[1]),
                       key=lambda k: (-scores[g, k].item(), -magnitude[g, k].item(), k))
        keep = torch.zeros(alive.shape[1], dtype=torch.bool)
        keep[order[:count]] = True
        alive[g] &= keep
    return alive


def _lbc_state(shape, n, m, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    learner = LBCMask(shape, n, m, t_i=0, t_f=10)
    weight = torch.randn(shape, generator=gen)
    learner.refresh(weight, 0)
    with torch.no_grad():
        if kind == 'random':
            learner.scores.copy_(torch.rand(learner.scores.shape, generator=gen))
        elif kind == 'ties':  # few score values: the minimum is often shared
            learner.scores.copy_(torch.randint(0, 3, learner.scores.shape, generator=gen))
        elif kind == 'nan_inf':
            learner.scores.copy_(torch.rand(learner.scores.shape, generator=gen))
            spots = torch.rand(learner.scores.shape, generator=gen)
            learner.scores[spots < 0.05] = float('nan')
            learner.scores[(spots > 0.05) & (spots < 0.1)] = -float('inf')
        elif kind == 'equal':  # untrained scores: the magnitude decides everything
            pass
    return learner, weight


@pytest.mark.parametrize('n, m', [(2, 4), (1, 4), (2, 8)])
@pytest.mark.parametrize('shape', [(6, 16, 3, 3), (10, 16)], ids=['conv', 'linear'])
@pytest.mark.parametrize('kind', ['random', 'ties', 'nan_inf', 'equal'])
def test_removal_steps_equal_the_full_ranking(n, m, shape, kind):
    """Through the schedule (one subset at a time, or several in one refresh), each refresh
    keeps exactly what ranking every group in full keeps; dead scores are 0 and the mask is the
    union of the alive subsets."""
    learner, weight = _lbc_state(shape, n, m, kind, seed=n * 100 + m)
    steps = [1, 2, 3, 5, 7, 10] if learner.num_subsets > 6 else range(1, 11)
    for iteration in steps:
        count = learner.survivors(iteration)
        if count < int(learner.alive.sum(dim=1).max()):
            expected = ranking_reference_keep(learner, weight, count)
        else:  # no removal due: nothing changes
            expected = learner.alive.clone()
        learner.refresh(weight, iteration)
        assert torch.equal(learner.alive, expected), iteration
        assert int(learner.alive.sum(dim=1).max()) == count  # NaN scores may leave fewer
        assert (learner.scores.detach()[~learner.alive] == 0).all()
        union = (learner.alive.float() @ learner.subsets) != 0
        assert torch.equal(learner.mask, from_groups(union, weight.shape))
    assert learner.is_final
