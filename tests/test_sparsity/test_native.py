"""The fused CPU mask kernels: built once, equal to the eager reference, safe to lack."""
import os

import pytest
import torch

from spre_mmdet.sparsity import native, nm_masks
from spre_mmdet.sparsity.lbc import LBCMask
from spre_mmdet.sparsity.spre import spatial_mask

SHAPES = [(64, 32, 3, 3), (16, 8, 1, 1), (8, 24, 7, 7), (40, 16), (12, 16, 1, 3)]


def _weights(seed, m):
    gen = torch.Generator().manual_seed(seed)
    weights = []
    for out_c, in_c, *kernel in SHAPES:
        weight = torch.randn(out_c, in_c // 4 * m, *kernel, generator=gen)
        flat = weight.view(-1)  # ties, zeros of both signs, infinities, NaN
        flat[::11], flat[::13], flat[::17], flat[::19] = 0.5, -0.5, 0.0, -0.0
        flat[::97], flat[::101], flat[::103] = float('inf'), float('nan'), -float('inf')
        weights.append(weight)
    return weights


def _eager(monkeypatch, fn, *args):
    monkeypatch.setenv('SPRE_MMDET_NATIVE', '0')
    try:
        return fn(*args)
    finally:
        monkeypatch.setenv('SPRE_MMDET_NATIVE', '1')


@pytest.mark.parametrize('n, m', [(2, 4), (1, 4), (3, 4), (1, 8), (1, 16), (5, 32), (60, 128)])
@pytest.mark.parametrize('threads', [1, 2, 3])
def test_fused_masks_equal_eager_on_any_split(n, m, threads, monkeypatch):
    """Fused N:M masks of many layers at once equal the eager ones, however the rows are split
    between threads (ranges start and end inside layers)."""
    monkeypatch.setenv('SPRE_MMDET_NATIVE', '1')
    monkeypatch.setattr(native, 'MIN_PER_THREAD', 1)
    monkeypatch.setattr(native, 'SPATIAL_MIN_PER_THREAD', 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        weights = _weights(n * 1000 + m, m)
        fused = [torch.empty(w.shape, dtype=torch.bool) for w in weights]
        assert native.nm_masks(weights, fused, n, m)
    finally:
        torch.set_num_threads(previous)
    eager = _eager(monkeypatch, nm_masks, weights, n, m)
    for f, e in zip(fused, eager):
        assert torch.equal(f, e)


@pytest.mark.parametrize('n, m', [(2, 4), (1, 4), (1, 8), (1, 16), (3, 8)])
@pytest.mark.parametrize('threads', [1, 2, 3])
def test_fused_spatial_mask_equals_eager_on_any_split(n, m, threads, monkeypatch):
    """Fused S equals the eager S however the weights are split between threads (the kept
    ties must be the lowest flat indices, whichever range holds them)."""
    monkeypatch.setattr(native, 'MIN_PER_THREAD', 1)
    monkeypatch.setattr(native, 'SPATIAL_MIN_PER_THREAD', 1)
    previous = torch.get_num_threads()
    gen = torch.Generator().manual_seed(n * 1000 + m)
    cases = [torch.randn(32, 2 * m, 3, 3, generator=gen),
             torch.randint(-2, 3, (16, m, 3, 3), generator=gen).float(),  # many ties
             torch.full((4, m, 5, 5), 0.25)] + [w for w in _weights(m, m) if w.dim() == 4]
    for weight in cases:
        expected = _eager(monkeypatch, spatial_mask, weight, n, m)
        torch.set_num_threads(threads)
        try:
            fused = native.spatial_mask(weight, n, m)
            assert torch.equal(fused.float().reshape(weight.shape[2:]), expected)
        finally:
            torch.set_num_threads(previous)


@pytest.mark.parametrize('threads', [1, 2, 3])
@pytest.mark.parametrize('shape', [(32, 16, 3, 3), (8, 16, 5, 5), (12, 16, 1, 3), (7, 8, 3, 3)])
def test_s_from_the_last_threshold_equals_eager_through_training_like_steps(shape, threads,
                                                                         monkeypatch):
    """With the last threshold as a hint, S equals the eager S at every step: one pass while
    the threshold stays in the window, two after a jump out of it (both counted), and the
    hint always ends as this weight's threshold."""
    monkeypatch.setattr(native, 'MIN_PER_THREAD', 1)
    monkeypatch.setattr(native, 'SPATIAL_MIN_PER_THREAD', 1)
    previous = torch.get_num_threads()
    gen = torch.Generator().manual_seed(threads)
    weight = torch.randn(shape, generator=gen)
    hint = native.ThresholdHint()
    steps = [1e-4] * 4 + [0.5] + [1e-4] * 3  # small moves, one jump, small moves
    for step in steps:
        expected = _eager(monkeypatch, spatial_mask, weight, 2, 4)
        torch.set_num_threads(threads)
        try:
            fused = native.spatial_mask(weight, 2, 4, hint)
        finally:
            torch.set_num_threads(previous)
        assert torch.equal(fused.float().reshape(shape[2:]), expected)
        magnitudes = torch.sort(weight.abs().flatten(), descending=True).values
        assert hint.key == int(magnitudes[weight.numel() // 2 - 1].view(torch.int32))
        weight = weight * (1 + step * torch.randn(shape, generator=gen))
    assert hint.two_pass == 2 and hint.one_pass == len(steps) - 2  # the first and the jump


def test_s_from_a_hint_keeps_the_lowest_ties_and_ranks_nan_and_inf(monkeypatch):
    """Ties at the threshold inside the window go to the lowest flat indices, and NaN/inf
    (above the window) count as kept, exactly as the eager S; a hint at infinity or NaN is
    not used (two passes)."""
    gen = torch.Generator().manual_seed(7)
    weight = torch.randn(32, 16, 3, 3, generator=gen)
    flat = weight.view(-1)
    flat[::97], flat[::101], flat[::103] = float('inf'), float('nan'), -float('inf')
    magnitude = flat.abs().nan_to_num(float('inf'))
    threshold = magnitude.sort(descending=True).values[flat.numel() // 2 - 1]
    below = torch.nonzero(magnitude < threshold).squeeze(1)
    # 40 more at the threshold, at any positions: the keep-th largest stays, now a tie of 41
    flat[below[torch.randperm(len(below), generator=gen)[:40]]] = threshold
    hint = native.ThresholdHint()
    for _ in range(3):
        assert torch.equal(native.spatial_mask(weight, 2, 4, hint).float().reshape(3, 3),
                           _eager(monkeypatch, spatial_mask, weight, 2, 4))
    assert hint.one_pass == 2 and hint.key == int(threshold.view(torch.int32))
    hint = native.ThresholdHint()
    hint.key = 0x7f800000  # +inf
    weight = torch.randn(8, 8, 3, 3, generator=gen)
    native.spatial_mask(weight, 2, 4, hint)
    assert hint.two_pass == 1 and hint.key < 0x7f800000


def test_the_window_follows_the_last_move_of_the_threshold():
    """The next window is twice the threshold's last relative move, within WINDOWS; the
    first is the middle one, and a threshold leaving zero gives the largest."""
    def key(value):
        return int(torch.tensor(value).view(torch.int32))
    low, first, high = native.WINDOWS
    hint = native.ThresholdHint()
    assert hint.window == first
    hint.update(key(1.0), one_pass=False)
    assert hint.window == first and (hint.one_pass, hint.two_pass) == (0, 1)
    hint.update(key(1.004), one_pass=True)
    assert hint.window == pytest.approx(0.008, rel=1e-4) and hint.one_pass == 1
    hint.update(key(1.004), one_pass=True)
    assert hint.window == low
    hint.update(key(2.0), one_pass=False)
    assert hint.window == high
    hint.update(key(0.0), one_pass=False)
    hint.update(key(0.5), one_pass=False)
    assert hint.window == high


def test_a_window_holding_too_many_keys_falls_back_to_two_passes(monkeypatch):
    """If the window collects more keys than its buffer holds (a layer of a few distinct
    magnitudes), the exact two-pass selection decides, with the same S."""
    weight = torch.full((16, 16, 3, 3), 0.5)
    weight.view(-1)[::5] = 0.25
    hint = native.ThresholdHint()
    for _ in range(2):
        assert torch.equal(native.spatial_mask(weight, 2, 4, hint).float().reshape(3, 3),
                           _eager(monkeypatch, spatial_mask, weight, 2, 4))
    assert hint.two_pass == 2 and hint.one_pass == 0


def test_kernels_larger_than_the_s_kernel_takes_get_s_from_the_eager_code(monkeypatch):
    """A 9x9 kernel (81 positions) is beyond the fused S: native says so, spatial_mask still
    gives the reference S."""
    monkeypatch.setenv('SPRE_MMDET_NATIVE', '1')
    weight = torch.randn(4, 8, 9, 9, generator=torch.Generator().manual_seed(2))
    assert native.spatial_mask(weight, 2, 4) is None
    assert torch.equal(spatial_mask(weight, 2, 4), _eager(monkeypatch, spatial_mask, weight, 2, 4))


def test_weights_the_kernels_cannot_read_take_the_eager_path(monkeypatch):
    """Half, non-contiguous and the rest get their masks (and the magnitude hook) from the
    eager code; contiguous float32 ones from the kernel, without a hook call."""
    monkeypatch.setenv('SPRE_MMDET_NATIVE', '1')
    gen = torch.Generator().manual_seed(3)
    plain = torch.randn(8, 16, 3, 3, generator=gen)
    half = torch.randn(8, 16, 3, 3, generator=gen).half()
    strided = torch.randn(16, 8, 3, 3, generator=gen).transpose(0, 1)
    assert native.handles(plain) and not native.handles(half)
    assert not native.handles(strided)
    hooked = []
    masks = nm_masks([plain, half, strided], 2, 4,
                     magnitude_hook=lambda i, magnitude: hooked.append(i))
    assert hooked == [1, 2]
    expected = _eager(monkeypatch, nm_masks, [plain, half, strided], 2, 4)
    for got, want in zip(masks, expected):
        assert torch.equal(got, want)


def test_library_is_built_once_into_its_cache(tmp_path, monkeypatch):
    """The first use compiles into the cache; a fresh process state loads the same file."""
    monkeypatch.setenv('SPRE_MMDET_CACHE', str(tmp_path))
    monkeypatch.setattr(native, '_library', None)
    monkeypatch.setattr(native, '_failure', None)
    assert native.library() is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == '.so'
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, '_library', None)
    assert native.library() is not None
    assert [p.stat().st_mtime_ns for p in tmp_path.iterdir()] == [stamp]


def test_without_a_compiler_the_eager_code_runs_with_one_warning(tmp_path, monkeypatch):
    """A failing build warns once, naming the reason, and the masks still come out right."""
    monkeypatch.setenv('SPRE_MMDET_CACHE', str(tmp_path))
    monkeypatch.setattr(native, '_compiler', lambda: None)
    monkeypatch.setattr(native, '_library', None)
    monkeypatch.setattr(native, '_failure', None)
    weight = torch.randn(8, 16, 3, 3)
    with pytest.warns(UserWarning, match='no C compiler found'):
        mask = nm_masks([weight], 2, 4)[0]
    assert native.library() is None and 'no C compiler' in native.unavailable_reason()
    assert list(tmp_path.iterdir()) == []  # nothing half-built left behind
    assert torch.equal(mask, _eager(monkeypatch, nm_masks, [weight], 2, 4)[0])
    assert torch.equal(spatial_mask(weight, 2, 4), _eager(monkeypatch, spatial_mask, weight, 2, 4))


def test_a_compile_error_is_reported_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """A compiler that fails leaves the cache empty and its message in the reason."""
    compiler = tmp_path / 'bad-cc'
    compiler.write_text('#!/bin/sh\necho "bad-cc: broken on purpose" >&2\nexit 1\n')
    compiler.chmod(0o755)
    cache = tmp_path / 'cache'
    monkeypatch.setenv('SPRE_MMDET_CACHE', str(cache))
    monkeypatch.setattr(native, '_compiler', lambda: str(compiler))
    monkeypatch.setattr(native, '_library', None)
    monkeypatch.setattr(native, '_failure', None)
    with pytest.warns(UserWarning, match='broken on purpose'):
        assert native.library() is None
    assert os.listdir(cache) == []


def test_disabled_turns_the_kernels_off_and_restores_the_setting(monkeypatch):
    """native.disabled() runs its block on the eager code and restores the variable after."""
    monkeypatch.setenv('SPRE_MMDET_NATIVE', '1')
    with native.disabled():
        assert native.library() is None
    assert os.environ['SPRE_MMDET_NATIVE'] == '1' and native.library() is not None
    monkeypatch.delenv('SPRE_MMDET_NATIVE')
    with native.disabled():
        assert not native.enabled()
    assert 'SPRE_MMDET_NATIVE' not in os.environ


def test_turned_off_by_the_environment(monkeypatch):
    """SPRE_MMDET_NATIVE=0 turns the kernels off and says so."""
    monkeypatch.setenv('SPRE_MMDET_NATIVE', '0')
    assert native.library() is None
    assert native.unavailable_reason() == 'turned off (SPRE_MMDET_NATIVE=0)'
    assert not native.nm_masks([torch.randn(4, 8)], [torch.empty(4, 8, dtype=torch.bool)], 2, 4)


@pytest.mark.parametrize('kernel', [(3, 3), (5, 5), (1, 3)])
@pytest.mark.parametrize('threads', [1, 3])
def test_fold_equals_the_tensor_expression_and_its_gradients(kernel, threads, monkeypatch):
    """SpRe's fold K = main * a + (rep * (mask * spatial)) * b equals the tensor expression
    bit for bit, and so do its gradients for main and rep; those for the per-channel scales
    agree to the float32 rounding of sums of up to 200 terms (1e-5 absolute, 1e-4 relative); any
    split of the output channels."""
    from spre_mmdet.sparsity.spre import FoldBranches
    monkeypatch.setattr(native, 'MIN_PER_THREAD', 1)
    monkeypatch.setattr(native, 'SPATIAL_MIN_PER_THREAD', 1)
    gen = torch.Generator().manual_seed(kernel[1] * 10 + threads)
    shape = (12, 8, *kernel)
    main = torch.randn(shape, generator=gen).requires_grad_()
    rep = torch.randn(shape, generator=gen).requires_grad_()
    mask = torch.rand(shape, generator=gen) > 0.5
    spatial = (torch.rand(kernel, generator=gen) > 0.4).float()
    scales = [torch.rand(12, generator=gen).requires_grad_() for _ in range(2)]
    grad = torch.randn(shape, generator=gen)
    assert native.can_fold(main, rep, mask, spatial, *scales)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused = FoldBranches.apply(main, rep, mask, spatial, *scales)
        fused_grads = torch.autograd.grad(fused, (main, rep, *scales), grad)
    finally:
        torch.set_num_threads(previous)
    expected = main * scales[0].view(-1, 1, 1, 1) + \
        (rep * (mask * spatial)) * scales[1].view(-1, 1, 1, 1)
    expected_grads = torch.autograd.grad(expected, (main, rep, *scales), grad)
    assert torch.equal(fused, expected)
    assert torch.equal(fused_grads[0], expected_grads[0])
    assert torch.equal(fused_grads[1], expected_grads[1])
    for got, want in zip(fused_grads[2:], expected_grads[2:]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('decay', [2e-4, 0.5, 0.0])
@pytest.mark.parametrize('threads', [1, 3])
def test_fold_with_srste_equals_srste_then_the_expression(decay, threads, monkeypatch):
    """Given SR-STE's latent weight, the fold equals srste(W, mask, decay) followed by the
    tensor expression bit for bit, forward and the gradients of W and rep (the sparse-refined
    term included; none when decay is 0), with infinities, NaN and signed zeros among the
    weights and gradients; the scale gradients to float32 rounding where finite (channel 0
    holds the non-finite inputs); any channel split."""
    from spre_mmdet.sparsity.spre import FoldBranches
    from spre_mmdet.sparsity.srste import srste
    monkeypatch.setattr(native, 'MIN_PER_THREAD', 1)
    monkeypatch.setattr(native, 'SPATIAL_MIN_PER_THREAD', 1)
    gen = torch.Generator().manual_seed(threads)
    shape = (12, 8, 3, 3)
    weight = torch.randn(shape, generator=gen)
    weight.view(-1)[:6] = torch.tensor([float('inf'), -float('inf'), float('nan'), 0.0, -0.0,
                                        1e-30])
    weight.requires_grad_()
    rep = torch.randn(shape, generator=gen).requires_grad_()
    mask = torch.rand(shape, generator=gen) > 0.5
    spatial = (torch.rand(3, 3, generator=gen) > 0.4).float()
    scales = [torch.rand(12, generator=gen).requires_grad_() for _ in range(2)]
    grad = torch.randn(shape, generator=gen)
    grad.view(-1)[6:9] = torch.tensor([-0.0, 0.0, float('inf')])
    assert native.can_fold(weight, rep, mask, spatial, *scales)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused = FoldBranches.apply(weight, rep, mask, spatial, *scales, decay)
        fused_grads = torch.autograd.grad(fused, (weight, rep, *scales), grad)
    finally:
        torch.set_num_threads(previous)
    expected = srste(weight, mask, decay) * scales[0].view(-1, 1, 1, 1) + \
        (rep * (mask * spatial)) * scales[1].view(-1, 1, 1, 1)
    expected_grads = torch.autograd.grad(expected, (weight, rep, *scales), grad)

    def same_bits(got, want):  # NaN where NaN, every other value to the bit (signed zeros)
        nan = torch.isnan(want)
        return torch.equal(torch.isnan(got), nan) and \
            torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))

    assert same_bits(fused, expected)
    assert same_bits(fused_grads[0], expected_grads[0])
    assert same_bits(fused_grads[1], expected_grads[1])
    if decay:  # the sparse-refined term is there: the pruned weights get decay * W on top
        pruned = ~mask & torch.isfinite(weight.detach()) & (weight.detach() != 0)
        assert pruned.any()
        assert not torch.equal(fused_grads[0][pruned], (grad * scales[0].view(-1, 1, 1, 1))[pruned])
    # the scale gradients: channel 0 holds the infinities and NaN (non-finite sums, compared
    # as such), the other eleven are finite and agree to float32 rounding
    for got, want in zip(fused_grads[2:], expected_grads[2:]):
        finite = torch.isfinite(want)
        assert finite.sum() == 11 and not finite[0]
        assert torch.equal(torch.isfinite(got), finite)
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-5)


def test_fold_takes_only_what_it_can_read(monkeypatch):
    """can_fold takes float32 weights, a bool mask, a (kh, kw) spatial mask and O scales, all
    contiguous on the CPU; it refuses any other dtype, shape or layout per operand, and a
    turned-off library."""
    weight = torch.randn(4, 2, 3, 3)
    good = dict(main=weight, rep=weight.clone(), mask=weight > 0, spatial=torch.ones(3, 3),
                main_scale=torch.rand(4), rep_scale=torch.rand(4))
    assert native.can_fold(**good)
    bad = dict(main=[weight.half(), weight.transpose(0, 1), weight[:, :1], weight > 0],
               rep=[weight > 0, weight.double()],
               mask=[(weight > 0).float(), (weight > 0).to(torch.uint8), weight[:2] > 0],
               spatial=[torch.ones(9), torch.ones(3, 3, dtype=torch.bool), torch.ones(3, 3).t()
                        .contiguous()[:, :2]],
               main_scale=[torch.rand(5), torch.rand(4, 1), torch.rand(4).double()],
               rep_scale=[torch.rand(8)[::2], torch.rand(3)])
    for role, values in bad.items():
        for value in values:
            assert not native.can_fold(**{**good, role: value}), (role, value.shape, value.dtype)
    monkeypatch.setenv('SPRE_MMDET_NATIVE', '0')
    assert not native.can_fold(**good)


@pytest.mark.parametrize('threads', [1, 3])
def test_the_portable_build_gives_the_same_masks_s_fold_and_lbc(threads, tmp_path,
                                                                 monkeypatch):
    """The build a compiler without SSE2 or vector shuffles gets (-DSPRE_MMDET_PORTABLE: mask
    bytes stored lane by lane, 1x1 groups ranked one at a time, LBC's scores gathered lane by
    lane) gives the eager masks and S, and the same fold (plain and with SR-STE, forward and
    backward) and LBC removal steps as the default build, on any thread split."""
    monkeypatch.setenv('SPRE_MMDET_CACHE', str(tmp_path))
    monkeypatch.setattr(native, 'MIN_PER_THREAD', 1)
    monkeypatch.setattr(native, 'SPATIAL_MIN_PER_THREAD', 1)
    portable = native._build(('-DSPRE_MMDET_PORTABLE',))
    default = native.library()
    gen = torch.Generator().manual_seed(threads)
    weights = _weights(threads, 4) + [torch.randn(64, 32, 3, 3, generator=gen)]
    previous = torch.get_num_threads()
    for n in (1, 2, 3):
        monkeypatch.setattr(native, '_library', portable)
        torch.set_num_threads(threads)
        try:
            masks = [torch.empty(w.shape, dtype=torch.bool) for w in weights]
            assert native.nm_masks(weights, masks, n, 4)
            hint = native.ThresholdHint()
            spatial = [native.spatial_mask(weights[-1] * (1 + 1e-4 * step), n, 4, hint)
                       for step in range(3)]
        finally:
            torch.set_num_threads(previous)
        assert hint.one_pass == 2
        monkeypatch.setattr(native, '_library', default)
        for got, want in zip(masks, _eager(monkeypatch, nm_masks, weights, n, 4)):
            assert torch.equal(got, want)
        for step, got in enumerate(spatial):
            want = _eager(monkeypatch, spatial_mask, weights[-1] * (1 + 1e-4 * step), n, 4)
            assert torch.equal(got.float().reshape(3, 3), want)
    main, rep = weights[-1], weights[-1].flip(0)
    operands = (main, rep, main > 0, torch.ones(3, 3), torch.rand(64, generator=gen),
                torch.rand(64, generator=gen))
    grad = torch.randn(main.shape, generator=gen)
    runs = [dict(), dict(srste_decay=2e-4), dict(grad=grad), dict(grad=grad, srste_decay=2e-4)]
    folded = [native.fold(*operands, **run) for run in runs]
    monkeypatch.setattr(native, '_library', portable)
    for run, want in zip(runs, folded):
        got = native.fold(*operands, **run)
        for got_part, want_part in zip(*((got, want) if 'grad' in run else ([got], [want]))):
            assert torch.equal(got_part, want_part)
    for n, m in ((2, 4), (2, 8)):  # six subsets (the 2:4 loads) and 28
        states = []
        for library in (portable, default):
            monkeypatch.setattr(native, '_library', library)
            learner = LBCMask(torch.Size((8, 16, 3, 3)), n, m, t_i=0, t_f=8)
            scores_gen = torch.Generator().manual_seed(m)
            weight = torch.randn(8, 16, 3, 3, generator=scores_gen)
            torch.set_num_threads(threads)
            try:
                for iteration in range(10):
                    with torch.no_grad():
                        fresh = torch.rand(learner.scores.shape, generator=scores_gen)
                        learner.scores.copy_(torch.where(learner.alive, fresh, learner.scores))
                    learner.refresh(weight, iteration)
            finally:
                torch.set_num_threads(previous)
            states.append({k: v.clone() for k, v in learner.state_dict().items()})
        for key, value in states[0].items():
            assert torch.equal(value, states[1][key]), (n, m, key)
