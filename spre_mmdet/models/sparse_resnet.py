"""mmdet's ResNet made N:M sparse from config alone."""
import copy
from typing import Optional, Sequence

from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS
from mmengine.logging import print_log

from ..errors import ConfigError
from ..sparsity import (InterspaceDeployConv2d, SpReBatchNorm2d, check_nm, check_sparsity_options,
                        initialize_masks,
                        interspace_incompatibility, interspace_layer, sparse_layers,
                        sparsify_layer)

DEFAULT_SPARSITY = dict(
    n=2,
    m=4,
    # who learns the main N:M mask: 'srste' | 'asp' | 'lbc' (+ its keyword arguments)
    learner=dict(type='srste'),
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


@MODELS.register_module()
class SparseResNet(ResNet):
    """mmdet ``ResNet`` (any depth; ``deep_stem=True, avg_down=True`` is ResNet-V1d) whose
    layer1-4 convs are N:M sparse (SPEC section 7).

    The module tree and state-dict keys of the dense ResNet are kept (sparse layers only add
    their own buffers/parameters), so dense pretrained checkpoints load unchanged; masks are
    then derived from the loaded weights.

    Args:
        sparsity (dict): ``n``, ``m``; ``learner``: dict(type='srste'|'asp'|'lbc', **kwargs);
            ``spre``: None or dict(rep_gamma=0.0, spatial_interval=1) to add SpRe's branch to
            every k x k conv; ``interspace``: None or dict(pruning='nm', ...) to make every
            k x k conv an interspace (filter-basis) conv with N:M coefficients (not together
            with ``spre``); ``stages``: 4 bools; ``deploy``: build the re-parameterized
            structure to load a deploy checkpoint into (what ``spre_mmdet.deploy`` writes for
            interspace convs kept in their N:M basis form). See ``DEFAULT_SPARSITY``.
        All other arguments are those of :class:`mmdet.models.backbones.ResNet`.

    Frozen stages (``frozen_stages >= i``) never update: their N:M mask is the one-shot
    magnitude mask of the loaded weights, and SpRe's branch is not added there (it could not
    learn). This is logged, not silent.
    """

    def __init__(self, *args, sparsity: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.dcn is not None:
            raise ConfigError('SparseResNet does not support dcn: deformable convs have no N:M '
                             'kernel. Remove `dcn` or use a dense ResNet.')
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
            for conv_name, norm_name in self._conv_norm_pairs(block):
                conv = getattr(block, conv_name)
                spatial = conv.kernel_size != (1, 1)
                if interspace is not None and spatial and not interspace_layer(
                        block, conv_name, method, self.n, self.m, **interspace, **learner):
                    continue
                use_spre = spre is not None and not frozen and spatial
                reason = sparsify_layer(block, conv_name, method, self.n, self.m,
                                        norm_name=norm_name if use_spre else None,
                                        **(spre if use_spre else {}), **learner)
                if reason:
                    dense[f'{prefix}.{conv_name}'] = reason
            downsample = block.downsample
            if downsample is not None:
                for name, module in downsample.named_children():
                    if hasattr(module, 'kernel_size') and hasattr(module, 'weight'):
                        reason = sparsify_layer(downsample, name, method, self.n, self.m,
                                                **learner)
                        if reason:
                            dense[f'{prefix}.downsample.{name}'] = reason
        if not any(True for _ in sparse_layers(self)):
            raise ConfigError(
                f'M={self.m} divides the input channels of no selected layer, so nothing can be '
                f'{self.n}:{self.m} sparse (e.g. {next(iter(dense.values()), "no stage selected")}'
                '). Use M=4 or 8 (ResNet widths are multiples of 64) or select more stages.')
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

    def init_weights(self):
        super().init_weights()
        from_scratch = not (isinstance(self.init_cfg, dict) and
                            self.init_cfg.get('type') == 'Pretrained')
        if from_scratch and self.sparsity_cfg['spre'] is not None:
            # the generic BN init sets every BN's gamma to 1, rep_bn included: restore SpRe's
            rep_gamma = self.sparsity_cfg['spre'].get('rep_gamma', 0.0)
            for module in self.modules():
                if isinstance(module, SpReBatchNorm2d):
                    module.rep_bn.weight.data.fill_(rep_gamma)
        if self.sparsity_cfg['deploy']:
            print_log(f'SparseResNet (deploy): {self._num_deploy_interspace()} interspace convs '
                      f'in basis conv + {self.n}:{self.m} 1x1 form, all other convs plain',
                      logger='current')
            return
        initialize_masks(self)
        structure = [name for name in ('spre', 'interspace')
                     if self.sparsity_cfg[name] is not None]
        print_log(f'SparseResNet: {len(list(sparse_layers(self)))} layers are '
                  f'{self.n}:{self.m} sparse ({self.sparsity_cfg["learner"]["type"]}'
                  f'{"".join("+" + name for name in structure)})', logger='current')
