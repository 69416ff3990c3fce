"""Re-parameterizes the trained sparse detector into a plain N:M detector after training."""
import os.path as osp

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS  # the root registry: found from mmdet and mmpretrain configs

from ..deploy import check_export_target, check_interspace_form, export_deploy, interspace_summary
from ..errors import ConfigError
from ..sparsity import sparse_layer_records, sparse_layers


@HOOKS.register_module()
class ReparameterizeHook(Hook):
    """After training, write ``deploy.pth`` + ``deploy_config.py`` + ``sparsity_report.txt``
    (stock mmdet ResNet, weights exactly N:M, SpRe branches folded) into
    ``<work_dir>/<out_dir>``.

    Everything that would make the export fail is checked in ``before_train``, not after hours
    of training: a model without sparse layers, a target folder that holds the work dir or
    files this package did not write, and mask schedules that end after the run (checked by
    :class:`SparsityHook`). The export replaces only an earlier export's files.

    Args:
        out_dir: folder to write to, relative to the work dir (or absolute); not the work dir.
        interspace_form: for interspace convs, ``'basis'`` (basis conv + N:M 1x1; the config
            then imports spre_mmdet) or ``'merged'`` (dense k x k, stock mmdet). The report
            and the log say which was used.
    """

    priority = 'LOW'  # after SparsityHook's report

    def __init__(self, out_dir: str = 'deploy', interspace_form: str = 'basis'):
        check_interspace_form(interspace_form)  # fail at build time, not after training
        if not out_dir or osp.normpath(out_dir) == '.':
            raise ConfigError(f'ReparameterizeHook out_dir={out_dir!r} is the work dir itself; '
                              "name a sub-folder, e.g. out_dir='deploy'.")
        self.out_dir = out_dir
        self.interspace_form = interspace_form

    def _target(self, runner) -> str:
        return osp.join(runner.work_dir, self.out_dir)

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not any(True for _ in sparse_layers(model)):
            raise ConfigError('ReparameterizeHook is configured but the model has no sparse '
                              'layers, so there is nothing to re-parameterize after training. '
                              'Use a sparse backbone (e.g. type="SparseResNet") or drop the '
                              'hook.')
        # force: an earlier export of this run (e.g. before a resume) is replaced
        check_export_target(self._target(runner), force=True, protected=[runner.work_dir])

    def after_train(self, runner) -> None:
        if runner.rank != 0:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        paths = export_deploy(model, runner.cfg, self._target(runner), force=True,
                              meta=dict(iter=runner.iter, epoch=runner.epoch),
                              interspace_form=self.interspace_form,
                              protected=[runner.work_dir])
        runner.logger.info('Re-parameterized deploy model written: ' +
                           ', '.join(paths.values()))
        summary = interspace_summary(sparse_layer_records(model, self.interspace_form),
                                     self.interspace_form)
        if summary:
            runner.logger.info(summary)
