"""Mask learners: who decides a layer's N:M mask, and how the masked weight is formed.

A learner is a small ``nn.Module`` owned by a sparse layer (``layer.sparsity``). It keeps the
current mask as a buffer, builds the weight used in forward from the dense latent weight, and
changes its mask only in :meth:`MaskLearner.refresh`, which the training loop calls once per
iteration (the mmengine ``SparsityHook`` does; plain PyTorch users call
:func:`spre_mmdet.sparsity.refresh_masks`). Keeping all mask changes in one call keeps
distributed ranks and resumed runs identical.
"""
import inspect
import weakref
from collections import defaultdict
from typing import Callable, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..errors import ConfigError
from .nm import check_nm, nm_masks, unstructured_mask
from .srste import apply_mask, srste

# Optimizer steps taken in this process, by any torch optimizer. Fused optimizers (Adam/SGD with
# fused=True, and kernels outside torch) update parameters without bumping their version
# counters, so a mask is only trusted as current if no step was taken since it was computed.
_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class Source:
    """What a derived tensor (a mask) was computed from, to tell cheaply whether recomputing it
    now could change it.

    It matches only the same tensor objects (weak references: a new tensor may reuse a freed
    one's memory and version number) with the same storage and version counters (bumped by
    every in-place write through torch: optimizer steps, ``load_state_dict``, ``copy_``), and
    only if no optimizer stepped since. Writes through ``.data`` are not seen: call
    :meth:`MaskLearner.forget` after them. Copies and pickles of a module never match.
    """

    __slots__ = ('_weight', '_derived', '_state')

    def __init__(self, weight: Optional[torch.Tensor] = None,
                 derived: Optional[torch.Tensor] = None):
        self._weight = weakref.ref(weight) if weight is not None else None
        self._derived = weakref.ref(derived) if derived is not None else None
        self._state = self._state_of(weight, derived) if weight is not None else None

    @staticmethod
    def _state_of(weight: torch.Tensor, derived: torch.Tensor) -> Optional[tuple]:
        try:
            return (_optimizer_steps, weight.data_ptr(), weight._version, derived.data_ptr(),
                    derived._version)
        except RuntimeError:  # inference-mode tensors have no version counter
            return None

    def matches(self, weight: torch.Tensor, derived: torch.Tensor) -> bool:
        """Whether ``derived`` is still what it was computed as from ``weight``."""
        return (self._state is not None and self._weight() is weight and
                self._derived() is derived and self._state == self._state_of(weight, derived))

    def __reduce__(self):  # copies and pickles forget (weak references cannot be pickled)
        return Source, ()


class DerivedStateMixin:
    """Tolerate the absence of derived state (masks) when loading a dense checkpoint.

    ``derived_state`` names buffers that a dense checkpoint does not have: they are then not
    reported as missing, and ``needs_init`` tells that they must be derived from the loaded
    weights (at the next refresh).
    """

    derived_state = ()
    needs_init = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        derived = {prefix + name for name in self.derived_state}
        from_sparse_run = any(key in state_dict for key in derived)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if not from_sparse_run:
            missing_keys[:] = [key for key in missing_keys if key not in derived]
        self.needs_init = not from_sparse_run


class MaskLearner(DerivedStateMixin, nn.Module):
    """Base class: an N:M mask over a weight of fixed shape.

    Args:
        weight_shape: shape of the weight it masks.
        n, m: the N:M pattern.
    """

    #: name used in configs and reports
    method: str = ''
    #: whether the deployed weight is exactly N:M (an unstructured mask is not, by design)
    nm = True
    #: what reports say of a layer whose deployed weight is not N:M by design
    not_nm_note = ''
    #: attribute name (and state-dict key suffix) of the mask buffer
    MASK = 'mask'
    derived_state = (MASK,)

    def __init__(self, weight_shape: torch.Size, n: int, m: int):
        super().__init__()
        self.n, self.m = check_nm(n, m)
        self.register_buffer(self.MASK, torch.ones(weight_shape, dtype=torch.bool))
        # True until the mask was computed from real weights or loaded from a sparse checkpoint.
        self.needs_init = True
        # what the mask was last computed from (see Source)
        self._source = Source()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight used in forward."""
        raise NotImplementedError

    @property
    def srste_decay(self) -> Optional[float]:
        """``lambda_w`` if :meth:`forward` is exactly SR-STE's ``weight * mask`` with the
        sparse-refined backward (:func:`~spre_mmdet.sparsity.srste.srste`), so that a fused
        kernel may compute it in place of :meth:`forward`; ``None`` for any other forward."""
        return None

    def initialize(self, weight: torch.Tensor) -> None:
        """Compute the mask from the current (e.g. just loaded) weights."""
        compute_magnitude_masks([(self, weight)])

    def magnitude_mask_due(self, weight: torch.Tensor, iteration: int) -> bool:
        """Whether ``refresh(weight, iteration)`` would only recompute the magnitude N:M mask of
        ``weight``: then :func:`compute_magnitude_masks` may do it together with other layers'
        beforehand (``refresh_masks`` does), and the refresh finds the mask current."""
        return False

    @classmethod
    def refresh_together(cls, pairs: Sequence[Tuple['MaskLearner', torch.Tensor]],
                         iteration: int) -> None:
        """Do the part of ``refresh(weight, iteration)`` that is cheaper for many layers at
        once, for every ``(learner, weight)`` of ``pairs`` (all of this class), so that each
        layer's refresh then finds it done (``refresh_masks`` calls it first). Nothing here:
        SR-STE-like masks are batched by :meth:`magnitude_mask_due` instead."""

    def mask_is_current(self, weight: torch.Tensor) -> bool:
        """Whether :attr:`mask` was computed from ``weight`` as it is now (neither was written
        since, no optimizer stepped): recomputing it could not change it."""
        return self._source.matches(weight, self.mask)

    def forget(self) -> None:
        """Stop trusting :attr:`mask` as current, so that the next due refresh recomputes it
        (e.g. after writing the weights through ``.data``, which :class:`Source` cannot
        see)."""
        self._source = Source()

    def refresh(self, weight: torch.Tensor, iteration: int) -> None:
        """Advance the mask schedule to ``iteration`` (0-based)."""
        if self.needs_init:
            self.initialize(weight)

    @property
    def is_final(self) -> bool:
        """Whether :attr:`mask` is exactly N:M now (LBC is not until its schedule ends)."""
        return True

    def resolve_schedule(self, total_iters: int) -> None:
        """Fix a schedule given relative to the run, once its length is known (no-op here)."""

    def schedule_problem(self, total_iters: int) -> Optional[str]:
        """Why the mask would not be exactly N:M after ``total_iters`` refreshes, or ``None``.

        Training loops call this before training starts, so that a schedule that ends after
        the run fails at once instead of at export time.
        """
        return None

    def deploy_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """The exact N:M mask to deploy with."""
        return self.mask

    def extra_repr(self) -> str:
        return f'{self.method} {self.n}:{self.m}'

class SRSTEMask(MaskLearner):
    """SR-STE (docs/methods/srste_asp.md): magnitude N:M mask of the dense latent weight,
    recomputed every ``interval`` iterations, with the sparse-refined backward.

    Args:
        decay: ``lambda_w`` of the sparse-refined term (2e-4 in the reference).
        interval: recompute the mask every this many iterations.
    """

    method = 'srste'

    def __init__(self, weight_shape, n, m, decay: float = 2e-4, interval: int = 1):
        super().__init__(weight_shape, n, m)
        if isinstance(interval, bool) or int(interval) != interval or interval < 1:
            raise ConfigError(f'SR-STE interval must be a whole number >= 1 (refresh the mask '
                              f'every this many iterations), got {interval!r}.')
        self.decay = float(decay)
        self.interval = int(interval)

    def forward(self, weight):
        return srste(weight, self.mask, self.decay)

    @property
    def srste_decay(self):
        return self.decay

    def magnitude_mask_due(self, weight, iteration):
        return self.needs_init or (iteration % self.interval == 0 and
                                   not self.mask_is_current(weight))

    def refresh(self, weight, iteration):
        if self.magnitude_mask_due(weight, iteration):
            self.initialize(weight)

    def extra_repr(self):
        return f'{super().extra_repr()}, decay={self.decay}, interval={self.interval}'


class FixedMask(MaskLearner):
    """ASP baseline (docs/methods/srste_asp.md): a one-shot magnitude mask of the loaded
    weights, then fixed.

    The pruned weights are zeroed when the mask is computed; their gradient is zero from then on,
    so momentum and weight decay keep them at zero.
    """

    method = 'asp'

    def forward(self, weight):
        return apply_mask(weight, self.mask)

    def initialize(self, weight):
        super().initialize(weight)
        with torch.no_grad():
            weight.mul_(self.mask)


def compute_magnitude_masks(pairs: Iterable[Tuple[MaskLearner, torch.Tensor]],
                            magnitude_hook: Optional[Callable[[int, torch.Tensor], None]] = None
                            ) -> None:
    """Set each learner's mask to the magnitude N:M mask of its weight, computing the masks of
    all pairs with the same N:M together (:func:`~spre_mmdet.sparsity.nm.nm_masks`: a few large
    operations rather than some twenty per layer), and record them as current.
    ``magnitude_hook(i, magnitude)`` gets pair ``i``'s ``|w|`` on the way (see ``nm_masks``)."""
    pairs = list(pairs)
    by_pattern = defaultdict(list)
    for index, (learner, weight) in enumerate(pairs):
        by_pattern[(learner.n, learner.m)].append(index)
    for (n, m), indices in by_pattern.items():
        group = [pairs[i] for i in indices]
        hook = None if magnitude_hook is None else \
            (lambda j, magnitude, indices=indices: magnitude_hook(indices[j], magnitude))
        nm_masks([weight for _, weight in group], n, m,
                 out=[learner.mask for learner, _ in group], magnitude_hook=hook)
        for learner, weight in group:
            learner.needs_init = False
            learner._source = Source(weight, learner.mask)


class UnstructuredMask(MaskLearner):
    """Unstructured magnitude mask over the whole layer at a given density, method name
    ``'unstructured'``: the reference N:M methods are measured against (same density, no
    structure), and interspace pruning's setting in its paper.

    NOT hardware-valid N:M: the sparsity report flags such layers as not N:M. ``n`` and ``m``
    only set the default density ``n / m`` (same overall rate as the N:M runs).

    Args:
        density: fraction of coefficients kept, over the whole layer.
        interval: ``0`` (default): one-shot mask of the loaded coefficients, then fixed, pruned
            coefficients zeroed (ASP-like). ``> 0``: recompute the mask every ``interval``
            iterations from the dense latent coefficients, with the SR-STE backward.
        decay: SR-STE ``lambda_w`` when ``interval > 0``.
    """

    method = 'unstructured'
    nm = False
    not_nm_note = 'unstructured magnitude mask: not N:M by design'

    def __init__(self, weight_shape, n, m, density: Optional[float] = None, interval: int = 0,
                 decay: float = 2e-4):
        super().__init__(weight_shape, n, m)
        self.density = self.n / self.m if density is None else float(density)
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f'density must be in (0, 1], got {self.density}')
        if interval < 0:
            raise ConfigError(f'interval must be >= 0, got {interval}')
        self.interval = int(interval)
        self.decay = float(decay)

    def forward(self, weight):
        if self.interval:
            return srste(weight, self.mask, self.decay)
        return apply_mask(weight, self.mask)

    @property
    def srste_decay(self):
        return self.decay if self.interval else None

    def initialize(self, weight):
        self.mask.copy_(unstructured_mask(weight, self.density))
        self.needs_init = False
        if not self.interval:
            with torch.no_grad():
                weight.mul_(self.mask)

    def refresh(self, weight, iteration):
        if self.needs_init or (self.interval and iteration % self.interval == 0):
            self.initialize(weight)

    def extra_repr(self):
        return (f'unstructured density={self.density:.4g} (not N:M), interval={self.interval}'
                + (f', decay={self.decay}' if self.interval else ''))


LEARNERS = {cls.method: cls for cls in (SRSTEMask, FixedMask, UnstructuredMask)}


def register_learner(cls):
    """Make a :class:`MaskLearner` subclass available by its ``method`` name."""
    LEARNERS[cls.method] = cls
    return cls


def learner_class(method: str) -> type:
    """The :class:`MaskLearner` registered as ``method``."""
    if method not in LEARNERS:
        raise ConfigError(f'Unknown mask learner {method!r}; choose one of {sorted(LEARNERS)}.')
    return LEARNERS[method]


def learner_options(method: str) -> Tuple[str, ...]:
    """The keyword options of the learner ``method`` (its constructor's arguments after
    ``weight_shape, n, m``)."""
    params = list(inspect.signature(learner_class(method).__init__).parameters)
    return tuple(p for p in params if p not in ('self', 'weight_shape', 'n', 'm'))


def check_options(section: str, given: dict, allowed) -> None:
    """Raise :class:`ConfigError` naming ``section`` if ``given`` has keys not in ``allowed``."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f'Unknown {section} option(s) {unknown}; valid ones are '
                          f'{sorted(allowed)}.')


def build_learner(method: str, weight_shape: torch.Size, n: int, m: int,
                  **kwargs) -> MaskLearner:
    """Build the learner named ``method`` (``'srste'``, ``'asp'``, ``'lbc'``, ...)."""
    check_options(f'learner ({method!r})', kwargs, learner_options(method))
    return learner_class(method)(weight_shape, n, m, **kwargs)
