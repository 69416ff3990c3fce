"""Test-only hook: each rank saves its sparsity state (masks and S) after training."""
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS


@HOOKS.register_module()
class RankDumpHook(Hook):

    def after_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        state = {k: v for k, v in model.state_dict().items()
                 if k.endswith(('.spatial', '.sparsity.mask'))}
        torch.save(state, osp.join(runner.work_dir, f'sparsity_rank{runner.rank}.pth'))
