"""Import the ImageNet ResNet checkpoints released with SpRe and SR-STE.

Three reference layouts are recognised (after stripping DataParallel's ``module.`` prefix):

``spre`` (training-time SpRe, github.com/zyxxmu/SpRE, ``models/resnet.py``)
    Every conv of layer1-4 and the classifier are N:M ``SparseConv``s whose mask is recomputed
    from the weight in each forward (``Sparse_NHWC``: the top-N ``|w|`` of each group of M
    consecutive input channels at a fixed output channel and kernel position, our layout). A
    3x3 conv ``convK`` has an extra branch ``conv_rep`` (Bottleneck) / ``conv_repK``
    (BasicBlock) with its own BN ``bn_rep`` / ``bn_repK``; the branch computes
    ``conv(x, W_rep * sign(|W * B|) * S)``, where ``S`` is the stored ``kh x kw`` spatial mask
    (key ``conv_rep.mask``) and ``W * B`` the main branch's masked weight. The stem conv has a
    bias; the classifier ``fc`` is a 1x1 ``SparseConv`` with a bias.

``spre-deploy`` (SpRe's ``convert.py``)
    The same file plus ``convK_deploy.weight`` / ``.bias``: each pair folded with both BNs.
    The deploy network runs ``convK_deploy`` (again a ``SparseConv``, so N:M masked) instead
    of the pair and its BNs; the training-time keys left in the file are ignored.

``srste`` (SR-STE, github.com/aojunzz/NM-sparsity, ``classification/models/resnet.py``)
    A stock ResNet state dict (torchvision's keys) whose convs, the 7x7 stem included, are
    ``SparseConv``s masked in forward by ``Sparse_NHWC``; ``fc`` is a dense ``nn.Linear``. No
    mask is stored: it is derived from the weights here exactly as that forward does.

The result is an mmpretrain-style checkpoint (``backbone.*`` and ``head.fc.*`` keys): for
``spre`` and ``srste`` the keys of :class:`spre_mmdet.models.SparseResNet` (weights, boolean
N:M masks, SpRe's ``weight_rep`` / ``spatial`` / ``rep_bn``), for ``spre-deploy`` those of a
stock ResNet whose folded 3x3 convs are exactly N:M and followed by an identity-plus-bias BN.
Each converted network computes the reference network's eval-mode function; where the two
models differ in structure (stem conv bias, masked classifier or stem) the difference is
folded into the weights and recorded in ``meta['notes']``.
"""
import copy
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple

import torch

from ..errors import CheckpointError
from ..sparsity.nm import check_nm, check_nm_tensor, nm_incompatibility, nm_mask, to_groups
from ..sparsity.spre import spatial_mask
from .matching import state_dict_of

__all__ = [
    'FORMATS', 'SPRE_REPOSITORY', 'SRSTE_REPOSITORY', 'ReferenceFormatError',
    'ConvertedCheckpoint', 'detect_layout', 'detect_depth',
    'convert_reference', 'usage_snippets'
]

SPRE_REPOSITORY = 'https://github.com/zyxxmu/SpRE'
SRSTE_REPOSITORY = 'https://github.com/aojunzz/NM-sparsity'

#: the formats this module converts, with a description for messages and meta
FORMATS = OrderedDict([
    ('spre', 'SpRe training-time checkpoint (conv/conv_rep pairs, their BNs, spatial masks)'),
    ('spre-deploy', "SpRe re-parameterized checkpoint (convK_deploy with a bias, SpRe's "
                    'convert.py)'),
    ('srste', 'SR-STE checkpoint of NM-sparsity (stock ResNet keys, N:M masks computed from the '
              'weights in forward)'),
])

#: (bottleneck blocks?, blocks per stage) -> depth: the ImageNet ResNets the references define
ARCHITECTURES = {
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
}

#: the keys every stock (torchvision / NM-sparsity) ResNet state dict has
STOCK_KEYS = ('conv1.weight', 'bn1.running_mean', 'layer1.0.conv1.weight', 'fc.weight')

#: an SR-STE file is taken to be trained with NM-sparsity's older kernel-dimension groups when
#: those groups prune less than this fraction of the energy the hardware-layout groups prune
KERNEL_LAYOUT_MARGIN = 0.8

MASK_RULE = ('top-n |w| of each group of m consecutive input channels at a fixed (out, kh, kw) '
             'position; exact ties keep the lower channel index (the reference breaks them in '
             'torch.argsort order, which is unspecified)')


class ReferenceFormatError(CheckpointError, ValueError):
    """The input is not a reference checkpoint this module can convert; the message says why
    and what to do (one line, shown by ``tools/import_reference.py`` without a traceback)."""


@dataclass
class ConvertedCheckpoint:
    """A converted checkpoint and what was found on the way.

    Attributes:
        state_dict: ``backbone.*`` and ``head.fc.*`` tensors.
        meta: JSON-like facts: source format, depth, N:M, method, the backbone config that
            loads ``state_dict`` strictly, counts, checks and notes.
        summary: human-readable lines for the tool to print.
    """

    state_dict: Dict[str, torch.Tensor]
    meta: dict
    summary: List[str] = field(default_factory=list)

    def checkpoint(self) -> dict:
        """What to ``torch.save``: ``{'state_dict': ..., 'meta': ...}``."""
        return {'state_dict': self.state_dict, 'meta': self.meta}


# --------------------------------------------------------------------------------------
# Reading the input
# --------------------------------------------------------------------------------------
def _read(checkpoint) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The model state dict of a reference checkpoint, and the facts about its container.

    Both references save ``{'epoch', 'state_dict', 'optimizer', ...}`` (SpRe's with
    DataParallel's ``module.`` on every key); SpRe's ``convert.py`` saves the bare state dict.
    Returns ``(state_dict, container)``: the state dict as :func:`~.matching.state_dict_of`
    gives it; ``container`` holds the top-level scalars and strings next to it (e.g. ``arch``,
    ``model``, ``epoch``) and the names of all top-level entries under ``'keys'``.

    Raises:
        ReferenceFormatError: if no ``{name: tensor}`` dict is found.
    """
    try:
        state = state_dict_of(checkpoint, 'The file')
    except CheckpointError as e:
        raise ReferenceFormatError(f'{e} Give the checkpoint file SpRe or NM-sparsity saved.'
                                   ) from None
    container = {'keys': sorted(str(k) for k in checkpoint)}
    if isinstance(checkpoint.get('state_dict'), Mapping):
        container.update({k: v for k, v in checkpoint.items()
                          if isinstance(v, (str, int, float)) and not isinstance(v, bool)})
    return state, container


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """``'spre-deploy'``, ``'spre'``, ``'stock'`` (torchvision/NM-sparsity ResNet keys: an
    SR-STE checkpoint or a dense ResNet, the keys cannot tell) or ``'unknown'``."""
    keys = list(state)
    if any(re.search(r'\.conv\d_deploy\.weight$', k) for k in keys):
        return 'spre-deploy'
    if any(re.search(r'\.conv_rep\d?\.weight$', k) for k in keys):
        return 'spre'
    if all(k in state for k in STOCK_KEYS):
        return 'stock'
    return 'unknown'


def detect_depth(state: Mapping[str, torch.Tensor]) -> Tuple[int, bool]:
    """``(depth, bottleneck)`` of an ImageNet ResNet state dict, from its keys.

    Raises:
        ReferenceFormatError: for anything but ResNet-18/34/50/101/152 with a 64-channel
            7x7 stem (e.g. SpRe's CIFAR ResNet-32, which has three stages).
    """
    blocks: Dict[int, set] = {}
    for key in state:
        match = re.match(r'layer(\d+)\.(\d+)\.', key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    stages = sorted(blocks)
    counts = tuple(len(blocks[s]) for s in stages)
    bottleneck = 'layer1.0.conv3.weight' in state
    depth = ARCHITECTURES.get((bottleneck, counts)) if stages == [1, 2, 3, 4] else None
    supported = 'ImageNet ResNet-18/34/50/101/152'
    if depth is None:
        kind = 'Bottleneck' if bottleneck else 'BasicBlock'
        raise ReferenceFormatError(
            f'Unsupported depth: {len(stages)} stages of {counts} {kind}s (e.g. SpRe\'s CIFAR '
            f'ResNet-32 has 3 stages); supported are the {supported} of the references.')
    stem = state.get('conv1.weight')
    if stem is None or tuple(stem.shape) != (64, 3, 7, 7):
        raise ReferenceFormatError(
            f'Unsupported stem: conv1.weight has shape '
            f'{None if stem is None else tuple(stem.shape)}, expected (64, 3, 7, 7) of the '
            f'{supported}.')
    return depth, bottleneck


def _resolve_format(requested: str, layout: str, state, container: dict) -> str:
    """The format to convert with; refuses a layout that is not the requested format."""
    found = {
        'spre': "SpRe's training-time keys (conv_rep)",
        'spre-deploy': "SpRe's deploy keys (convK_deploy)",
        'stock': 'stock ResNet keys (conv1.weight, layer1.0.conv1.weight, fc.weight)',
    }
    if layout == 'unknown':
        sample = ', '.join(list(state)[:4])
        hint = (' (keys start with "backbone.": already converted? load it directly)'
                if any(k.startswith('backbone.') for k in state) else '')
        raise ReferenceFormatError(
            f'Unknown checkpoint layout: found keys such as {sample}{hint}; supported are '
            f'{", ".join(FORMATS)} (ImageNet ResNets of SpRe and NM-sparsity).')
    if requested == 'auto':
        if layout != 'stock':
            return layout
        model = container.get('model')
        if isinstance(model, str) and re.fullmatch(r'resnet\d+', model):
            return 'srste'  # NM-sparsity's train_imagenet.py saves 'model': args.model
        raise ReferenceFormatError(
            'The keys are a stock ResNet\'s: an SR-STE (NM-sparsity) checkpoint and a dense '
            'ResNet look the same, and this file does not say which (no "model": "resnetXX" '
            'entry as NM-sparsity writes); if it is SR-STE, pass --format srste.')
    if requested not in FORMATS:
        raise ReferenceFormatError(f'Unknown format {requested!r}; choose auto or one of '
                                   f'{", ".join(FORMATS)}.')
    if layout == 'stock' and requested in ('spre', 'spre-deploy'):
        raise ReferenceFormatError(
            f'Not a SpRe checkpoint: it has {found["stock"]} and no SpRe branch '
            f'(conv_rep/mask) keys, i.e. a dense or SR-STE ResNet; use --format srste for an '
            'NM-sparsity checkpoint.')
    if layout != requested and not (requested == 'srste' and layout == 'stock'):
        raise ReferenceFormatError(
            f'--format {requested} does not match the file: it has {found[layout]}; use '
            f'--format {"srste" if layout == "stock" else layout} (or auto).')
    return requested


# --------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------
def _tied_groups(weight: torch.Tensor, n: int, m: int) -> int:
    """Groups whose n-th and (n+1)-th largest ``|w|`` are equal and non-zero: there the kept
    set depends on the tie rule (ties between zeros change nothing)."""
    top = to_groups(weight.detach().float().abs(), m).topk(n + 1, dim=1).values
    return int(((top[:, n - 1] == top[:, n]) & (top[:, n] > 0)).sum())


def _flat_group_mask(weight: torch.Tensor, n: int, m: int, order: str) -> torch.Tensor:
    """N:M mask over groups of ``m`` consecutive elements of ``weight`` flattened in ``order``:
    ``'nhwc'`` (Sparse_NHWC, for any channel count) or ``'nchw'`` (NM-sparsity's older
    ``Sparse``). Same magnitude and tie rule as :func:`nm_mask`."""
    if weight.numel() % m:
        raise ReferenceFormatError(f'A weight of shape {tuple(weight.shape)} has '
                                   f'{weight.numel()} elements, not a multiple of M={m}.')
    permuted = weight.permute(0, 2, 3, 1) if order == 'nhwc' else weight
    rows = nm_mask(permuted.reshape(-1, m), n, m)  # a (groups, m) matrix: groups along dim 1
    rows = rows.reshape(permuted.shape)
    return rows.permute(0, 3, 1, 2).contiguous() if order == 'nhwc' else rows


class _Converter:
    """Walks a reference ResNet state dict and writes ours; records what it found."""

    def __init__(self, state: Mapping[str, torch.Tensor], fmt: str, depth: int,
                 bottleneck: bool, n: int, m: int, bn_eps: float):
        self.src, self.fmt, self.depth, self.bottleneck = state, fmt, depth, bottleneck
        self.n, self.m, self.bn_eps = n, m, bn_eps
        self.out: Dict[str, torch.Tensor] = OrderedDict()
        self.used = set()
        self.sparse_layers: List[str] = []   # convs with an N:M mask / exactly N:M weight
        self.spre_layers: List[str] = []
        self.tied_groups = 0
        self.zeroed_rep_weights = 0
        self.stale_spatial: List[str] = []   # stored S != S recomputed from the stored weights
        self.initial_spatial: List[str] = []  # S never refreshed (SpRe's integer all-ones init)
        self.spatial_alternatives: Dict[str, int] = {}
        self.non_affine_bns: List[str] = []
        self.deploy_max_nonzeros = 0
        self.notes: List[str] = []

    # -- reading -------------------------------------------------------------------------
    def take(self, key: str) -> torch.Tensor:
        if key not in self.src:
            raise ReferenceFormatError(
                f'Key {key!r} is missing for a {self.fmt} ResNet-{self.depth}: the file is '
                'incomplete or not of that format; check --format and the file.')
        self.used.add(key)
        return self.src[key]

    def has(self, key: str) -> bool:
        return key in self.src

    # -- writing -------------------------------------------------------------------------
    def batchnorm(self, src: str, dst: str) -> None:
        """Copy a BN. SpRe's ``NonAffineBatchNorm`` (no gamma/beta) becomes gamma=1, beta=0."""
        mean = self.take(f'{src}.running_mean')
        self.out[f'{dst}.weight'] = (self.take(f'{src}.weight') if self.has(f'{src}.weight')
                                     else torch.ones_like(mean))
        self.out[f'{dst}.bias'] = (self.take(f'{src}.bias') if self.has(f'{src}.bias')
                                   else torch.zeros_like(mean))
        if not self.has(f'{src}.weight'):
            self.non_affine_bns.append(src)
        self.out[f'{dst}.running_mean'] = mean
        self.out[f'{dst}.running_var'] = self.take(f'{src}.running_var')
        self.out[f'{dst}.num_batches_tracked'] = (
            self.take(f'{src}.num_batches_tracked') if self.has(f'{src}.num_batches_tracked')
            else torch.tensor(0, dtype=torch.long))

    def identity_bn(self, dst: str, bias: torch.Tensor) -> None:
        """The BN after a folded conv: ``gamma=1, beta=bias, mean=0, var=1-eps``."""
        self.out[f'{dst}.weight'] = torch.ones_like(bias)
        self.out[f'{dst}.bias'] = bias.clone()
        self.out[f'{dst}.running_mean'] = torch.zeros_like(bias)
        self.out[f'{dst}.running_var'] = torch.full_like(bias, 1.0 - self.bn_eps)
        self.out[f'{dst}.num_batches_tracked'] = torch.tensor(0, dtype=torch.long)

    def nm_weight(self, src: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """A sparse conv's weight and its N:M mask (what the reference's forward computes)."""
        weight = self.take(f'{src}.weight')
        reason = nm_incompatibility(weight.shape, self.m)
        if reason is not None:
            raise ReferenceFormatError(f'{src} cannot be {self.n}:{self.m} in the hardware '
                                       f'layout ({reason}); use an M that divides the widths.')
        self.tied_groups += _tied_groups(weight, self.n, self.m)
        return weight, nm_mask(weight, self.n, self.m)

    def sparse_conv(self, src: str, dst: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Training form: the dense latent weight plus our boolean mask."""
        weight, mask = self.nm_weight(src)
        self.out[f'{dst}.weight'] = weight
        self.out[f'{dst}.sparsity.mask'] = mask
        self.sparse_layers.append(dst)
        return weight, mask

    def masked_conv(self, src: str, dst: str) -> None:
        """Deploy form: the weight with the pruned entries zeroed."""
        weight, mask = self.nm_weight(src)
        self.out[f'{dst}.weight'] = weight * mask
        self.sparse_layers.append(dst)

    def spre_pair(self, main: str, rep: str, bn_main: str, bn_rep: str, conv: str,
                  norm: str) -> None:
        """A SpRe pair: main conv + ``conv_rep`` + both BNs -> SpReConv2d + SpReBatchNorm2d."""
        weight, mask = self.sparse_conv(main, conv)
        weight_rep = self.take(f'{rep}.weight')
        stored = self.take(f'{rep}.mask')
        if tuple(stored.shape) != tuple(weight.shape[2:]) or not bool(
                ((stored == 0) | (stored == 1)).all()):
            raise ReferenceFormatError(
                f'{rep}.mask should be SpRe\'s 0/1 spatial mask of shape '
                f'{tuple(weight.shape[2:])}, got shape {tuple(stored.shape)}: not a SpRe file.')
        # SpReConv.forward multiplies W_rep by sign(|W * B|): B without the kept weights that
        # are exactly 0. Ours multiplies by B, so zero W_rep there: the same function.
        dead = mask & (weight == 0)
        self.zeroed_rep_weights += int(dead.count_nonzero())
        self.out[f'{conv}.weight_rep'] = torch.where(dead, torch.zeros_like(weight_rep),
                                                     weight_rep)
        spatial = stored.to(weight.dtype)
        self.out[f'{conv}.spatial'] = spatial
        if not stored.is_floating_point() and bool((stored == 1).all()):
            # set_rep_masks stores a float mask; an integer all-ones one is the initial value
            self.initial_spatial.append(conv)
        elif not torch.equal(spatial_mask(weight, self.n, self.m), spatial):
            self.stale_spatial.append(conv)
            if len(self.stale_spatial) <= 3:  # enough layers to hint at the right density
                self.match_densities(weight, spatial)
        self.batchnorm(bn_main, norm)
        self.batchnorm(bn_rep, f'{norm}.rep_bn')
        self.spre_layers.append(conv)

    def match_densities(self, weight: torch.Tensor, spatial: torch.Tensor) -> None:
        """Count the common N:M densities whose recomputed S equals the stored one (S depends
        on the density n/m only)."""
        for n, m in ((1, 4), (2, 4), (3, 4), (1, 8), (3, 8)):
            if n * self.m != m * self.n and torch.equal(spatial_mask(weight, n, m), spatial):
                self.spatial_alternatives[f'{n}:{m}'] = (
                    self.spatial_alternatives.get(f'{n}:{m}', 0) + 1)

    def deploy_pair(self, src: str, conv: str, norm: str) -> None:
        """SpRe's folded ``convK_deploy`` (weight + bias) -> exactly N:M conv + identity BN."""
        weight = self.take(f'{src}.weight')
        bias = self.take(f'{src}.bias')
        reason = nm_incompatibility(weight.shape, self.m)
        if reason is not None:
            raise ReferenceFormatError(f'{src} cannot be {self.n}:{self.m} in the hardware '
                                       f'layout ({reason}); use an M that divides the widths.')
        check = check_nm_tensor(weight, self.n, self.m)
        if not check.ok:
            raise ReferenceFormatError(
                f'{src} is not {self.n}:{self.m}: {check.num_violations}/{check.num_groups} '
                f'groups of {self.m} input channels hold more than {self.n} non-zeros; pass the '
                'N:M the model was trained with (--n/--m).')
        nonzeros = to_groups(weight != 0, self.m).sum(dim=1)
        self.deploy_max_nonzeros = max(self.deploy_max_nonzeros, int(nonzeros.max()))
        # SpRe's deploy conv is a SparseConv again: its forward keeps the top-n |w| per group,
        # which leaves a weight that is already N:M unchanged. Masking makes that exact.
        self.out[f'{conv}.weight'] = weight * nm_mask(weight, self.n, self.m)
        self.identity_bn(norm, bias)
        self.sparse_layers.append(conv)

    # -- the network -----------------------------------------------------------------------
    def stem(self) -> None:
        weight = self.take('conv1.weight')
        if self.fmt == 'srste':
            # NM-sparsity's stem is a SparseConv too; with 3 input channels its groups of M run
            # across kernel positions (and output channels), which no N:M layout of our dense
            # stem can express: bake the mask into the weight.
            weight = weight * _flat_group_mask(weight, self.n, self.m, 'nhwc')
            self.notes.append(
                f'stem conv1: NM-sparsity masks it {self.n}:{self.m} over the flattened '
                f'(out, kh, kw, in) weight (3 input channels); the mask is baked into the '
                'weight, and our stem is dense: if it is trained, the pruned entries regrow')
        self.out['conv1.weight'] = weight
        self.batchnorm('bn1', 'bn1')
        if self.has('conv1.bias'):
            # SpRe's stem conv has a bias and ours none: BN(conv(x) + b) is BN with its running
            # mean lowered by b (and with batch statistics b cancels), so fold it there.
            self.out['bn1.running_mean'] = self.out['bn1.running_mean'] - self.take('conv1.bias')
            self.notes.append('stem conv1.bias folded into bn1.running_mean (exact)')

    def head(self) -> None:
        weight, bias = self.take('fc.weight'), self.take('fc.bias')
        if weight.dim() == 4:  # SpRe: a 1x1 SparseConv classifier
            weight = weight.flatten(1)
        if self.fmt in ('spre', 'spre-deploy'):
            weight = weight * nm_mask(weight, self.n, self.m)
            self.notes.append(f'classifier fc: SpRe\'s is a {self.n}:{self.m} SparseConv; the '
                              'mask is baked into head.fc.weight (a dense Linear here)')
        self.out['head.fc.weight'] = weight
        self.out['head.fc.bias'] = bias

    def block(self, prefix: str) -> None:
        """One residual block ``prefix`` (e.g. ``layer2.0``) in the target form."""
        if self.bottleneck:
            self.sparse_or_masked(f'{prefix}.conv1')
            self.batchnorm(f'{prefix}.bn1', f'{prefix}.bn1')
            self.three_by_three(prefix, 2, f'{prefix}.conv_rep', f'{prefix}.bn_rep')
            self.sparse_or_masked(f'{prefix}.conv3')
            self.batchnorm(f'{prefix}.bn3', f'{prefix}.bn3')
        else:
            for index in (1, 2):
                self.three_by_three(prefix, index, f'{prefix}.conv_rep{index}',
                                    f'{prefix}.bn_rep{index}')
        if self.has(f'{prefix}.downsample.0.weight'):
            self.sparse_or_masked(f'{prefix}.downsample.0')
            self.batchnorm(f'{prefix}.downsample.1', f'{prefix}.downsample.1')

    def sparse_or_masked(self, name: str) -> None:
        if self.fmt == 'spre-deploy':
            self.masked_conv(name, name)
        else:
            self.sparse_conv(name, name)

    def three_by_three(self, prefix: str, index: int, rep: str, bn_rep: str) -> None:
        conv, norm = f'{prefix}.conv{index}', f'{prefix}.bn{index}'
        if self.fmt == 'spre':
            self.spre_pair(conv, rep, norm, bn_rep, conv, norm)
        elif self.fmt == 'spre-deploy':
            self.deploy_pair(f'{prefix}.conv{index}_deploy', conv, norm)
        else:
            self.sparse_conv(conv, conv)
            self.batchnorm(norm, norm)

    def run(self) -> Dict[str, torch.Tensor]:
        self.stem()
        for stage in range(1, 5):
            index = 0
            while self.has(f'layer{stage}.{index}.bn1.running_mean') or self.has(
                    f'layer{stage}.{index}.conv1_deploy.weight'):
                self.block(f'layer{stage}.{index}')
                index += 1
        self.head()
        return self.out

    def leftovers(self) -> List[str]:
        """Source keys not converted (for the deploy format: the training-time ones)."""
        return [k for k in self.src if k not in self.used]


def _layout_fit(out: Mapping[str, torch.Tensor], layers: List[str], n: int,
                m: int) -> Tuple[float, float]:
    """Fraction of the squared weight that N:M pruning removes from the k x k convs in the
    hardware layout (the converted masks: input-channel groups) and in NM-sparsity's older
    kernel layout (``Sparse``: groups of consecutive elements of the (out, in, kh, kw)
    weight). A model trained N:M in one layout has small pruned weights there (SR-STE decays
    them); for 1x1 convs both layouts group the same weights, so they are left out."""
    hardware = kernel = total = 0.0
    for name in layers:
        weight = out[f'{name}.weight'].detach().float()
        if weight.shape[2] * weight.shape[3] == 1:
            continue
        energy = weight.square()
        total += float(energy.sum(dtype=torch.float64))
        hardware += float(energy[~out[f'{name}.sparsity.mask']].sum(dtype=torch.float64))
        kernel_kept = _flat_group_mask(weight, n, m, 'nchw')
        kernel += float(energy[~kernel_kept].sum(dtype=torch.float64))
    if total == 0:
        return 0.0, 0.0
    return hardware / total, kernel / total


def _backbone_config(depth: int, fmt: str, n: int, m: int) -> dict:
    """The backbone config that loads the converted backbone strictly."""
    if fmt == 'spre-deploy':
        return dict(type='ResNet', depth=depth)
    spre = dict() if fmt == 'spre' else None
    return dict(type='SparseResNet', depth=depth,
                sparsity=dict(n=n, m=m, learner=dict(type='SRSTEMask'), spre=spre))


def convert_reference(checkpoint, fmt: str = 'auto', n: int = 2, m: int = 4,
                      bn_eps: float = 1e-5,
                      allow_repruning: bool = False) -> ConvertedCheckpoint:
    """Convert a loaded SpRe / SR-STE reference checkpoint into this package's format.

    Args:
        checkpoint: what ``torch.load`` returned for the reference file.
        fmt: ``'auto'`` or one of :data:`FORMATS`.
        n, m: the N:M pattern the model was trained with (neither reference stores it).
        bn_eps: eps of the target BNs (mmdet/mmpretrain ResNet: 1e-5), for the deploy form's
            identity-plus-bias BN (``var = 1 - eps``).
        allow_repruning: convert an SR-STE file even when its weights look trained with
            NM-sparsity's older kernel-dimension groups (its masks then are re-derived in the
            hardware layout, a different network that needs fine-tuning).

    Returns:
        The converted checkpoint (see :class:`ConvertedCheckpoint`).

    Raises:
        ReferenceFormatError: unknown layout, a layout that is not the requested format, a
            dense checkpoint given as SpRe, masks or weights that are not the requested N:M,
            an unsupported depth.
    """
    try:
        n, m = check_nm(n, m)
    except ValueError as e:
        raise ReferenceFormatError(str(e)) from None
    state, container = _read(checkpoint)
    layout = detect_layout(state)
    fmt = _resolve_format(fmt, layout, state, container)
    depth, bottleneck = detect_depth(state)
    converter = _Converter(state, fmt, depth, bottleneck, n, m, bn_eps)
    out = converter.run()

    leftovers = converter.leftovers()
    ignored = 0
    if fmt == 'spre-deploy':
        # convert.py writes the deploy keys next to the full training-time state dict
        training_keys = re.compile(r'\.(conv\d|bn\d|conv_rep\d?|bn_rep\d?)\.')
        ignored = sum(bool(training_keys.search(k)) for k in leftovers)
        leftovers = [k for k in leftovers if not training_keys.search(k)]
    if leftovers:
        raise ReferenceFormatError(
            f'{len(leftovers)} keys of the file have no place in a {fmt} ResNet-{depth} '
            f'(e.g. {", ".join(leftovers[:3])}): not a file of that format; check --format.')

    notes = converter.notes
    if fmt == 'spre' and converter.stale_spatial:
        if len(converter.stale_spatial) * 2 > len(converter.spre_layers):
            alternatives = sorted(converter.spatial_alternatives.items(), key=lambda kv: -kv[1])
            hint = (f' (they match the density of {alternatives[0][0]} in '
                    f'{alternatives[0][1]} of the first 3)'
                    if alternatives else '')
            raise ReferenceFormatError(
                f'The spatial masks S of {len(converter.stale_spatial)}/'
                f'{len(converter.spre_layers)} SpRe layers differ from S recomputed for '
                f'{n}:{m}{hint}: the file is not {n}:{m}; pass the N:M it was trained with '
                '(--n/--m).')
        notes.append(f'{len(converter.stale_spatial)} stored spatial masks S differ from S '
                     'recomputed from the stored weights (SpRe computes S before the last '
                     'optimizer step); the stored S is kept: it is what the reference evaluates '
                     'with')
    if fmt == 'spre-deploy' and converter.deploy_max_nonzeros < n:
        raise ReferenceFormatError(
            f'The deploy convs hold at most {converter.deploy_max_nonzeros} non-zeros per group '
            f'of {m}: they are {converter.deploy_max_nonzeros}:{m}, not {n}:{m}; pass '
            f'--n {converter.deploy_max_nonzeros} --m {m}.')
    if converter.initial_spatial:
        notes.append(f'{len(converter.initial_spatial)} spatial masks S were never refreshed '
                     "(SpRe's integer all-ones initial value); kept as all ones")
    if converter.zeroed_rep_weights:
        notes.append(f'{converter.zeroed_rep_weights} W_rep entries zeroed where the main '
                     'weight is kept but exactly 0 (SpRe masks W_rep with sign(|W*B|))')
    if converter.non_affine_bns:
        notes.append(f'{len(converter.non_affine_bns)} non-affine BNs (SpRe NonAffineBatchNorm) '
                     'given gamma=1, beta=0')
    if converter.tied_groups:
        notes.append(f'{converter.tied_groups} groups have a tie at the N-th largest |w|: '
                     'the lower channel index is kept there (the reference: argsort order)')

    fit = None
    if fmt == 'srste':
        fit = _layout_fit(out, converter.sparse_layers, n, m)
        hardware, kernel = fit
        if kernel < KERNEL_LAYOUT_MARGIN * hardware:
            message = (f'The weights fit {n}:{m} groups along the kernel dimension better than '
                       f'along input channels (pruned energy {kernel:.3f} vs {hardware:.3f}): '
                       'it looks trained with NM-sparsity\'s older Sparse op (before its '
                       'commit 5e1099f "NCHW >> NHWC"), whose masks are not N:M in the '
                       'hardware layout')
            if not allow_repruning:
                raise ReferenceFormatError(
                    message + '; use the NHWC release, or pass --allow-repruning to re-derive '
                    'the masks in the hardware layout (a different network: fine-tune it).')
            notes.append(message + '; masks re-derived in the hardware layout (--allow-'
                         'repruning): fine-tune before use')

    problems = []  # every N:M tensor written, checked in the hardware layout
    for name in converter.sparse_layers:
        if fmt == 'spre-deploy':
            check = check_nm_tensor(out[f'{name}.weight'], n, m)
            if not check.ok:
                problems.append(f'{name}: {check.explain()}')
        elif not bool((to_groups(out[f'{name}.sparsity.mask'], m).count_nonzero(dim=1)
                       == n).all()):
            problems.append(f'{name}: the mask does not keep exactly {n} of every {m}')
    if problems:  # by construction impossible; a failure here is a bug, not bad input
        raise AssertionError('Converted weights are not N:M: ' + '; '.join(problems[:3]))

    method = {'spre': 'srste+spre', 'spre-deploy': 'deploy', 'srste': 'srste'}[fmt]
    backbone = _backbone_config(depth, fmt, n, m)
    state_dict = OrderedDict(
        (key if key.startswith('head.') else f'backbone.{key}', value.detach().clone())
        for key, value in out.items())
    meta = dict(
        source_format=fmt,
        source_description=FORMATS[fmt],
        source_repository=SRSTE_REPOSITORY if fmt == 'srste' else SPRE_REPOSITORY,
        source_container={k: v for k, v in container.items() if k != 'keys'},
        source_top_level_keys=container['keys'],
        depth=depth,
        block='Bottleneck' if bottleneck else 'BasicBlock',
        n=n, m=m, nm=f'{n}:{m}',
        method=method,
        num_classes=int(out['head.fc.weight'].shape[0]),
        backbone=backbone,
        sparsity=copy.deepcopy(backbone.get('sparsity')),
        num_sparse_layers=len(converter.sparse_layers),
        num_spre_layers=len(converter.spre_layers),
        nm_valid=True,
        mask_rule=('masks derived from the weights: ' + MASK_RULE if fmt != 'spre-deploy' else
                   'deploy weights kept as folded by SpRe (already N:M) and checked'),
        ignored_training_keys=ignored,
        notes=list(notes),
    )
    if fit is not None:
        meta['pruned_energy'] = dict(hardware_layout=round(fit[0], 6),
                                     kernel_layout=round(fit[1], 6))
    if fmt == 'spre':
        meta['spatial_masks'] = dict(stored=len(converter.spre_layers),
                                     differ_from_recomputed=len(converter.stale_spatial),
                                     never_refreshed=len(converter.initial_spatial))

    kind = 'Bottleneck' if bottleneck else 'BasicBlock'
    summary = [
        f'Format: {fmt} ({FORMATS[fmt]})',
        f'Model: ResNet-{depth} ({kind}), {n}:{m}, method {method}, '
        f'{meta["num_classes"]} classes',
        f'Sparse layers: {len(converter.sparse_layers)}' +
        (f' ({len(converter.spre_layers)} with a SpRe branch)' if converter.spre_layers else '')
        + f'; all {n}:{m} valid in the hardware layout',
    ]
    if fmt == 'spre':
        summary.append(f'Spatial masks S: {len(converter.spre_layers)} stored, '
                       f'{len(converter.stale_spatial)} differ from S recomputed from the weights')
    if fit is not None:
        summary.append(f'Pruned weight energy: {fit[0]:.3f} in the hardware layout, {fit[1]:.3f} '
                       'in the kernel layout (lower = fits N:M better)')
    if ignored:
        summary.append(f'Ignored {ignored} training-time keys stored next to the deploy convs')
    summary += [f'Note: {note}' for note in notes]
    return ConvertedCheckpoint(state_dict, meta, summary)


def _detection_sparsity(meta: dict) -> dict:
    """The SparseResNet sparsity config a detector fine-tunes the converted backbone with: the
    training-time form as converted; the deploy form (exactly N:M weights, no SpRe branch) as
    plain SR-STE N:M, whose masks derived from those weights keep exactly their support."""
    return meta['sparsity'] or dict(n=meta['n'], m=meta['m'], learner=dict(type='SRSTEMask'),
                                    spre=None)


def usage_snippets(meta: dict, checkpoint_path: str) -> Dict[str, str]:
    """Config text that uses a converted checkpoint (``meta`` as :func:`convert_reference`
    returns it): ``'mmpretrain'``, a complete mmpretrain config for ImageNet evaluation, and
    ``'detection'``, the backbone part of a detection config (plus a command line)."""
    depth, path = meta['depth'], checkpoint_path
    sparse = meta['backbone']['type'] == 'SparseResNet'
    width = 512 * (4 if meta['block'] == 'Bottleneck' else 1)
    head = (f'head=dict(num_classes={meta["num_classes"]}, in_channels={width})'
            if meta['num_classes'] != 1000 else None)
    lines = [f"# ImageNet evaluation, {meta['source_format']} ResNet-{depth} {meta['nm']}: "
             "mmpretrain's tools/test.py THIS_CONFIG " + path,
             f"_base_ = 'mmpretrain::resnet/resnet{depth}_8xb32_in1k.py'"]
    model = []
    if sparse:
        lines.append("custom_imports = dict(imports=['spre_mmdet'], allow_failed_imports=False)")
        model.append(f"backbone=dict(type='mmdet.SparseResNet', sparsity={meta['sparsity']!r})")
    if head:
        model.append(head)
    if model:
        lines.append('model = dict(' + ', '.join(model) + ')')
    lines.append(f'load_from = {path!r}')
    mmpretrain = '\n'.join(lines) + '\n'

    sparsity = _detection_sparsity(meta)
    frozen = ('a frozen stage gets no SpRe branch: the converted one would be dropped'
              if sparsity['spre'] is not None else 'a frozen sparse stage could not learn its mask')
    detection = (
        "model = dict(backbone=dict(\n"
        f"    type='SparseResNet', depth={depth},\n"
        f"    frozen_stages=0,  # {frozen}\n"
        f"    sparsity={sparsity!r},\n"
        f"    init_cfg=dict(type='Pretrained', checkpoint={path!r}, prefix='backbone.')))\n")
    if depth == 50:
        config = ('configs/mask_rcnn_r50_spre_2x4.py' if sparsity['spre'] is not None else
                  'configs/mask_rcnn_r50_srste_2x4.py')
        options = [f'model.backbone.init_cfg.checkpoint={path}',
                   'model.backbone.init_cfg.prefix=backbone.']
        if (meta['n'], meta['m']) != (2, 4):
            options += [f'model.backbone.sparsity.n={meta["n"]}',
                        f'model.backbone.sparsity.m={meta["m"]}']
        detection += (f'# or: python tools/train.py {config} --cfg-options '
                      + ' '.join(options) + '\n')
    return {'mmpretrain': mmpretrain, 'detection': detection}
