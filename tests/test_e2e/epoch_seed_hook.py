"""Test-only hook: reseed every RNG at the start of each epoch.

mmengine's resume restores weights, optimizer, schedulers and message hub, but not the global
RNG state (used by mmdet's proposal samplers and random flips). Reseeding per epoch makes a run
a pure function of its state at the epoch boundary, so "resume == uninterrupted" compares what
this package is responsible for: weights, masks, S and the optimizer.
"""
from mmengine.hooks import Hook
from mmengine.runner import set_random_seed
from mmdet.registry import HOOKS


@HOOKS.register_module()
class EpochSeedHook(Hook):
    priority = 'HIGHEST'

    def before_train_epoch(self, runner):
        set_random_seed(1000 + runner.epoch)
