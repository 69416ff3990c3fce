"""Makes every training epoch a pure function of (seed, epoch, rank), so resume is exact."""
import random
from functools import partial

import numpy as np
import torch
from mmengine.dataset import worker_init_fn
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop
from mmengine.registry import HOOKS  # the root registry: found from mmdet and mmpretrain configs

from ..errors import ConfigError


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 32-bit seed for ``epoch`` (and ``rank``) of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed) % 2**32, epoch, rank]).generate_state(1)[0])


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Reseed every random number generator at the start of each training epoch.

    mmengine's resume restores the weights, the optimizer, the schedulers and the message hub,
    but not the random state that data augmentation (flips) and mmdet's proposal samplers draw
    from. Without this hook a resumed run therefore diverges from an uninterrupted one. With it,
    each epoch starts from ``epoch_seed(runner.seed, epoch, rank)`` in Python's ``random``,
    numpy, torch (CPU and CUDA) and in every data-loader worker, whatever happened before (a
    validation run, a resume), so resuming from an epoch checkpoint continues exactly like the
    uninterrupted run. ``runner.seed`` comes from ``randomness=dict(seed=...)``; on resume
    mmengine restores it from the checkpoint when the config gives none.

    Requirements, checked before training starts: an epoch-based loop, and data-loader workers
    that are re-created each epoch (``persistent_workers=False`` when ``num_workers > 0``), since
    persistent workers carry their random state across epochs where no checkpoint holds it.
    Bit-exact results on GPU also need ``randomness=dict(deterministic=True)``.
    """

    priority = 'VERY_HIGH'  # before any other hook draws random numbers in before_train_epoch

    def before_train(self, runner) -> None:
        if not isinstance(runner.train_loop, EpochBasedTrainLoop):
            raise ConfigError(
                f'EpochSeedHook reseeds at epoch boundaries, but this run uses '
                f'{type(runner.train_loop).__name__}: use an epoch-based loop '
                "(train_cfg=dict(type='EpochBasedTrainLoop', ...)) or drop the hook.")
        loader = runner.train_loop.dataloader
        if loader.num_workers > 0 and loader.persistent_workers:
            raise ConfigError(
                'EpochSeedHook cannot make resume exact with persistent data-loader workers: '
                'their random state carries over between epochs and no checkpoint holds it. Set '
                'train_dataloader.persistent_workers=False (workers then restart each epoch, '
                'a few seconds per epoch), or drop EpochSeedHook.')

    def before_train_epoch(self, runner) -> None:
        diff_rank = runner._randomness_cfg.get('diff_rank_seed', False)
        seed = epoch_seed(runner.seed, runner.epoch, get_rank() if diff_rank else 0)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # CUDA generators too
        loader = runner.train_loop.dataloader
        if loader.num_workers > 0:  # workers start this epoch from the same seed on resume
            loader.worker_init_fn = partial(worker_init_fn, num_workers=loader.num_workers,
                                            rank=get_rank(), seed=seed)
