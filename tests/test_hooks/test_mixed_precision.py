"""Every method's weight update is independent of loss scaling and gradient accumulation,
through mmengine's OptimWrapper / AmpOptimWrapper sequence (autocast, scale, backward, unscale,
step), against the fp32 single step:

* ``accumulative_counts=2`` (fp32): every parameter's update equals the single step's.
* fp16 / bf16 autocast with a dynamic loss scale of 65536: the step is taken, and the pruned
  weights of SR-STE-like layers, whose update is dominated by the decay here (their loss
  gradient is made small), move as in fp32 (a decay scaled by the loss scale would be off by a
  factor of 65536). LBC adds nothing outside the loss gradient, which GradScaler handles.

``AmpOptimWrapper`` asserts a GPU in its constructor; here it runs on CPU with
``torch.amp.GradScaler('cpu')`` (dynamic, as on CUDA) in place of the CUDA scaler, and the
forward under ``torch.autocast('cpu')`` (on CUDA the wrapper's context is the same autocast;
mmengine's CPU context takes bfloat16 only). Everything else is mmengine's own code.
"""
import copy
import functools

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.optim import OptimWrapper
from mmengine.optim.optimizer import amp_optimizer_wrapper

from spre_mmdet.sparsity import refresh_masks, register_srste_decay, sparse_layers

# a decay far above its default (2e-4), so that the decay dominates the pruned weights' update
# and losing it (or scaling it by the loss scale) could not hide in the rounding
DECAY = 0.5
SRSTE = dict(type='SRSTEMask', decay=DECAY)
LBC = dict(type='LBCMask', t_i=0, t_f=4)
METHODS = {
    'srste': dict(learner=SRSTE),
    'spre': dict(learner=SRSTE, spre=dict(rep_gamma=1.0)),
    'lbc': dict(learner=LBC),
    'spre_lbc': dict(learner=LBC, spre=dict(rep_gamma=1.0)),
    'interspace': dict(learner=SRSTE, interspace=dict(pruning='nm')),
}
# |update - fp32 update| / |fp32 update| over the decay-dominated pruned weights of SR-STE-like
# layers (and, for accumulation, of every parameter)
DECAY_TOLERANCE = {'fp32_accumulate': 2e-5, 'float16': 1e-2, 'float16_fused': 1e-2,
                   'bfloat16': 2e-2}


def _model(sparsity):
    torch.manual_seed(0)
    model = MODELS.build(dict(type='SparseResNet', depth=18, base_channels=16, norm_eval=True,
                              frozen_stages=-1, sparsity=sparsity))
    model.train()
    refresh_masks(model, 2)  # LBC: some subsets removed, so its mask is not dense
    return model


def _loss(model, images, target):
    out = model(images)[-1]
    return (out.float() * target).flatten(1).sum(1).mean()


def _amp_wrapper(model, dtype, monkeypatch, fused=False):
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
    monkeypatch.setattr(amp_optimizer_wrapper, 'GradScaler',
                        functools.partial(torch.amp.GradScaler, 'cpu'))
    # a fused optimizer unscales inside its step: GradScaler hands it scaled gradients
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=fused)
    return amp_optimizer_wrapper.AmpOptimWrapper(optimizer=optimizer, dtype=dtype,
                                                 loss_scale=dict(init_scale=65536.0))


def _step(model, wrapper, batches, dtype=None):
    """One optimizer step over ``batches`` through ``wrapper``, the forward under
    ``torch.autocast`` to ``dtype`` (what AmpOptimWrapper's context runs on CUDA; mmengine's
    CPU context takes bfloat16 only)."""
    register_srste_decay(model, wrapper.optimizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for images, target in batches:
        with torch.autocast('cpu', dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = _loss(model, images, target)
        wrapper.update_params(loss)
    return {name: p.detach() - before[name] for name, p in model.named_parameters()}


@pytest.mark.parametrize('method', list(METHODS))
@pytest.mark.parametrize('mode', ['float16', 'float16_fused', 'bfloat16', 'fp32_accumulate'])
def test_update_equals_the_fp32_single_step(method, mode, monkeypatch):
    model = _model(METHODS[method])
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=gen) * 0.1  # no fp16 overflow in forward
    target = torch.randn(4, 128, 1, 1, generator=gen) * 1e-3
    dtype = None if mode == 'fp32_accumulate' else getattr(torch, mode.split('_')[0])
    reference_model = copy.deepcopy(model)
    reference = _step(reference_model, OptimWrapper(
        torch.optim.SGD(reference_model.parameters(), lr=0.1)), [(images, target)])
    if mode == 'fp32_accumulate':
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1),
                               accumulative_counts=2)
        batches = [(images[:2], target[:2]), (images[2:], target[2:])]
    else:
        wrapper = _amp_wrapper(model, dtype, monkeypatch, fused=mode.endswith('fused'))
        batches = [(images, target)]
    updates = _step(model, wrapper, batches, dtype)
    if mode != 'fp32_accumulate':
        assert wrapper.loss_scaler.get_scale() == 65536.0  # the step was taken, not skipped
        assert all(update.abs().sum() > 0 for name, update in updates.items()
                   if reference[name].abs().sum() > 0)
    else:
        checked = 0
        for name, expected in reference.items():
            if expected.abs().sum():
                error = (updates[name] - expected).norm() / expected.norm()
                assert error <= DECAY_TOLERANCE[mode], (name, float(error))
                checked += 1
        assert checked > 20
    if 'lbc' in method:
        return  # no SR-STE decay: LBC's terms are all in the loss gradient
    for name, layer in sparse_layers(model):
        pruned = ~layer.sparsity.mask
        got, expected = updates[f'{name}.weight'][pruned], reference[f'{name}.weight'][pruned]
        error = (got - expected).norm() / expected.norm()
        assert error <= DECAY_TOLERANCE[mode], (name, float(error))
