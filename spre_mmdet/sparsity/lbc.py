"""LBC: learning best combination for N:M masks (Zhang et al., NeurIPS 2022, arXiv 2206.06662).

docs/methods/lbc.md. Every group ``g`` of ``M`` weights (the hardware layout of :mod:`.nm`) has
``K = C(M, N)`` candidate subsets of ``N`` weights, each with a learnable score
``alpha[g, k]``. A fixed 0/1 matrix ``P`` (``K x M``, subsets in ``itertools.combinations``
order) gives the score mass per weight::

    soft[g, :] = (alpha[g, :] * alive[g, :]) @ P
    mask       = 1[soft != 0]           forward; straight-through in backward
    W~         = W * mask

    dL/dalpha[g, k] = sum_{j in subset k} dL/dW~_j * W_j        (alive subsets; 0 for dead)
    dL/dW           = dL/dW~ * mask

Subsets are removed hard along a cubic schedule (:meth:`LBCMask.survivors`): the lowest-scored
alive subsets go first; an explicit ``alive`` buffer keeps them out for good (momentum, weight
decay or a resume cannot bring them back). At ``t_f`` one subset per group is left and the layer
is exactly N:M; the scores are then frozen (``requires_grad=False``, ``grad=None``), which makes
torch optimizers skip them (no momentum or weight-decay drift).

The forward mask is the :attr:`mask` buffer, i.e. the union of the alive subsets
(``(alive @ P) != 0``). That equals ``soft != 0`` as long as no alive score is exactly zero,
and it changes only in :meth:`LBCMask.refresh`, like every other learner's mask.

Plain PyTorch: nothing here imports mmengine or mmdet.
"""
import functools
import itertools
import math
from fractions import Fraction
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, NotFinalError
from .learners import MaskLearner, register_learner
from .nm import from_groups, to_groups
from .srste import apply_mask


def subset_matrix(n: int, m: int) -> torch.Tensor:
    """``P`` (``C(m, n) x m``, float 0/1): row ``k`` marks the ``k``-th subset of ``n`` out of
    ``m`` positions, in ``itertools.combinations`` (lexicographic) order."""
    combos = list(itertools.combinations(range(m), n))
    matrix = torch.zeros(len(combos), m)
    for k, combo in enumerate(combos):
        matrix[k, list(combo)] = 1.0
    return matrix


@functools.lru_cache(maxsize=1024)  # every layer of a model asks it at every refresh
def cubic_survivors(iteration: int, num_subsets: int, t_i: int, t_f: int) -> int:
    """The removal schedule (docs/methods/lbc.md, gradual removal), computed exactly (rational
    arithmetic, no float rounding)::

        survivors(t) = 1 + ceil((K - 1) * (1 - (t - t_i) / (t_f - t_i)) ** 3)

    ``K`` before ``t_i``, ``1`` from ``t_f`` on.
    """
    if iteration <= t_i:
        return num_subsets
    if iteration >= t_f:
        return 1
    remaining = Fraction(t_f - iteration, t_f - t_i)
    return 1 + math.ceil((num_subsets - 1) * remaining ** 3)


class LBCFunction(torch.autograd.Function):
    """``W * mask`` with the LBC straight-through backward to the subset scores."""

    @staticmethod
    def forward(ctx, weight, scores, mask, alive, subsets, m, zero_scores_grad=False):
        ctx.save_for_backward(weight, mask, alive, subsets)
        ctx.m = m
        ctx.zero_scores_grad = zero_scores_grad
        return apply_mask(weight, mask)

    @staticmethod
    def backward(ctx, grad_output):
        weight, mask, alive, subsets = ctx.saved_tensors
        grad_weight = grad_scores = None
        if ctx.needs_input_grad[0]:
            grad_weight = apply_mask(grad_output, mask)
        if ctx.needs_input_grad[1] and ctx.zero_scores_grad:
            grad_scores = torch.zeros(alive.shape, dtype=subsets.dtype, device=alive.device)
        elif ctx.needs_input_grad[1]:
            # dL/dsoft_j = dL/dW~_j * W_j (straight through the indicator), then through P.
            grad_soft = to_groups(grad_output * weight, ctx.m).to(subsets.dtype)
            grad_scores = (grad_soft @ subsets.t()) * alive
        return grad_weight, grad_scores, None, None, None, None, None


@register_learner
class LBCMask(MaskLearner):
    """LBC mask learner (docs/methods/lbc.md), method name ``'lbc'``.

    Args:
        weight_shape, n, m: as :class:`MaskLearner`.
        t_i: iteration at which subset removal starts (0-based, inclusive; ``K`` survive there).
            Default 0.
        t_f: iteration at which one subset per group is left and the mask is exactly N:M.
            The training loop must call :meth:`refresh` with an iteration ``>= t_f`` before
            training ends (e.g. ``t_f`` at 1/3 .. 3/4 of the run so the final mask is
            fine-tuned). Default 1000.
        span: instead of ``t_i``/``t_f``: ``(begin, end)`` as fractions of the run, e.g.
            ``(0, 0.5)``: removal during the first half, exactly N:M for the second. The
            iterations are fixed by :meth:`resolve_schedule` once the run's length is known
            (``SparsityHook`` does so before training), so the schedule fits any run length.
        freeze_scores: at the end of the schedule set ``scores.requires_grad = False`` and
            ``grad = None`` (default), so optimizers skip them: no momentum or weight-decay
            drift. A DDP training loop must then wrap the model again, so that DDP stops
            expecting their gradients (mmengine's ``SparsityHook`` does). With
            ``freeze_scores=False`` the scores keep ``requires_grad`` and get an exact zero
            gradient after ``t_f`` instead. Either way the mask is fixed by ``alive`` and
            cannot change.

    State (all in the state dict): ``scores`` (parameter, ``(groups, K)``), ``alive`` (bool,
    ``(groups, K)``) and ``mask``. ``P`` is the non-persistent buffer ``subsets``. Loading a dense
    checkpoint (no ``scores``/``alive``/``mask``) is fine: they start from the initial state.

    Ranking (removal and :meth:`finish_by_magnitude`): higher score first; equal scores keep the
    subset with the larger ``sum |W_j|``; then the lower subset index. So a layer whose scores get
    no gradient (e.g. a frozen stage) ends with the magnitude N:M mask.
    """

    method = 'lbc'
    derived_state = ('mask', 'scores', 'alive')

    def __init__(self, weight_shape, n, m, t_i: Optional[int] = None,
                 t_f: Optional[int] = None, span: Optional[Sequence[float]] = None,
                 freeze_scores: bool = True):
        super().__init__(weight_shape, n, m)
        if span is None:
            self.span = None
            self.t_i, self.t_f = self._check_schedule(0 if t_i is None else t_i,
                                                      1000 if t_f is None else t_f)
        elif t_i is not None or t_f is not None:
            raise ConfigError('LBC takes either t_i/t_f (iterations) or span (fractions of the '
                              f'run), not both; got t_i={t_i}, t_f={t_f}, span={span}.')
        else:
            self.span = self._check_span(span)
            self.t_i = self.t_f = None  # fixed by resolve_schedule
        self.freeze_scores = bool(freeze_scores)
        weight_shape = torch.Size(weight_shape)
        numel = weight_shape.numel()
        # validates the layout (C % M == 0) with a clear message
        to_groups(torch.empty(weight_shape, device='meta'), self.m)
        self.num_groups = numel // self.m
        self.num_subsets = math.comb(self.m, self.n)
        self.weight_shape = weight_shape
        self.register_buffer('subsets', subset_matrix(self.n, self.m), persistent=False)
        self.scores = nn.Parameter(torch.full((self.num_groups, self.num_subsets),
                                              self.initial_score))
        self.register_buffer('alive', torch.ones(self.num_groups, self.num_subsets,
                                                 dtype=torch.bool))
        # scores frozen by this learner (so a stage frozen by someone else is never unfrozen)
        self._frozen_by_schedule = False
        # survivors per group now (all groups share it); a Python int, so refresh needs no sync
        self._survivors = self.num_subsets

    # ----------------------------------------------------------------------------- helpers
    @staticmethod
    def _check_span(span) -> Tuple[float, float]:
        try:
            begin, end = (float(x) for x in span)
        except (TypeError, ValueError):
            raise ConfigError(f'LBC span must be (begin, end) fractions of the run, e.g. '
                              f'(0, 0.5), got {span!r}.') from None
        if not 0.0 <= begin < end <= 1.0:
            raise ConfigError(f'LBC span needs 0 <= begin < end <= 1 (fractions of the run), '
                              f'got {span!r}; e.g. (0, 0.5) ends the removal halfway.')
        return begin, end

    @staticmethod
    def _check_schedule(t_i, t_f):
        for name, value in (('t_i', t_i), ('t_f', t_f)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    int(value) != value:
                raise ConfigError(
                    f'LBC {name} must be a whole number of iterations, got {value!r}. Convert '
                    'epochs to iterations first (epoch * iterations_per_epoch).')
        t_i, t_f = int(t_i), int(t_f)
        if t_i < 0:
            raise ConfigError(f'LBC t_i must be >= 0 (iterations are 0-based), got {t_i}. '
                             'Use t_i=0 to start removing subsets at the first iteration.')
        if t_f <= t_i:
            raise ConfigError(
                f'LBC needs t_f > t_i, got t_i={t_i}, t_f={t_f}: subsets are removed between '
                f'them. Use e.g. t_i={t_i}, t_f={t_i + 1000}, with t_f before the end of '
                'training so the final N:M mask is fine-tuned.')
        return t_i, t_f

    def set_schedule(self, t_i: int, t_f: int) -> None:
        """Set the removal schedule (in iterations), e.g. from epochs once the number of
        iterations per epoch is known. Subsets already removed stay removed."""
        self.t_i, self.t_f = self._check_schedule(t_i, t_f)

    def resolve_schedule(self, total_iters: int) -> None:
        """Turn :attr:`span` into iterations of a run of ``total_iters`` (no-op without span).

        The last refresh of a run is at iteration ``total_iters``, so ``span=(b, 1)`` still
        ends exactly N:M.
        """
        if self.span is not None:
            begin, end = self.span
            t_i = int(round(begin * total_iters))
            self.set_schedule(t_i, max(int(round(end * total_iters)), t_i + 1))

    def schedule_problem(self, total_iters: int) -> Optional[str]:
        if self.t_f is None:
            return f'its span {self.span} has not been resolved (call resolve_schedule)'
        if self.t_f > total_iters:
            return (f'its removal ends at iteration t_f={self.t_f}, after the run\'s last mask '
                    f'refresh at iteration {total_iters}, so its mask would not be exactly '
                    f'{self.n}:{self.m} when training ends (give t_f <= {total_iters}, or a span '
                    'of the run, e.g. span=(0, 0.5))')
        return None

    @property
    def initial_score(self) -> float:
        """``1 / C(M-1, N-1)``: each weight lies in ``C(M-1, N-1)`` subsets, so its soft value
        starts at 1."""
        return 1.0 / math.comb(self.m - 1, self.n - 1)

    def survivors(self, iteration: int) -> int:
        """Subsets per group the schedule keeps at ``iteration``."""
        if iteration <= 0:  # every schedule starts with all subsets (t_i >= 0)
            return self.num_subsets
        if self.t_f is None:
            raise RuntimeError(f'The LBC span {self.span} is not resolved into iterations yet: '
                               'call resolve_schedule(total_iters) before training (the '
                               'SparsityHook does).')
        return cubic_survivors(iteration, self.num_subsets, self.t_i, self.t_f)

    def soft(self) -> torch.Tensor:
        """Score mass per weight, ``(scores * alive) @ P``, in the weight's shape."""
        soft = (self.scores * self.alive) @ self.subsets
        return from_groups(soft, self.weight_shape)

    @property
    def is_final(self) -> bool:
        """Exactly one alive subset per group (derived from ``alive``, so it survives a resume)."""
        return self._survivors == 1

    def _sync_from_alive(self, survivors: Optional[int] = None) -> None:
        """Recompute ``mask``, the survivor count and the frozen state from ``alive``.

        Args:
            survivors: the most alive subsets a group has, when the caller knows it (a removal
                step: the count it kept); otherwise read from ``alive``, which waits for the
                device, and ``alive`` is checked (after a load).
        """
        if survivors is None:
            counts = self.alive.sum(dim=1)
            if counts.numel() and int(counts.min()) < 1:
                raise CheckpointError('LBC state has a group with no alive subset; the '
                                      'checkpoint is corrupt or from another N:M pattern.')
            survivors = int(counts.max()) if counts.numel() else 1
        self._survivors = survivors
        if len(self.alive):
            # bool -> float through uint8: the same 0/1, several times faster on CPU; float32
            # even inside autocast
            with torch.autocast(self.alive.device.type, enabled=False):
                union = (self.alive.view(torch.uint8).to(self.subsets.dtype) @ self.subsets) != 0
            from_groups(union, self.weight_shape, out=self.mask)
        self._update_frozen()

    def _update_frozen(self) -> None:
        if self.is_final:
            self._freeze()
        elif self._frozen_by_schedule:
            self.scores.requires_grad_(True)
            self._frozen_by_schedule = False

    def _freeze(self) -> None:
        if not self.freeze_scores:
            return
        if self.scores.requires_grad:
            self.scores.requires_grad_(False)
            self._frozen_by_schedule = True
        self.scores.grad = None

    def _subset_magnitude(self, weight: torch.Tensor) -> torch.Tensor:
        """``sum |W_j|`` over each subset of every group, in float32 even inside autocast."""
        groups = to_groups(weight.detach().abs(), self.m)
        with torch.autocast(weight.device.type, enabled=False):
            return groups.to(self.subsets.dtype) @ self.subsets.t()

    @torch.no_grad()
    def _keep_best(self, weight: torch.Tensor, count: int) -> None:
        """Keep the ``count`` best alive subsets per group (ranking in the class docstring);
        the subsets removed get score 0."""
        if count >= self._survivors:
            return
        keep = torch.zeros_like(self.alive).scatter_(1, self._rank(weight)[:, :count], True)
        self.alive.logical_and_(keep)
        # dead scores are out of the forward/backward already (through alive); zero them
        self.scores.masked_fill_(~self.alive, 0.0)
        self._sync_from_alive(survivors=count)

    def _rank(self, weight: torch.Tensor) -> torch.Tensor:
        """Subset indices of every group, best first: higher score, then larger subset
        magnitude, then lower index; dead subsets and NaN scores last."""
        magnitude = self._subset_magnitude(weight)
        scores, alive = self.scores.detach(), self.alive
        by_magnitude = torch.argsort(magnitude, dim=1, descending=True, stable=True)
        scores = torch.nan_to_num(scores.float().masked_fill(~alive, float('-inf')),
                                  nan=float('-inf'))
        by_score = torch.argsort(scores.gather(1, by_magnitude), dim=1, descending=True,
                                 stable=True)
        return by_magnitude.gather(1, by_score)

    # ------------------------------------------------------------------ MaskLearner interface
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.scores.requires_grad and torch.is_grad_enabled():
            return LBCFunction.apply(weight, self.scores, self.mask, self.alive, self.subsets,
                                     self.m, self.is_final)
        return apply_mask(weight, self.mask)

    @torch.no_grad()
    def initialize(self, weight: torch.Tensor) -> None:
        """Start of the schedule: every subset alive, every score ``1 / C(M-1, N-1)``, dense
        mask. (LBC's mask does not depend on the weights before ``t_i``.)"""
        self.scores.fill_(self.initial_score)
        self.alive.fill_(True)
        self._sync_from_alive(survivors=self.num_subsets)
        self.needs_init = False

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor, iteration: int) -> None:
        """Remove the lowest-ranked subsets until :meth:`survivors` remain per group."""
        if self.needs_init:
            self.initialize(weight)
        self._keep_best(weight, self.survivors(iteration))

    @torch.no_grad()
    def finish_by_magnitude(self, weight: torch.Tensor) -> None:
        """End the schedule now: keep, per group, the best alive subset (highest score; equal
        scores -> larger ``sum |W_j|``; then lower index). The mask is then exactly N:M and the
        scores are frozen. For an explicit export flag (``--finish-by-magnitude``) only."""
        if self.needs_init:
            self.initialize(weight)
        self._keep_best(weight, 1)

    def deploy_mask(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.is_final:
            raise NotFinalError(
                f'LBC mask is not N:M yet: {self._survivors} of {self.num_subsets} subsets per '
                f'group are still alive (the schedule ends at iteration t_f={self.t_f}). Export '
                'after t_f, or call finish_by_magnitude(weight) (export flag '
                '--finish-by-magnitude).')
        return self.mask

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if not self.needs_init:  # loaded from a sparse (LBC) checkpoint
            with torch.no_grad():
                self._sync_from_alive()

    def extra_repr(self) -> str:
        span = f', span={self.span}' if self.span is not None else ''
        return (f'{super().extra_repr()}, K={self.num_subsets}, t_i={self.t_i}, t_f={self.t_f}'
                f'{span}, survivors={self._survivors}, freeze_scores={self.freeze_scores}')
