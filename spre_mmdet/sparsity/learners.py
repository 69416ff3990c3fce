"""Mask learners: who decides a layer's N:M mask, and how the masked weight is formed.

A learner is a small ``nn.Module`` owned by a sparse layer (``layer.sparsity``). It keeps the
current mask as a buffer, builds the weight used in forward from the dense latent weight, and
changes its mask only in :meth:`MaskLearner.refresh`, which the training loop calls once per
iteration (the mmengine ``SparsityHook`` does; plain PyTorch users call
:func:`spre_mmdet.sparsity.refresh_masks`). Keeping all mask changes in one call keeps
distributed ranks and resumed runs identical.
"""
import inspect
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from .nm import check_nm, nm_masks, unstructured_mask
from .srste import add_srste_decay_, apply_mask, masked_ste


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

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight used in forward."""
        raise NotImplementedError

    def initialize(self, weight: torch.Tensor) -> None:
        """Compute the mask from the current (e.g. just loaded) weights."""
        nm_masks([weight], self.n, self.m, out=[self.mask])
        self.needs_init = False

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


#: The registry of mask learners: ``type`` name -> class. Every learner is registered under its
#: class name (the ``type`` configs use, as for every mmdet module) and its short ``method`` name
#: (what reports print; accepted in configs too).
LEARNERS: Dict[str, type] = {}


def register_learner(cls: type) -> type:
    """Class decorator: make a :class:`MaskLearner` subclass buildable by ``type``, under its
    class name and its ``method`` name."""
    if not (isinstance(cls, type) and issubclass(cls, MaskLearner)) or not cls.method:
        raise TypeError(f'{cls!r} is not a MaskLearner subclass with a method name.')
    for name in (cls.__name__, cls.method):
        if LEARNERS.get(name, cls) is not cls:
            raise KeyError(f'Mask learner type {name!r} is already registered by '
                           f'{LEARNERS[name].__module__}.{LEARNERS[name].__qualname__}.')
        LEARNERS[name] = cls
    return cls


@register_learner
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
        return masked_ste(weight, self.mask)

    def decay_gradient_(self, weight: torch.Tensor,
                        grad_scale: Optional[torch.Tensor] = None) -> None:
        """Add the sparse-refined decay to ``weight.grad`` (once per optimizer step, see
        :func:`~spre_mmdet.sparsity.srste.register_srste_decay`)."""
        add_srste_decay_(weight, self.mask, self.decay, grad_scale)

    def refresh(self, weight, iteration):
        if self.needs_init or iteration % self.interval == 0:
            self.initialize(weight)

    def extra_repr(self):
        return f'{super().extra_repr()}, decay={self.decay}, interval={self.interval}'


@register_learner
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


@register_learner
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
            return masked_ste(weight, self.mask)
        return apply_mask(weight, self.mask)

    def decay_gradient_(self, weight: torch.Tensor,
                        grad_scale: Optional[torch.Tensor] = None) -> None:
        """SR-STE's decay while the mask is recomputed (``interval > 0``); none when fixed."""
        if self.interval:
            add_srste_decay_(weight, self.mask, self.decay, grad_scale)

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


def learner_class(type_name: str) -> type:
    """The :class:`MaskLearner` registered as ``type_name``."""
    if type_name not in LEARNERS:
        names = sorted({cls.__name__ for cls in LEARNERS.values()})
        raise ConfigError(f'Unknown mask learner type {type_name!r}; choose one of {names} '
                          '(a new learner is a MaskLearner subclass decorated with '
                          '@register_learner, imported before the model is built).')
    return LEARNERS[type_name]


def learner_options(type_name: str) -> Tuple[str, ...]:
    """The keyword options of the learner ``type_name`` (its constructor's arguments after
    ``weight_shape, n, m``)."""
    params = list(inspect.signature(learner_class(type_name).__init__).parameters)
    return tuple(p for p in params if p not in ('self', 'weight_shape', 'n', 'm'))


def check_options(section: str, given: dict, allowed) -> None:
    """Raise :class:`ConfigError` naming ``section`` if ``given`` has keys not in ``allowed``."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f'Unknown {section} option(s) {unknown}; valid ones are '
                          f'{sorted(allowed)}.')


def build_learner(type_name: str, weight_shape: torch.Size, n: int, m: int,
                  **kwargs) -> MaskLearner:
    """Build the learner registered as ``type_name`` (``'SRSTEMask'``, ``'FixedMask'``,
    ``'LBCMask'``, ...; or its method name) for a weight of ``weight_shape``."""
    check_options(f'learner ({type_name!r})', kwargs, learner_options(type_name))
    return learner_class(type_name)(weight_shape, n, m, **kwargs)
