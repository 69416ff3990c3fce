"""Re-parameterizes the trained sparse detector into a plain N:M detector after training."""
import os.path as osp

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS

from ..deploy import export_deploy


@HOOKS.register_module()
class ReparameterizeHook(Hook):
    """After training, write ``deploy.pth`` + ``deploy_config.py`` (stock mmdet ResNet, weights
    exactly N:M, SpRe branches folded) into ``<work_dir>/<out_dir>``.

    Args:
        out_dir: sub-directory of the work dir to write to.
    """

    priority = 'LOW'  # after SparsityHook's report

    def __init__(self, out_dir: str = 'deploy'):
        self.out_dir = out_dir

    def after_train(self, runner) -> None:
        if runner.rank != 0:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        paths = export_deploy(model, runner.cfg, osp.join(runner.work_dir, self.out_dir),
                              force=True, meta=dict(iter=runner.iter, epoch=runner.epoch))
        runner.logger.info('Re-parameterized deploy model written: ' +
                           ', '.join(paths.values()))
