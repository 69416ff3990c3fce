"""Plain-PyTorch stand-ins for this package's mmdet R-50, for checks that run without mmdet/mmcv.

* :func:`sparsify_torchvision_resnet` makes layer1-4 of a torchvision ResNet N:M sparse the way
  ``SparseResNet`` does for mmdet's ResNet (same block walk: ``conv1..3`` with the BN after each,
  then ``downsample``; SpRe on the k x k convs; interspace on the k x k convs). torchvision's
  blocks name their norms ``bn1..3`` where mmdet's have ``norm1..3``; nothing else differs.
* :class:`BackboneFPN` is a ResNet-50 backbone returning C2-C5 plus a dense FPN with an extra
  max-pooled level (the structure of Mask R-CNN's backbone and neck), and
  :func:`r50_fpn_deploy` its 2:4 deploy form made through the package's own re-parameterization.
* :func:`r50_gemm_shapes` gives the GEMM shapes of named R-50 layers at a detection input size.

Only torch and torchvision are imported.
"""
import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..sparsity import (check_sparsity_options, refresh_masks, reparameterize,
                        sparsify_residual_block)
from .gemm import gemm_dims
from .layers import capture_input_shapes

#: the stages a sparse ResNet makes N:M (the 3-channel stem cannot be)
STAGES = ('layer1', 'layer2', 'layer3', 'layer4')
#: ResNet-50: 16 bottlenecks x 3 convs + 4 downsample convs
R50_SPARSE_LAYERS = 52
#: mmdet's detection preprocessor pads each side to a multiple of this
PAD_DIVISOR = 32


@dataclass(frozen=True)
class MethodSpec:
    """One sparse-training configuration of the GPU check.

    Attributes:
        name: key in the report.
        learner: mask learner (``'srste'``, ``'asp'``, ``'lbc'``).
        spre: add SpRe's branch to every k x k conv.
        interspace: make every k x k conv an interspace conv (N:M coefficients).
        bn_eval: keep every BN on running statistics while training (mmdet's
            ``norm_eval=True``); with ``spre`` that is the fused one-conv path, else SpRe runs
            its two branches with batch statistics.
    """

    name: str
    learner: str
    spre: bool = False
    interspace: bool = False
    bn_eval: bool = False

    def learner_kwargs(self, steps: int) -> dict:
        """LBC's removal ends one step before the run does, so the final mask gets trained."""
        if self.learner == 'lbc':
            return dict(t_i=0, t_f=max(1, steps - 1))
        return {}


#: every method the package trains, as the GPU check runs them
METHODS = (
    MethodSpec('srste', 'srste'),
    MethodSpec('asp', 'asp'),
    MethodSpec('lbc', 'lbc'),
    MethodSpec('spre_bn_train', 'srste', spre=True),
    MethodSpec('spre_bn_eval', 'srste', spre=True, bn_eval=True),
    MethodSpec('spre_lbc', 'lbc', spre=True, bn_eval=True),
    MethodSpec('interspace', 'srste', interspace=True),
)


def sparsify_torchvision_resnet(model: nn.Module, method: str, n: int = 2, m: int = 4,
                                learner_kwargs: Optional[dict] = None,
                                spre: Optional[dict] = None,
                                interspace: Optional[dict] = None,
                                stages: Sequence[str] = STAGES) -> Dict[str, str]:
    """Make the convs of ``stages`` of a torchvision ResNet N:M sparse, in place.

    Args:
        model: a torchvision ``ResNet`` (Bottleneck or BasicBlock).
        method: mask learner of every sparse layer.
        n, m: the N:M pattern.
        learner_kwargs: the learner's options (e.g. LBC's ``t_i``/``t_f``).
        spre: ``None`` or SpRe options (``rep_gamma``, ``spatial_interval``) for the k x k convs.
        interspace: ``None`` or interspace options (``pruning='nm'``, ...) for the k x k convs.
        stages: which of ``layer1..layer4`` to make sparse.

    Returns:
        ``{layer name: reason}`` of the convs that stayed dense.
    """
    learner_kwargs = dict(learner_kwargs or {})
    check_sparsity_options(method, learner_kwargs, spre, interspace)
    if spre is not None and interspace is not None:
        raise ValueError('spre and interspace are alternative structures for the k x k convs')
    dense = {}
    for stage in stages:
        for index, block in enumerate(getattr(model, stage)):
            pairs = [(f'conv{i}', f'bn{i}') for i in range(1, 4) if hasattr(block, f'conv{i}')]
            dense.update(sparsify_residual_block(block, pairs, method, n, m, spre=spre,
                                                 interspace=interspace,
                                                 prefix=f'{stage}.{index}', **learner_kwargs))
    return dense


def sparse_resnet50(spec: MethodSpec, steps: int, num_classes: int = 1000,
                    base: Optional[nn.Module] = None, rep_gamma: float = 0.5,
                    n: int = 2, m: int = 4) -> nn.Module:
    """A torchvision ResNet-50 made sparse for ``spec``, masks initialized (iteration 0).

    Args:
        base: a dense ResNet-50 to copy (so that every method starts from the same weights);
            a fresh one is built otherwise.
        rep_gamma: SpRe's branch BN starts at this gamma: non-zero, so that the branch takes
            part in the function from the first step and its folding is really checked.
    """
    import torchvision
    model = copy.deepcopy(base) if base is not None else torchvision.models.resnet50(
        num_classes=num_classes)
    sparsify_torchvision_resnet(
        model, spec.learner, n, m, spec.learner_kwargs(steps),
        spre=dict(rep_gamma=rep_gamma) if spec.spre else None,
        interspace=dict(pruning='nm') if spec.interspace else None)
    refresh_masks(model, 0)
    return model


def set_train_mode(model: nn.Module, bn_eval: bool) -> nn.Module:
    """Training mode; with ``bn_eval`` every BN (SpRe's branch BN too) on running statistics."""
    model.train()
    if bn_eval:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


class _Backbone(nn.Module):
    """A torchvision ResNet without its classifier, returning (C2, C3, C4, C5) like mmdet's."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        for name in ('conv1', 'bn1', 'relu', 'maxpool', *STAGES):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in STAGES:
            x = getattr(self, stage)(x)
            outs.append(x)
        return tuple(outs)


class _FPN(nn.Module):
    """torchvision's FPN (256 channels, an extra max-pooled level) on a tuple, returning a tuple,
    the five levels mmdet's FPN gives Mask R-CNN."""

    def __init__(self, in_channels: Sequence[int] = (256, 512, 1024, 2048),
                 out_channels: int = 256):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels,
                                         extra_blocks=LastLevelMaxPool())

    def forward(self, feats):
        out = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return tuple(out.values())


class BackboneFPN(nn.Module):
    """ResNet backbone (``backbone``) + dense FPN (``neck``), named like an mmdet detector so
    that the benchmark's scope prefixes (``backbone``, ``neck``) apply unchanged."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.backbone = _Backbone(resnet)
        self.neck = _FPN()

    def forward(self, x):
        return self.neck(self.backbone(x))


@torch.no_grad()
def r50_fpn_deploy(seed: int = 0, rep_gamma: float = 0.5,
                   device='cpu') -> Tuple[nn.Module, int]:
    """The 2:4 deploy form of a SpRe R-50 (backbone) + dense FPN, in eval mode, fp32.

    Built the way a deploy model of this package is: a ResNet-50 made SpRe 2:4 sparse (SR-STE
    main branch, magnitude masks of the initial weights), then :func:`reparameterize`, which
    folds each SpRe pair into a plain conv with an exactly 2:4 weight and an identity-plus-bias
    BN. Random weights: the timings do not depend on the values.

    Args:
        device: where to build it (the masks of 25M weights take seconds on a CPU).

    Returns:
        The model and the number of layers that were made sparse.
    """
    import torchvision
    torch.manual_seed(seed)
    resnet = torchvision.models.resnet50().to(device)
    sparsify_torchvision_resnet(resnet, 'srste', 2, 4, spre=dict(rep_gamma=rep_gamma))
    refresh_masks(resnet, 0)
    from ..sparsity import sparse_layers
    num_sparse = len(list(sparse_layers(resnet)))
    resnet.eval()
    deploy = reparameterize(resnet, inplace=True)
    return BackboneFPN(deploy).to(device).eval(), num_sparse


def padded_size(height: int, width: int, divisor: int = PAD_DIVISOR) -> Tuple[int, int]:
    """The batch size mmdet's preprocessor pads an image of ``height x width`` to."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def detection_input(batch: int, height: int, width: int, device, dtype) -> torch.Tensor:
    """A random normalized batch of ``height x width`` images zero-padded like mmdet's
    preprocessor, channels-last."""
    ph, pw = padded_size(height, width)
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(batch, 3, ph, pw)
    x[:, :, :height, :width] = torch.randn(batch, 3, height, width, generator=gen)
    return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


#: the largest GEMMs of an R-50 at detection size (weight N x K): the layer4 3x3 (im2col,
#: K = 9 * 512), layer4's stride-2 downsample, layer4's 1x1s and a layer3 3x3
GEMM_LAYERS = ('layer4.1.conv2', 'layer4.0.downsample.0', 'layer4.1.conv1', 'layer4.1.conv3',
               'layer3.1.conv2')


def r50_gemm_shapes(height: int, width: int, batch: int,
                    names: Sequence[str] = GEMM_LAYERS) -> List[dict]:
    """GEMM ``M x N x K`` of the named ResNet-50 layers for a padded ``height x width`` batch.

    The shapes come from a forward on the meta device (no memory, no arithmetic), so they are
    the real ones, not a formula that could drift from the network.
    """
    import torchvision
    with torch.device('meta'):
        model = torchvision.models.resnet50()
    ph, pw = padded_size(height, width)
    x = torch.empty(batch, 3, ph, pw, device='meta')
    shapes = capture_input_shapes(model, names, lambda: model(x))
    rows = []
    for name in names:
        module = model.get_submodule(name)
        (shape,) = shapes[name]
        m, n, k = gemm_dims(module, shape)
        kind = 'conv%dx%d' % tuple(module.kernel_size)
        if kind != 'conv1x1':
            kind += ' (im2col)'
        rows.append(dict(name=name, kind=kind, batch=batch, input_size=[height, width],
                         in_shape=list(shape), M=m, N=n, K=k))
    return rows
