"""N:M masks, their layout and their validation (docs/methods/srste_asp.md, N:M layout)."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from helpers import (assert_nm_pattern, group_nonzero_counts, iter_groups, reference_nm_mask,
                     reference_unstructured_keep_count)
from spre_mmdet.sparsity import (check_nm, check_nm_tensor, from_groups, nm_incompatibility,
                                 nm_mask, nm_masks, to_groups, unstructured_mask)

PROPERTY = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def nm_weights(draw, allow_ties=False):
    """A conv or linear weight with C a multiple of M, and a valid N:M."""
    m = draw(st.integers(2, 8))
    n = draw(st.integers(1, m - 1))
    out_c = draw(st.integers(1, 4))
    in_c = m * draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2 ** 16))
    if draw(st.booleans()):
        shape = (out_c, in_c, draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 3])))
    else:
        shape = (out_c, in_c)
    gen = torch.Generator().manual_seed(seed)
    if allow_ties:  # few distinct magnitudes with both signs: many ties
        weight = torch.randint(-2, 3, shape, generator=gen).float()
    else:
        weight = torch.randn(shape, generator=gen)
    return weight, n, m


@PROPERTY
@given(nm_weights(allow_ties=True))
def test_mask_is_exactly_nm(case):
    """nm_mask keeps exactly N weights in every group of M input channels."""
    weight, n, m = case
    mask = nm_mask(weight, n, m)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert_nm_pattern(mask, n, m, exact=True)
    assert_nm_pattern(weight * mask, n, m)


@PROPERTY
@given(nm_weights(allow_ties=True))
def test_mask_keeps_top_n_by_magnitude(case):
    """Every kept |w| is >= every dropped |w| of the same group."""
    weight, n, m = case
    mask = nm_mask(weight, n, m).numpy()
    mag = weight.abs().double().numpy()
    for group in iter_groups(weight.shape, m):
        kept = [mag[idx] for idx in group if mask[idx]]
        dropped = [mag[idx] for idx in group if not mask[idx]]
        assert min(kept) >= max(dropped), (group[0], kept, dropped)


@PROPERTY
@given(nm_weights(allow_ties=True))
def test_mask_matches_loop_reference(case):
    """nm_mask equals a per-group loop reference (ties: lower channel index wins)."""
    weight, n, m = case
    np.testing.assert_array_equal(nm_mask(weight, n, m).numpy(),
                                  reference_nm_mask(weight, n, m))


def test_layout_is_along_input_channels_kernel_plane_only():
    """Magnitudes varying only over (i, j) tie within each channel group: the mask is the first
    N channels everywhere, constant over the kernel plane (a kernel-plane grouping would not be).
    """
    out_c, in_c, n, m = 3, 8, 2, 4
    plane = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # distinct per position
    weight = plane.expand(out_c, in_c, 3, 3).clone()
    weight[1] *= -1  # sign must not matter
    mask = nm_mask(weight, n, m)
    expected = (torch.arange(in_c) % m < n).reshape(1, in_c, 1, 1).expand_as(weight)
    assert torch.equal(mask, expected)
    # A grouping over the flattened (C, kh, kw) would keep kernel positions by magnitude:
    wrong = weight.reshape(-1, m).abs().argsort(dim=1, descending=True)[:, :n]
    wrong_mask = torch.zeros(weight.numel() // m, m, dtype=torch.bool)
    wrong_mask.scatter_(1, wrong, True)
    assert not torch.equal(wrong_mask.reshape(weight.shape), mask)


def test_layout_is_along_input_channels_channel_ramp():
    """|W| = (c % M + 1) * f(i, j): keep the last N channels of each group at every (o, i, j)."""
    out_c, in_c, n, m = 2, 12, 1, 4
    torch.manual_seed(0)
    plane = torch.rand(3, 3) * 10 + 0.5
    ramp = (torch.arange(in_c) % m + 1).float()
    signs = torch.randint(0, 2, (out_c, in_c, 3, 3)) * 2 - 1
    weight = ramp.reshape(1, -1, 1, 1) * plane * signs
    mask = nm_mask(weight, n, m)
    expected = (torch.arange(in_c) % m >= m - n).reshape(1, in_c, 1, 1).expand_as(weight)
    assert torch.equal(mask, expected)


def test_layout_linear_groups_along_in_features():
    """A Linear weight varying only along out-features is grouped along in-features."""
    weight = torch.arange(1.0, 9.0).reshape(8, 1).expand(8, 8).clone()
    mask = nm_mask(weight, 2, 4)
    assert torch.equal(mask, (torch.arange(8) % 4 < 2).expand(8, 8))


def test_to_groups_rows_are_consecutive_input_channels():
    """to_groups row r holds W[o, c0:c0+M, i, j] in (o, i, j, c-group) order; from_groups
    inverts it."""
    weight = torch.randn(3, 8, 2, 3)
    groups = to_groups(weight, 4)
    for row, group in enumerate(iter_groups(weight.shape, 4)):
        assert torch.equal(groups[row], torch.stack([weight[idx] for idx in group]))
    assert torch.equal(from_groups(groups, weight.shape), weight)


def test_ties_are_deterministic():
    """All-equal weights keep the first N channels of each group, and the same mask twice."""
    for shape in [(4, 16, 3, 3), (5, 24)]:
        for n, m in [(1, 2), (2, 4), (3, 8)]:
            weight = torch.full(shape, 0.5)
            mask = nm_mask(weight, n, m)
            channel = torch.arange(shape[1]).reshape(1, -1, *([1] * (len(shape) - 2)))
            assert torch.equal(mask, (channel % m < n).expand(shape))
            assert torch.equal(mask, nm_mask(weight.clone(), n, m))
    # equal magnitudes with opposite signs tie as well
    weight = torch.tensor([[-1.0, 1.0, -1.0, 1.0]])
    assert nm_mask(weight, 2, 4).tolist() == [[True, True, False, False]]


@pytest.mark.parametrize('n, m', [(2, 2), (4, 2), (0, 4), (-1, 4), (2.5, 4), (2, 4.5),
                                  (True, 4), ('2', 4)])
def test_invalid_nm_raises_with_fix(n, m):
    """An invalid N:M raises ValueError that names a valid ratio to use."""
    with pytest.raises(ValueError, match=r'n=2, m=4'):
        check_nm(n, m)
    with pytest.raises(ValueError, match=r'n=2, m=4'):
        nm_mask(torch.randn(4, 8), n, m)


def test_check_nm_returns_ints():
    """check_nm normalises integral values to ints."""
    assert check_nm(2.0, 4) == (2, 4)
    assert all(type(v) is int for v in check_nm(2.0, 4.0))


def test_incompatible_channels_reason_and_errors():
    """C % M != 0 gives a reason naming C and M; to_groups and nm_mask raise on it."""
    weight = torch.randn(8, 3, 7, 7)
    reason = nm_incompatibility(weight.shape, 4)
    assert reason is not None and '3 input channels' in reason and 'M=4' in reason
    assert nm_incompatibility((8, 16, 3, 3), 4) is None
    assert nm_incompatibility((8, 6), 4) is not None
    assert nm_incompatibility((8,), 4) is not None
    with pytest.raises(ValueError, match='3 input channels'):
        to_groups(weight, 4)
    with pytest.raises(ValueError, match='3 input channels'):
        nm_mask(weight, 2, 4)
    check = check_nm_tensor(weight, 2, 4)
    assert not check.ok and check.reason == reason and reason in check.explain()


def test_check_nm_tensor_explains_violations():
    """check_nm_tensor counts violating groups and locates them (out, kernel, channels)."""
    weight = torch.zeros(2, 8, 1, 2)
    weight[0, 0:4, 0, 0] = 1.0                   # 4 non-zeros: violation
    weight[1, [4, 6, 7], 0, 1] = torch.tensor([1.0, -2.0, 3.0])  # 3: violation
    weight[1, [0, 3], 0, 0] = 5.0                # 2: fine
    check = check_nm_tensor(weight, 2, 4)
    assert not check.ok and check.reason is None
    assert check.num_groups == 2 * 1 * 2 * 2
    assert check.num_violations == 2
    assert check.examples == [
        'out=0, kernel=(0, 0), in-channels 0..3: 4 non-zeros',
        'out=1, kernel=(0, 1), in-channels 4..7: 3 non-zeros',
    ]
    text = check.explain()
    assert '2/8 groups' in text and check.examples[1] in text
    assert len(check_nm_tensor(weight, 2, 4, max_examples=1).examples) == 1
    # agrees with the independent counter
    assert check.num_violations == int((group_nonzero_counts(weight, 4) > 2).sum())
    weight[0, 0:2, 0, 0] = 0.0
    weight[1, 4, 0, 1] = 0.0
    fixed = check_nm_tensor(weight, 2, 4)
    assert fixed.ok and fixed.num_violations == 0 and 'valid' in fixed.explain()


def test_check_nm_tensor_linear_locations():
    """Linear violations are located by out-feature and in-feature range."""
    weight = torch.zeros(3, 8)
    weight[2, 4:8] = 1.0
    check = check_nm_tensor(weight, 1, 4)
    assert check.num_groups == 6 and check.num_violations == 1
    assert check.examples == ['out=2, in-channels 4..7: 4 non-zeros']


@PROPERTY
@given(nm_weights(), st.data())
def test_check_nm_tensor_agrees_with_loop_counter(case, data):
    """Violation count equals the independent per-group count on random sparse tensors."""
    weight, n, m = case
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(
        data.draw(st.integers(0, 1000)))) < 0.5
    weight = weight * keep
    check = check_nm_tensor(weight, n, m)
    counts = group_nonzero_counts(weight, m)
    assert check.num_groups == counts.size
    assert check.num_violations == int((counts > n).sum())
    assert check.ok == bool((counts <= n).all())


@PROPERTY
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4),
       st.floats(0.01, 1.0), st.integers(0, 2 ** 16))
def test_unstructured_mask_keeps_largest(shape, density, seed):
    """unstructured_mask keeps exactly round(density * numel) weights, the largest |w|."""
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    mask = unstructured_mask(weight, density)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert int(mask.sum()) == reference_unstructured_keep_count(weight.numel(), density)
    mag = weight.abs()
    if mask.any() and (~mask).any():
        assert mag[mask].min() >= mag[~mask].max()


def test_unstructured_mask_ties_and_invalid_density():
    """Ties keep the lowest flat indices; density outside (0, 1] raises ValueError."""
    assert unstructured_mask(torch.ones(2, 3), 0.5).flatten().tolist() == \
        [True, True, True, False, False, False]
    for density in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            unstructured_mask(torch.ones(4), density)


@pytest.mark.parametrize('kind', ['normal', 'ties', 'one_bucket', 'tiny_and_special'])
@pytest.mark.parametrize('density', [1 / 16, 1 / 8, 0.5, 0.9, 1.0])
def test_unstructured_mask_is_the_stable_sort_selection(kind, density):
    """The mask is exactly the first round(density * numel) entries of a stable sort by |w|
    descending (NaN above inf = the largest float, ties by lowest flat index), also for values
    that differ only in their low bits, heavy ties, subnormals, zeros and NaN/inf."""
    gen = torch.Generator().manual_seed(7)
    if kind == 'normal':
        weight = torch.randn(64, 16, 3, 3, generator=gen)
    elif kind == 'ties':
        weight = torch.randint(-3, 4, (64, 16, 3, 3), generator=gen).float()
    elif kind == 'one_bucket':  # every |w| shares its high 16 bits: the low half decides
        weight = 1.0 + torch.randint(0, 64, (64, 16, 3, 3), generator=gen).float() * 2 ** -20
        weight = weight * torch.where(torch.rand(weight.shape, generator=gen) < 0.5, -1.0, 1.0)
    else:
        weight = torch.randn(64, 16, 3, 3, generator=gen) * 1e-40  # subnormal
        special = torch.rand(weight.shape, generator=gen)
        weight[special < 0.05] = float('nan')
        weight[(special >= 0.05) & (special < 0.1)] = float('-inf')
        weight[(special >= 0.1) & (special < 0.3)] = 0.0
        weight[(special >= 0.3) & (special < 0.35)] = torch.finfo(torch.float32).max
    flat = weight.abs().reshape(-1).nan_to_num(nan=float('inf'), posinf=torch.finfo(
        torch.float32).max)
    flat[weight.reshape(-1).isnan()] = float('inf')  # NaN ranks above every number
    order = torch.sort(flat, descending=True, stable=True).indices
    expected = torch.zeros(flat.numel(), dtype=torch.bool)
    expected[order[:reference_unstructured_keep_count(flat.numel(), density)]] = True
    assert torch.equal(unstructured_mask(weight, density).reshape(-1), expected)


def test_nan_weights_still_give_exactly_n():
    """A NaN counts as the largest |w| (lower index first among NaNs); groups keep exactly N."""
    nan = float('nan')
    weight = torch.tensor([[nan, 1.0, 2.0, 3.0], [1.0, nan, nan, 0.0], [nan] * 4])
    assert nm_mask(weight, 2, 4).tolist() == [[True, False, False, True],
                                              [False, True, True, False],
                                              [True, True, False, False]]


# ------------------------------------------------- the comparison-based mask vs a stable sort

def sorted_reference_nm_mask(weight, n, m):
    """Keep the ``n`` largest of every group by a stable descending sort of ``|w|`` as float32
    with NaN -> +inf and +-inf -> the largest float (``torch.nan_to_num``): ties keep the lower
    channel index, NaN ranks above every number."""
    magnitude = torch.nan_to_num(weight.detach().float().abs(), nan=float('inf'))
    out_c, in_c = weight.shape[:2]
    rows = magnitude.reshape(out_c, in_c, -1).permute(0, 2, 1).reshape(-1, m)  # (O, K, C) rows
    order = torch.argsort(rows, dim=1, descending=True, stable=True)
    keep = torch.zeros(rows.shape, dtype=torch.bool).scatter_(1, order[:, :n], True)
    kernel = int(np.prod(weight.shape[2:], dtype=np.int64))
    return keep.reshape(out_c, kernel, in_c).permute(0, 2, 1).reshape(weight.shape)


NM_RATIOS = [(1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (1, 16), (1, 2)]
SHAPES = [lambda m: (6, 2 * m, 3, 3), lambda m: (5, 3 * m), lambda m: (4, m, 1, 1),
          lambda m: (3, 2 * m, 1, 3), lambda m: (2, m, 5, 5)]


def _weights(kind, shape, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind == 'random':
        return torch.randn(shape, generator=gen)
    if kind == 'small_integers':  # few magnitudes, both signs: ties in most groups
        return torch.randint(-2, 3, shape, generator=gen).float()
    if kind == 'all_equal':
        return torch.full(shape, -0.75)
    if kind == 'nan_inf':
        values = torch.tensor([float('nan'), float('inf'), -float('inf'), 3.4028234663852886e38,
                               0.0, -0.0, 1.0, -1.0])
        return values[torch.randint(0, len(values), shape, generator=gen)]
    raise AssertionError(kind)


@pytest.mark.parametrize('n, m', NM_RATIOS)
@pytest.mark.parametrize('shape', SHAPES, ids=['3x3', 'linear', '1x1', '1x3', '5x5'])
@pytest.mark.parametrize('kind', ['random', 'small_integers', 'all_equal', 'nan_inf'])
def test_mask_equals_stable_sort_reference(n, m, shape, kind):
    """nm_mask equals a stable-sort reference on random, tied, all-equal and NaN/inf weights."""
    for seed in range(3):
        weight = _weights(kind, shape(m), seed)
        assert torch.equal(nm_mask(weight, n, m), sorted_reference_nm_mask(weight, n, m))


@PROPERTY
@given(nm_weights(allow_ties=True), st.sampled_from(['float32', 'float16', 'float64']),
       st.booleans())
def test_mask_equals_sort_reference_any_dtype_and_layout(case, dtype, channels_last):
    """nm_mask equals the sort reference for half/double weights and non-contiguous layouts."""
    weight, n, m = case
    weight = weight.to(getattr(torch, dtype))
    if channels_last and weight.dim() == 4:
        weight = weight.contiguous(memory_format=torch.channels_last)
    mask = nm_mask(weight, n, m)
    assert mask.shape == weight.shape and mask.is_contiguous()
    assert torch.equal(mask, sorted_reference_nm_mask(weight, n, m))


def test_mask_of_wide_groups():
    """Groups wider than a byte's range of ranks still match the reference."""
    weight = torch.randint(-3, 4, (3, 512)).float()
    for n in (1, 100, 255):
        assert torch.equal(nm_mask(weight, n, 256), sorted_reference_nm_mask(weight, n, 256))


def test_mask_of_infinities_ranks_nan_first_and_inf_with_the_largest_float():
    """NaN beats +-inf; +-inf ties with the largest finite float (lower channel index wins)."""
    big = 3.4028234663852886e38
    weight = torch.tensor([[big, float('inf'), float('nan'), 1.0],
                           [-float('inf'), big, 2.0, float('nan')]])
    assert nm_mask(weight, 2, 4).tolist() == [[True, False, True, False],
                                              [True, False, False, True]]


@pytest.mark.parametrize('batch_numel', [1, 200, 1 << 23])
def test_masks_of_many_weights_together_equal_each_alone(batch_numel, monkeypatch):
    """nm_masks of mixed shapes, in batches of any size, equals the sort reference per weight."""
    import spre_mmdet.sparsity.nm as nm
    monkeypatch.setattr(nm, 'BATCH_NUMEL', batch_numel)
    gen = torch.Generator().manual_seed(batch_numel)
    weights = [torch.randn(6, 8, 3, 3, generator=gen), torch.randint(-2, 3, (5, 16)).float(),
               torch.randn(4, 8, 1, 1, generator=gen).half(), torch.full((3, 4, 2, 2), 2.0)]
    out = [torch.empty(w.shape, dtype=torch.bool) for w in weights]
    out[0] = out[0].transpose(2, 3).contiguous().transpose(2, 3)  # a non-contiguous target
    masks = nm_masks(weights, 2, 4, out=out)
    for weight, mask, target in zip(weights, masks, out):
        assert mask is target
        assert torch.equal(mask, sorted_reference_nm_mask(weight, 2, 4))


def test_masks_out_must_fit():
    """An out tensor of the wrong shape or dtype is refused with both shapes named."""
    with pytest.raises(ValueError, match='does not fit'):
        nm_masks([torch.randn(4, 8)], 2, 4, out=[torch.empty(4, 4, dtype=torch.bool)])
    with pytest.raises(ValueError, match='does not fit'):
        nm_masks([torch.randn(4, 8)], 2, 4, out=[torch.empty(4, 8)])
