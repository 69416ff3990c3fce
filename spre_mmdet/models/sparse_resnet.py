"""OpenMMLab ResNets made N:M sparse from config alone (mmdet's here; mmpretrain's in
:mod:`spre_mmdet.classification`)."""
import copy
from typing import Optional, Sequence

from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS
from mmengine.logging import print_log

from ..errors import ConfigError
from ..sparsity import (InterspaceDeployConv2d, SpReBatchNorm2d, check_nm, check_sparsity_options,
                        interspace_incompatibility, refresh_masks,
                        sparse_layers, sparsify_residual_block, spre_pairs)

DEFAULT_SPARSITY = dict(
    n=2,
    m=4,
    # who learns the main N:M mask: a registered learner type ('SRSTEMask', 'FixedMask' (ASP),
    # 'LBCMask', 'UnstructuredMask') and its keyword arguments
    learner=dict(type='SRSTEMask'),
    # SpRe's extra branch on every k x k conv (k > 1); None: plain N:M
    spre=None,
    # interspace pruning on every k x k conv: None or dict(pruning='nm'|'unstructured', ...)
    interspace=None,
    # which of layer1..layer4 are made sparse (the stem can never be: 3 input channels)
    stages=(True, True, True, True),
    # build the re-parameterized structure instead (set by the exported deploy config): plain
    # convs, interspace convs in their basis conv + N:M 1x1 form; no masks, no learners
    deploy=False,
)


class SparseResNetMixin:
    """N:M sparsity for an OpenMMLab ResNet, from config alone.

    mmdet's and mmpretrain's ResNets share their module tree (``res_layers``, blocks with
    ``conv1..3`` / ``norm1..3_name``, ``downsample``), so one mixin makes either sparse:
    :class:`SparseResNet` (mmdet registry) and ``spre_mmdet.classification.SparseResNet``
    (mmpretrain registry). The module tree and state-dict keys of the dense ResNet are kept
    (sparse layers only add their own buffers/parameters), so dense pretrained checkpoints load
    unchanged and their masks are derived from the loaded weights; a checkpoint of a sparse run
    (e.g. the ImageNet stage) loads with its masks, S, extra branches and LBC state.

    Sparsity config (``sparsity=dict(...)``, defaults in :data:`DEFAULT_SPARSITY`): ``n``, ``m``;
    ``learner``: dict(type=<registered learner type>, **options); ``spre``: None or
    dict(rep_gamma=0.0, spatial_interval=1) to add SpRe's branch to every k x k conv;
    ``interspace``: None or dict(pruning='nm', ...) to make every k x k conv an interspace
    (filter-basis) conv with N:M coefficients (not together with ``spre``); ``stages``: 4 bools
    (all False: an explicitly dense network, e.g. the dense baseline of a comparison);
    ``deploy``: build the re-parameterized structure to load a deploy checkpoint into (what
    ``spre_mmdet.deploy`` writes for interspace convs kept in their N:M basis form).

    Frozen stages (``frozen_stages >= i``) never update: their N:M mask is the one-shot
    magnitude mask of the loaded weights, and SpRe's branch is not added there (it could not
    learn). This is logged, not silent.
    """

    def _setup_sparsity(self, sparsity: Optional[dict]) -> None:
        cfg = copy.deepcopy(DEFAULT_SPARSITY)
        cfg.update(sparsity or {})
        unknown = set(cfg) - set(DEFAULT_SPARSITY)
        if unknown:
            raise ConfigError(f'Unknown sparsity options {sorted(unknown)}; valid ones are '
                              f'{sorted(DEFAULT_SPARSITY)}.')
        self.n, self.m = check_nm(cfg['n'], cfg['m'])
        if len(cfg['stages']) != self.num_stages:
            raise ConfigError(f'sparsity.stages needs {self.num_stages} entries, got '
                              f'{cfg["stages"]}.')
        if not cfg['deploy']:
            learner = dict(cfg['learner'])
            check_sparsity_options(learner.pop('type', None), learner, cfg['spre'],
                                   cfg['interspace'])
        self.sparsity_cfg = cfg
        if cfg['deploy']:
            self._build_deploy(cfg)
        else:
            self._sparsify(cfg)

    def _build_deploy(self, cfg: dict) -> None:
        """The structure ``reparameterize`` gives: every conv plain except the interspace
        ones, which become :class:`InterspaceDeployConv2d` shells (same layers as training)."""
        interspace = cfg['interspace']
        if interspace is None:
            return  # every deployed layer is a plain conv: the stock ResNet structure
        pruning = interspace.get('pruning', 'nm')
        for _, _, block in self._selected_blocks(cfg['stages']):
            for conv_name, _ in self._conv_norm_pairs(block):
                conv = getattr(block, conv_name)
                if interspace_incompatibility(conv, self.m, pruning) is None:
                    setattr(block, conv_name, InterspaceDeployConv2d.from_conv(conv))

    def _selected_blocks(self, stages: Sequence[bool]):
        """``(stage, prefix, block)`` for every block of the stages selected by ``stages``:
        the one walk that both the training and the deploy structure follow."""
        for stage, layer_name in enumerate(self.res_layers, start=1):
            if stages[stage - 1]:
                for block_index, block in enumerate(getattr(self, layer_name)):
                    yield stage, f'{layer_name}.{block_index}', block

    def _sparsify(self, cfg: dict) -> None:
        learner = dict(cfg['learner'])
        method = learner.pop('type')
        spre, interspace = cfg['spre'], cfg['interspace']
        # the options of the layers; rep_bn_train is the backbone's (see train())
        block_spre = None if spre is None else {k: v for k, v in spre.items()
                                                 if k != 'rep_bn_train'}
        if spre is not None and interspace is not None:
            raise ConfigError('sparsity.spre and sparsity.interspace are alternative structures '
                             'for the k x k convs: set one of them to None.')
        dense = {}
        for stage in range(1, min(self.frozen_stages, self.num_stages) + 1):
            if cfg['stages'][stage - 1]:
                print_log(
                    f'{self.res_layers[stage - 1]} is frozen (frozen_stages='
                    f'{self.frozen_stages}): its {self.n}:{self.m} masks are one-shot magnitude '
                    'masks of the loaded weights' +
                    (' and SpRe\'s branch is not added there' if spre else '') +
                    '. Set frozen_stages=0 to train them.', logger='current')
        for stage, prefix, block in self._selected_blocks(cfg['stages']):
            frozen = stage <= self.frozen_stages
            dense.update(sparsify_residual_block(
                block, self._conv_norm_pairs(block), method, self.n, self.m,
                spre=None if frozen else block_spre,
                interspace=interspace, prefix=prefix, **learner))
        if not any(cfg['stages']):
            print_log(f'{type(self).__name__}: no stage selected (sparsity.stages all False): '
                      'a dense network', logger='current')
        elif not any(True for _ in sparse_layers(self)):
            raise ConfigError(
                f'M={self.m} divides the input channels of no selected layer, so nothing can be '
                f'{self.n}:{self.m} sparse (e.g. {next(iter(dense.values()))}). Use M=4 or 8 '
                '(ResNet widths are multiples of 64) or select more stages.')
        for name, reason in dense.items():
            print_log(f'{name} stays dense: {reason}', logger='current')

    def _num_deploy_interspace(self) -> int:
        return sum(isinstance(m, InterspaceDeployConv2d) for m in self.modules())

    @staticmethod
    def _conv_norm_pairs(block):
        index = 1
        while hasattr(block, f'conv{index}'):
            yield f'conv{index}', getattr(block, f'norm{index}_name')
            index += 1

    def train(self, mode: bool = True):
        """As the dense ResNet (``norm_eval`` keeps every BN on its running statistics), except
        that ``spre.rep_bn_train=True`` keeps the branch BNs in training mode: the extra branch
        then normalizes with batch statistics while the main branch stays frozen."""
        super().train(mode)
        spre = self.sparsity_cfg['spre'] if hasattr(self, 'sparsity_cfg') else None
        if mode and spre is not None and spre.get('rep_bn_train', False):
            for _, _, norm in spre_pairs(self):
                norm.rep_bn.train(True)
        return self

    def _all_blocks(self):
        for layer_name in self.res_layers:
            yield from getattr(self, layer_name)

    def init_weights(self):
        """Initialize (or load) the weights as the dense ResNet does, then derive what depends
        on them.

        The weight initializer ``init_cfg=dict(type='SparsePretrained', checkpoint=...,
        prefix='backbone.')`` loads a sparse run's backbone with everything it learned (see
        :class:`~spre_mmdet.models.sparse_pretrained.SparsePretrainedInit`). SpRe's branch
        (``rep_bn``'s gamma) starts at ``rep_gamma`` wherever it was not loaded from a sparse
        checkpoint, and at 0 in every channel whose main BN starts at gamma 0
        (``zero_init_residual``), so that the branch starts switched off exactly where the main
        branch does: no asymmetry with a plain N:M network.
        """
        super().init_weights()
        if self.sparsity_cfg['spre'] is not None and not self.sparsity_cfg['deploy']:
            rep_gamma = self.sparsity_cfg['spre'].get('rep_gamma', 0.0)
            for block in self._all_blocks():
                for conv_name, norm_name in self._conv_norm_pairs(block):
                    conv, norm = getattr(block, conv_name), getattr(block, norm_name)
                    if isinstance(norm, SpReBatchNorm2d) and conv.needs_init:
                        norm.rep_bn.weight.data.copy_(
                            rep_gamma * (norm.weight.detach() != 0).to(norm.weight.dtype))
        if self.sparsity_cfg['deploy']:
            print_log(f'{type(self).__name__} (deploy): {self._num_deploy_interspace()} interspace convs '
                      f'in basis conv + {self.n}:{self.m} 1x1 form, all other convs plain',
                      logger='current')
            return
        # masks and S of weights that just changed (random init, dense pretrained weights);
        # those loaded from a sparse checkpoint are kept (refresh at iteration 0 rederives
        # SR-STE masks and S from the same weights, and leaves LBC's loaded state alone)
        refresh_masks(self, 0)
        structure = [name for name in ('spre', 'interspace')
                     if self.sparsity_cfg[name] is not None]
        print_log(f'{type(self).__name__}: {len(list(sparse_layers(self)))} layers are '
                  f'{self.n}:{self.m} sparse ({self.sparsity_cfg["learner"]["type"]}'
                  f'{"".join("+" + name for name in structure)})', logger='current')


@MODELS.register_module()
class SparseResNet(SparseResNetMixin, ResNet):
    """mmdet ``ResNet`` (any depth; ``deep_stem=True, avg_down=True`` is ResNet-V1d) whose
    layer1-4 convs are N:M sparse: see :class:`SparseResNetMixin`.

    Args:
        sparsity (dict): see :class:`SparseResNetMixin` and ``DEFAULT_SPARSITY``.
        All other arguments are those of :class:`mmdet.models.backbones.ResNet`.
    """

    def __init__(self, *args, sparsity: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.dcn is not None:
            raise ConfigError('SparseResNet does not support dcn: deformable convs have no N:M '
                              'kernel. Remove `dcn` or use a dense ResNet.')
        self._setup_sparsity(sparsity)
