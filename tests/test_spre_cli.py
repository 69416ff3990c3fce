"""spre_mmdet.cli: the tools' config loading and dataset checks."""
from argparse import Namespace
from pathlib import Path

import pytest
from mmengine.config import Config

from spre_mmdet import cli
from spre_mmdet.errors import DatasetNotFoundError


def test_missing_classification_set_names_the_classification_generator(tmp_path):
    """A missing mmpretrain folder dataset points at make_toy_cls.py with the config's folder,
    not at the COCO generator."""
    root = f'{tmp_path}/data/toy_cls/'
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='CustomDataset', data_root=root, data_prefix='train'))))
    with pytest.raises(DatasetNotFoundError) as info:
        cli.check_dataset_paths(cfg, ['train_dataloader'])
    message = str(info.value)
    assert 'make_toy_coco' not in message
    assert f'python tools/make_toy_cls.py --out {tmp_path}/data/toy_cls`' in message
    assert '/path/to/imagenet/' in message


def test_missing_synthetic_set_quotes_the_configs_generator():
    """The shipped 64-pixel stage-1 config's missing set is answered with the generator command
    the config declares (its size and split options included)."""
    cfg = Config.fromfile(str(Path(__file__).resolve().parent.parent / 'configs' / 'toy' / 'cls' /
                                     'resnet18_dense_toy_cls64.py'))
    cfg.train_dataloader.dataset.data_root = cfg.val_dataloader.dataset.data_root = \
        'data/no_such_toy_cls64/'
    with pytest.raises(DatasetNotFoundError) as info:
        cli.check_dataset_paths(cfg, ['train_dataloader'])
    assert ('`python tools/make_toy_cls.py --out data/toy_cls64 --size 64 --num-train 8000 '
            '--num-val 1000`') in str(info.value)


def test_load_tool_config_work_dir_priority(tmp_path):
    """The work dir comes from the CLI, else the config, else ./work_dirs/<config name>; the
    launcher and --cfg-options are applied."""
    path = tmp_path / 'my_cfg.py'
    path.write_text("a = 1\n")
    args = Namespace(config=str(path), launcher='none', cfg_options=dict(a=2), work_dir=None)
    cfg = cli.load_tool_config(args)
    assert (cfg.a, cfg.launcher, cfg.work_dir) == (2, 'none', './work_dirs/my_cfg')
    path.write_text("a = 1\nwork_dir = 'from_cfg'\n")
    assert cli.load_tool_config(args).work_dir == 'from_cfg'
    args.work_dir = 'from_cli'
    assert cli.load_tool_config(args).work_dir == 'from_cli'
