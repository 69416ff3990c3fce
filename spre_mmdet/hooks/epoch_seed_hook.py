"""Makes every training epoch a pure function of (seed, epoch, rank), so resume is exact."""
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dataset import Compose, worker_init_fn
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS  # the root registry: found from mmdet and mmpretrain configs
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import get_worker_info

from ..errors import ConfigError


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 32-bit seed for ``epoch`` (and ``rank``) of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed) % 2**32, epoch, rank]).generate_state(1)[0])


class EpochClock:
    """The run's seed and the epoch in progress, shared with the data-loader workers.

    Only the main process writes the epoch; it lives in shared memory, so workers created
    before an epoch started (persistent workers) read the current one.

    Args:
        seed: the run's seed (``runner.seed``).
        rank: this process's rank.
        diff_rank_seed: whether each rank draws from its own seed
            (``randomness=dict(diff_rank_seed=True)``).
    """

    def __init__(self, seed: int, rank: int = 0, diff_rank_seed: bool = False):
        self.seed = int(seed)
        self.rank = rank
        self.diff_rank_seed = diff_rank_seed
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def seed_of(self, epoch: int) -> int:
        """The seed every generator of this rank starts ``epoch`` from."""
        return epoch_seed(self.seed, epoch, self.rank if self.diff_rank_seed else 0)


#: the epoch this data-loader worker process last reseeded for (None: not yet)
_worker_epoch: Optional[int] = None


class EpochSeededCompose(Compose):
    """A dataset's pipeline that, in a data-loader worker, reseeds the worker before the first
    sample the worker prepares in an epoch (see :class:`EpochSeedHook`).

    The worker is seeded as mmengine seeds a new worker (``mmengine.dataset.worker_init_fn``),
    with the epoch's seed: a worker draws the same numbers in an epoch whether it was created
    for that epoch or lives across epochs. In the main process (``num_workers=0``) it runs the
    pipeline unchanged: there the hook reseeds at the epoch's start.

    Args:
        transforms: the pipeline's transforms.
        clock: the run's seed and current epoch.
    """

    def __init__(self, transforms, clock: EpochClock):
        super().__init__(transforms)
        self.clock = clock

    def __call__(self, data: dict) -> Optional[dict]:
        global _worker_epoch
        worker = get_worker_info()
        if worker is not None:
            epoch = int(self.clock.epoch)
            if epoch != _worker_epoch:
                worker_init_fn(worker.id, worker.num_workers, self.clock.rank,
                               self.clock.seed_of(epoch))
                _worker_epoch = epoch
        return super().__call__(data)


def seed_pipelines(dataset, clock: EpochClock) -> int:
    """Make every mmengine ``Compose`` pipeline of ``dataset``, and of the datasets it wraps
    (``dataset`` / ``datasets`` of mmengine's and mmdet's dataset wrappers), an
    :class:`EpochSeededCompose` on ``clock``. Returns how many there are."""
    count = 0
    pipeline = getattr(dataset, 'pipeline', None)
    if isinstance(pipeline, EpochSeededCompose):
        pipeline.clock = clock
        count += 1
    elif isinstance(pipeline, Compose):
        dataset.pipeline = EpochSeededCompose(pipeline.transforms, clock)
        count += 1
    inner = [getattr(dataset, 'dataset', None), *(getattr(dataset, 'datasets', None) or ())]
    return count + sum(seed_pipelines(d, clock) for d in inner if d is not None)


@HOOKS.register_module()
class EpochSeedHook(Hook):
    """Start every training epoch from random states that depend on (seed, epoch, rank) alone.

    mmengine's resume restores the weights, the optimizer, the schedulers and the message hub,
    but not the random state that data augmentation (flips) and mmdet's proposal samplers draw
    from. Without this hook a resumed run therefore diverges from an uninterrupted one. With it,
    whatever happened before (a validation run, a resume):

    * the main process starts each epoch from ``epoch_seed(runner.seed, epoch, rank)`` in
      Python's ``random``, numpy and torch (CPU and CUDA);
    * every data-loader worker reseeds itself from that seed and its worker id before the first
      sample it prepares in the epoch (:class:`EpochSeededCompose` on the train dataset's
      pipelines). The epoch reaches the workers through shared memory, so persistent workers
      (``persistent_workers=True``, mmdet's default) and workers re-created each epoch draw the
      same numbers;
    * the train loader draws its workers' base seed from a generator of its own: a persistent
      loader draws it once per run (at the first epoch, or at the first epoch after a resume),
      which would otherwise shift the main process's draws after a resume.

    The data sampler needs nothing: mmengine's ``DefaultSampler`` shuffles from
    ``seed + epoch``. ``runner.seed`` comes from ``randomness=dict(seed=...)``; on resume
    mmengine restores it from the checkpoint when the config gives none.

    Requirements, checked before training starts: an epoch-based loop, and with data-loader
    workers a train dataset whose samples go through an mmengine ``Compose`` pipeline (every
    mmengine, mmdet and mmpretrain dataset, also inside dataset wrappers). Not covered:
    transforms that keep state across samples (e.g. mmdet's ``CachedMosaic`` cache). Bit-exact
    results on GPU also need ``randomness=dict(deterministic=True)``.
    """

    priority = 'VERY_HIGH'  # before any other hook draws random numbers in before_train_epoch

    def __init__(self):
        self.clock: Optional[EpochClock] = None

    def before_train(self, runner) -> None:
        if not isinstance(runner.train_loop, EpochBasedTrainLoop):
            raise ConfigError(
                f'EpochSeedHook reseeds at epoch boundaries, but this run uses '
                f'{type(runner.train_loop).__name__}: use an epoch-based loop '
                "(train_cfg=dict(type='EpochBasedTrainLoop', ...)) or drop the hook.")
        self.clock = EpochClock(runner.seed, get_rank(),
                                runner._randomness_cfg.get('diff_rank_seed', False))
        loader = runner.train_loop.dataloader
        if loader.num_workers == 0:
            return
        if not seed_pipelines(loader.dataset, self.clock):
            raise ConfigError(
                f'EpochSeedHook cannot reseed the data-loader workers: the train dataset '
                f'({type(loader.dataset).__name__}) has no mmengine Compose pipeline to reseed '
                'them from. Set train_dataloader.num_workers=0, or drop EpochSeedHook.')
        loader.generator = torch.Generator().manual_seed(self.clock.seed)

    def before_train_epoch(self, runner) -> None:
        seed = self.clock.seed_of(runner.epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # CUDA generators too
        self.clock.epoch.fill_(runner.epoch)
