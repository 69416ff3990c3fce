"""Independent re-implementations of the two reference ImageNet ResNets, for the import tests.

Written from the reference repositories, not from this package, and kept as close to them as
a test allows (same module names, registration order, state-dict keys and forward):

* SpRe, github.com/zyxxmu/SpRE: ``models/resnet.py`` (BasicBlock, Bottleneck, ResNet),
  ``utils/conv_type.py`` (SparseConv, SparseRepConv, SpReConv, Sparse_NHWC),
  ``utils/net_utils.py`` (set_spatial_mask), ``convert.py`` (fuse_bn_tensor,
  get_equivalent_kernel_bias and the deploy state dict it saves).
* SR-STE, github.com/aojunzz/NM-sparsity: ``classification/models/resnet.py`` (ResNetV1),
  ``devkit/sparse_ops/sparse_ops.py`` (SparseConv with Sparse_NHWC; the older ``Sparse``).

Differences, all outside the computed function: no ``args``/builder globals (N, M are
arguments), the final pooling is a parameter (the references use ``AvgPool2d(7)``, which is a
global average only for 224x224 inputs; the tests run small inputs and pass a global average),
and ``randomize_`` fills weights and BN statistics with random values.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------
# Masks (Sparse_NHWC.forward / Sparse.forward / SpReConv.set_rep_masks)
# --------------------------------------------------------------------------------------
def sparse_nhwc_mask(weight, N, M):
    """The 0/1 float mask ``Sparse_NHWC.forward`` multiplies the weight with."""
    length = weight.numel()
    group = int(length / M)
    weight_temp = weight.detach().abs().permute(0, 2, 3, 1).reshape(group, M)
    index = torch.argsort(weight_temp, dim=1)[:, :int(M - N)]
    w_b = torch.ones(weight_temp.shape, device=weight_temp.device)
    w_b = w_b.scatter_(dim=1, index=index, value=0).reshape(weight.permute(0, 2, 3, 1).shape)
    return w_b.permute(0, 3, 1, 2)


def sparse_nchw_mask(weight, N, M):
    """The mask of NM-sparsity's older ``Sparse.forward`` (groups along the flat weight)."""
    length = weight.numel()
    group = int(length / M)
    weight_temp = weight.detach().abs().reshape(group, M)
    index = torch.argsort(weight_temp, dim=1)[:, :int(M - N)]
    w_b = torch.ones(weight_temp.shape, device=weight_temp.device)
    return w_b.scatter_(dim=1, index=index, value=0).reshape(weight.shape)


def sparse_nhwc_mask_linear(weight, N, M):
    """``Sparse_NHWC`` applied to SpRe's 1x1-conv classifier, as a Linear-shaped mask."""
    return sparse_nhwc_mask(weight[:, :, None, None], N, M)[:, :, 0, 0]


# --------------------------------------------------------------------------------------
# SpRe
# --------------------------------------------------------------------------------------
class SparseConv(nn.Conv2d):
    """SpRe's / NM-sparsity's SparseConv: ``conv(x, W * Sparse_NHWC mask)``."""

    def __init__(self, *args, N=2, M=4, **kwargs):
        self.N = N
        self.M = M
        super().__init__(*args, **kwargs)

    def get_sparse_weights(self):
        return self.weight * sparse_nhwc_mask(self.weight, self.N, self.M)

    def forward(self, x):
        w = self.get_sparse_weights()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SparseRepConv(SparseConv):
    """SpRe's main 3x3 conv: returns the output and the sparse weight."""

    def forward(self, x):
        w = self.get_sparse_weights()
        x = F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return x, w


class SpReConv(nn.Conv2d):
    """SpRe's extra branch: ``conv(x, W_rep * sign(|w|) * mask)``, ``mask`` the stored S."""

    def __init__(self, *args, N=2, M=4, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask = nn.Parameter(torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 1]]),
                                 requires_grad=False)
        self.N = N
        self.M = M

    def set_rep_masks(self, w):
        weight_tmp = w.detach().view(-1)
        prune_rate = 1 - (self.N / self.M)
        prune_num = int(weight_tmp.size(0) * prune_rate)
        index = torch.argsort(torch.abs(weight_tmp), dim=0)[:prune_num]
        w_b = torch.ones(weight_tmp.shape).to(weight_tmp.device)
        w_b = w_b.scatter_(dim=0, index=index, value=0).reshape(self.weight.shape)
        shape = w_b.shape
        w_b = w_b.view(int(shape[0] * shape[1]), int(shape[2] * shape[3]))
        sparsity = 1 - (torch.sum(w_b, 0).view(shape[2], shape[3]) / int(shape[0] * shape[1]))
        mask = sparsity < prune_rate
        self.mask.data = mask.float().to(self.mask.device)

    def forward(self, x, w):
        b = torch.sign(torch.abs(w))
        sparse_weight = self.weight * b
        sparse_weight = sparse_weight * self.mask
        return F.conv2d(x, sparse_weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def _main3x3(inplanes, planes, stride, N, M):
    return SparseRepConv(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False,
                         N=N, M=M)


def _rep3x3(inplanes, planes, stride, N, M):
    return SpReConv(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False,
                    N=N, M=M)


def _conv1x1(inplanes, planes, stride, N, M):
    return SparseConv(inplanes, planes, kernel_size=1, stride=stride, bias=False, N=N, M=M)


class SpReBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, N=2, M=4):
        super().__init__()
        # registration order as in the reference (set_spatial_mask pairs modules by it)
        self.conv1 = _main3x3(inplanes, planes, stride, N, M)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv_rep1 = _rep3x3(inplanes, planes, stride, N, M)
        self.bn_rep1 = nn.BatchNorm2d(planes)
        self.conv2 = _main3x3(planes, planes, 1, N, M)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv_rep2 = _rep3x3(planes, planes, 1, N, M)
        self.bn_rep2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out_a, mask = self.conv1(x)
        out_a = self.bn1(out_a)
        out_b = self.conv_rep1(x, mask)
        out_b = self.bn_rep1(out_b)
        out = out_a + out_b
        out = self.relu(out)

        out_a, mask = self.conv2(out)
        out_a = self.bn2(out_a)
        out_b = self.conv_rep2(out, mask)
        out_b = self.bn_rep2(out_b)
        out = out_a + out_b

        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class SpReBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, N=2, M=4):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes, 1, N, M)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _main3x3(planes, planes, stride, N, M)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv_rep = _rep3x3(planes, planes, stride, N, M)
        self.bn_rep = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion, 1, N, M)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out_1, mask = self.conv2(out)
        out_1 = self.bn2(out_1)
        out_2 = self.conv_rep(out, mask)
        out_2 = self.bn_rep(out_2)
        out = out_1 + out_2

        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class SpReResNet(nn.Module):
    """SpRe's ImageNet ResNet (training-time form): dense 7x7 stem with a bias, sparse
    everything else, a 1x1 SparseConv classifier with a bias."""

    def __init__(self, block, layers, num_classes=1000, N=2, M=4, pool=None):
        super().__init__()
        self.inplanes = 64
        # not self.N: set_spatial_mask takes every module with an attribute N for a conv
        self.nm = (N, M)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=True)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.Sequential(pool if pool is not None else nn.AvgPool2d(7))
        self.fc = SparseConv(512 * block.expansion, num_classes, kernel_size=1, bias=True,
                             N=N, M=M)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride, *self.nm),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, *self.nm)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, None, *self.nm))
        return nn.Sequential(*layers)

    def stages(self, x):
        """The outputs of layer1..layer4 (what a detection backbone returns)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for name in ('layer1', 'layer2', 'layer3', 'layer4'):
            x = getattr(self, name)(x)
            outs.append(x)
        return outs

    def head(self, x):
        """The classifier on layer4's output."""
        x = self.avgpool(x)
        x = self.fc(x)
        return x.view(x.size(0), -1)

    def forward(self, x):
        return self.head(self.stages(x)[-1])


def set_spatial_mask(model):
    """utils/net_utils.py set_spatial_mask: each SpReConv's S from the preceding main conv."""
    flag = 0
    for _, m in model.named_modules():
        if hasattr(m, 'N') and m.weight.shape[-1] == 3:
            if flag == 0:
                w = m.weight.data
                flag += 1
            else:
                m.set_rep_masks(w)
                flag = 0


def fuse_bn_tensor(kernel, bn):
    std = (bn.running_var + bn.eps).sqrt()
    t = (bn.weight / std).reshape(-1, 1, 1, 1)
    return kernel * t, bn.bias - bn.running_mean * bn.weight / std


def equivalent_kernel_bias(conv1, bn1, conv2, bn2):
    """convert.py get_equivalent_kernel_bias, without modifying the modules."""
    w = conv1.get_sparse_weights()
    b = torch.sign(torch.abs(w))
    sparse_weight = conv2.weight * b * conv2.mask
    k1, bias1 = fuse_bn_tensor(w, bn1)
    k2, bias2 = fuse_bn_tensor(sparse_weight, bn2)
    return k1 + k2, bias1 + bias2


@torch.no_grad()
def spre_deploy_state_dict(model):
    """What SpRe's convert.py saves: the training state dict (no 'module.') plus the folded
    ``convK_deploy`` weight and bias of every pair."""
    ckpt = {k: v.clone() for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        if isinstance(m, SpReBottleneck):
            w, b = equivalent_kernel_bias(m.conv2, m.bn2, m.conv_rep, m.bn_rep)
            ckpt[name + '.conv2_deploy.weight'], ckpt[name + '.conv2_deploy.bias'] = w, b
        elif isinstance(m, SpReBasicBlock):
            w, b = equivalent_kernel_bias(m.conv1, m.bn1, m.conv_rep1, m.bn_rep1)
            ckpt[name + '.conv1_deploy.weight'], ckpt[name + '.conv1_deploy.bias'] = w, b
            w, b = equivalent_kernel_bias(m.conv2, m.bn2, m.conv_rep2, m.bn_rep2)
            ckpt[name + '.conv2_deploy.weight'], ckpt[name + '.conv2_deploy.bias'] = w, b
    return ckpt


# --------------------------------------------------------------------------------------
# NM-sparsity (SR-STE)
# --------------------------------------------------------------------------------------
class NMBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, N=2, M=4):
        super().__init__()
        self.conv1 = SparseConv(inplanes, planes, kernel_size=3, stride=stride, padding=1,
                                bias=False, N=N, M=M)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = SparseConv(planes, planes, kernel_size=3, stride=1, padding=1, bias=False,
                                N=N, M=M)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class NMBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, N=2, M=4):
        super().__init__()
        self.conv1 = SparseConv(inplanes, planes, kernel_size=1, bias=False, N=N, M=M)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = SparseConv(planes, planes, kernel_size=3, stride=stride, padding=1,
                                bias=False, N=N, M=M)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = SparseConv(planes, planes * 4, kernel_size=1, bias=False, N=N, M=M)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class NMResNet(nn.Module):
    """NM-sparsity's ResNetV1: every conv (the 7x7 stem included) a SparseConv, fc dense."""

    def __init__(self, block, layers, num_classes=1000, N=2, M=4, pool=None):
        super().__init__()
        self.N, self.M = N, M
        self.inplanes = 64
        self.conv1 = SparseConv(3, 64, kernel_size=7, stride=2, padding=3, bias=False, N=N, M=M)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = pool if pool is not None else nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                SparseConv(self.inplanes, planes * block.expansion, kernel_size=1,
                           stride=stride, bias=False, N=self.N, M=self.M),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, N=self.N, M=self.M)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, N=self.N, M=self.M))
        return nn.Sequential(*layers)

    def stages(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for name in ('layer1', 'layer2', 'layer3', 'layer4'):
            x = getattr(self, name)(x)
            outs.append(x)
        return outs

    def head(self, x):
        x = self.avgpool(x)
        return self.fc(x.view(x.size(0), -1))

    def forward(self, x):
        return self.head(self.stages(x)[-1])


# --------------------------------------------------------------------------------------
# Building test networks
# --------------------------------------------------------------------------------------
LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


def spre_resnet(depth, num_classes=10, N=2, M=4, seed=0):
    """A SpRe ResNet with random weights and BN statistics, S set by the reference rule."""
    block = SpReBottleneck if depth >= 50 else SpReBasicBlock
    model = SpReResNet(block, LAYERS[depth], num_classes, N, M, pool=nn.AdaptiveAvgPool2d(1))
    randomize_(model, seed)
    set_spatial_mask(model)
    return model.eval()


def nm_resnet(depth, num_classes=10, N=2, M=4, seed=0):
    """An NM-sparsity ResNet with random weights and BN statistics."""
    block = NMBottleneck if depth >= 50 else NMBasicBlock
    model = NMResNet(block, LAYERS[depth], num_classes, N, M, pool=nn.AdaptiveAvgPool2d(1))
    return randomize_(model, seed).eval()


@torch.no_grad()
def randomize_(model, seed=0):
    """Random conv weights (He-scaled, so activations keep their scale) and BN parameters and
    statistics far from their defaults, so every BN term matters."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                * math.sqrt(2.0 / fan_in))
            if module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
        elif isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(0.5 + 0.5 * torch.rand(c, generator=generator))
            module.bias.copy_(0.1 * torch.randn(c, generator=generator))
            module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            module.num_batches_tracked.fill_(1000)
        elif isinstance(module, nn.Linear):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                / math.sqrt(module.in_features))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model
