"""Re-parameterizes the trained sparse detector into a plain N:M detector after training."""
import os.path as osp

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS

from ..deploy import check_interspace_form, export_deploy, interspace_summary


@HOOKS.register_module()
class ReparameterizeHook(Hook):
    """After training, write ``deploy.pth`` + ``deploy_config.py`` + ``sparsity_report.txt``
    (stock mmdet ResNet, weights exactly N:M, SpRe branches folded) into
    ``<work_dir>/<out_dir>``.

    Args:
        out_dir: sub-directory of the work dir to write to.
        interspace_form: for interspace convs, ``'basis'`` (basis conv + N:M 1x1; the config
            then imports spre_mmdet) or ``'merged'`` (dense k x k, stock mmdet). The report
            and the log say which was used.
    """

    priority = 'LOW'  # after SparsityHook's report

    def __init__(self, out_dir: str = 'deploy', interspace_form: str = 'basis'):
        check_interspace_form(interspace_form)  # fail at build time, not after training
        self.out_dir = out_dir
        self.interspace_form = interspace_form

    def after_train(self, runner) -> None:
        if runner.rank != 0:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        paths = export_deploy(model, runner.cfg, osp.join(runner.work_dir, self.out_dir),
                              force=True, meta=dict(iter=runner.iter, epoch=runner.epoch),
                              interspace_form=self.interspace_form)
        runner.logger.info('Re-parameterized deploy model written: ' +
                           ', '.join(paths.values()))
        summary = interspace_summary(model, self.interspace_form)
        if summary:
            runner.logger.info(summary)
