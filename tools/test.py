# Copyright (c) OpenMMLab. All rights reserved.
# Adapted from mmdet 3.3 tools/test.py: same flags and behaviour; imports spre_mmdet first so
# its compat fixes (safe checkpoint loading, CPU/gloo distributed, torchvision://) are in
# place before the config is read, and reports user errors without a traceback.
import argparse
import os
import os.path as osp
import warnings
from copy import deepcopy

import spre_mmdet  # noqa: F401  (must come first: applies spre_mmdet.compat)
from spre_mmdet.checkpoint import load_state_checked, state_dict_of
from spre_mmdet.cli import check_dataset_paths, load_tool_config, run_tool
from spre_mmdet.device import check_training_device
from spre_mmdet.mmcv_ops import check_mmcv_ops

from mmengine import ConfigDict
from mmengine.config import DictAction
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import CheckpointLoader, Runner

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmdet.registry import RUNNERS
from mmdet.utils import setup_cache_size_limit_of_dynamo


# TODO: support fuse_conv_bn and format_only
def parse_args():
    parser = argparse.ArgumentParser(
        description='MMDet test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help='the directory to save the file containing evaluation metrics')
    parser.add_argument(
        '--out',
        type=str,
        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. '
        'If specified, it will be automatically saved '
        'to the work_dir/timestamp/show_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher (without CUDA: SPRE_MMDET_CPU=1 asks for gloo on CPU)')
    parser.add_argument('--tta', action='store_true')
    # When using PyTorch version >= 2.0.0, the `torch.distributed.launch`
    # will pass the `--local-rank` parameter to `tools/train.py` instead
    # of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()

    # Reduce the number of repeated compilations and improve
    # testing speed.
    setup_cache_size_limit_of_dynamo()

    cfg = load_tool_config(args)  # file, launcher, --cfg-options, work dir

    # loaded below, and only if it fits the model: mmengine would load a mismatching checkpoint
    # partially (with a warning) and evaluate a model that is partly random
    cfg.load_from = None

    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.tta:

        if 'tta_model' not in cfg:
            warnings.warn('Cannot find ``tta_model`` in config, '
                          'we will set it as default.')
            cfg.tta_model = dict(
                type='DetTTAModel',
                tta_cfg=dict(
                    nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        if 'tta_pipeline' not in cfg:
            warnings.warn('Cannot find ``tta_pipeline`` in config, '
                          'we will set it as default.')
            test_data_cfg = cfg.test_dataloader.dataset
            while 'dataset' in test_data_cfg:
                test_data_cfg = test_data_cfg['dataset']
            cfg.tta_pipeline = deepcopy(test_data_cfg.pipeline)
            flip_tta = dict(
                type='TestTimeAug',
                transforms=[
                    [
                        dict(type='RandomFlip', prob=1.),
                        dict(type='RandomFlip', prob=0.)
                    ],
                    [
                        dict(
                            type='PackDetInputs',
                            meta_keys=('img_id', 'img_path', 'ori_shape',
                                       'img_shape', 'scale_factor', 'flip',
                                       'flip_direction'))
                    ],
                ])
            cfg.tta_pipeline[-1] = flip_tta
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline

    # a GPU machine whose CUDA torch cannot use, or a GPU backend without CUDA: refused here
    check_training_device(distributed=args.launcher != 'none',
                          backend=cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend',
                                                                                 'nccl'))
    check_mmcv_ops(cfg)  # a GPU run needs mmcv's CUDA ops: refused here, with the fix

    # fail early, with a hint, when the checkpoint or the dataset is not there
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise SystemExit(f'ERROR: checkpoint file not found: {args.checkpoint}')
    check_dataset_paths(cfg, ['test_dataloader'])

    # build the runner from config
    if 'runner_type' not in cfg:
        # build the default runner
        runner = Runner.from_cfg(cfg)
    else:
        # build customized runner from the registry
        # if 'runner_type' is set in the cfg
        runner = RUNNERS.build(cfg)

    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if isinstance(model, BaseTTAModel):
        model = model.module
    checkpoint = CheckpointLoader.load_checkpoint(args.checkpoint, map_location='cpu')
    load_state_checked(model, state_dict_of(checkpoint), source=args.checkpoint)
    runner.logger.info(f'Load checkpoint from {args.checkpoint} (every key matched)')

    # add `DumpResults` dummy metric
    if args.out is not None:
        assert args.out.endswith(('.pkl', '.pickle')), \
            'The dump file must be a pkl file.'
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))

    # start testing
    runner.test()


if __name__ == '__main__':
    run_tool(main)
