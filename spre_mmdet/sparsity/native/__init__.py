"""Fused CPU kernels for the per-step work of the sparse methods.

The eager PyTorch code (:func:`~spre_mmdet.sparsity.nm.nm_masks`,
:func:`~spre_mmdet.sparsity.spre.spatial_mask`) is a chain of full-length tensor passes: about
eight clones' worth of time for the N:M ranking on CPU (docs/results.md). The kernels in
``nm_kernels.c`` do the same work in one read of the weights: the N:M masks, and SpRe's ``S``
from the last refresh's threshold (an exact radix selection in two reads when that threshold
is unknown or has moved too far). They give exactly the eager results: the same masks and
``S``, ties to the lower index, NaN/inf ranked the same way. A third kernel folds SpRe's two
branches into one conv weight (:func:`fold`, forward and backward) in one pass each way, and a
fourth does LBC's removal step for all layers of a pattern in one pass over their subset
scores (:func:`lbc_remove_worst`).

They run for contiguous float32 CPU weights. Everything else (CUDA, half, other layouts) takes
the eager path, which stays the reference the tests compare against.

The C source is compiled at first use with the system C compiler (``$CC``, else ``cc``), like
``torch.utils.cpp_extension``'s JIT but without torch headers (it builds in about a second),
into a cache keyed by the source and flags: ``$SPRE_MMDET_CACHE``, else
``$XDG_CACHE_HOME/spre_mmdet`` or ``~/.cache/spre_mmdet``. Without a compiler the eager path is
used, with one warning. ``SPRE_MMDET_NATIVE=0`` turns the kernels off.
"""
import contextlib
import ctypes
import hashlib
import math
import os
import os.path as osp
import shutil
import struct
import subprocess
import tempfile
import threading
import warnings
from typing import List, Optional, Sequence

import torch

SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'nm_kernels.c')
# -O2: gcc's -O3 vectorizes the ranking into 8-byte vectors that run slower (measured).
# -ffp-contract=off: no fused multiply-adds (gnu99 allows them where the target has them, e.g.
# ARM), so that the fold rounds as the tensor expression it must equal bit for bit.
FLAGS = ('-O2', '-std=gnu99', '-ffp-contract=off', '-shared', '-fPIC', '-pthread')
#: the largest M the kernels rank (the eager code sorts beyond it; never a hardware pattern)
MAX_M = 128
#: the largest kernel (kh * kw) the S kernel takes (9x9 and up go to the eager code)
MAX_POSITIONS = 64
#: at least this many weights per thread: waking a thread can take a scheduler tick (ms) when
#: the cores are busy, which only a long share of work pays for
MIN_PER_THREAD = 1 << 22
#: the same for S: inside R-50's training step, splitting the layers from this size on took S
#: from 8.2 to 5.9 ms a step (the fold, measured there the same way, was slower split: it keeps
#: MIN_PER_THREAD)
SPATIAL_MIN_PER_THREAD = 1 << 18
#: the most subsets per group, and the largest M, LBC's removal kernel takes (else: eager)
LBC_MAX_SUBSETS, LBC_MAX_M = 256, 32

_library = None
_failure: Optional[str] = None
_lock = threading.Lock()


def enabled() -> bool:
    """Whether the kernels may be used (``SPRE_MMDET_NATIVE`` is not ``0``)."""
    return os.environ.get('SPRE_MMDET_NATIVE', '1') != '0'


@contextlib.contextmanager
def disabled():
    """Within the block the kernels are off (the eager reference runs), as with
    ``SPRE_MMDET_NATIVE=0``; the variable's previous state is restored after."""
    previous = os.environ.get('SPRE_MMDET_NATIVE')
    os.environ['SPRE_MMDET_NATIVE'] = '0'
    try:
        yield
    finally:
        if previous is None:
            del os.environ['SPRE_MMDET_NATIVE']
        else:
            os.environ['SPRE_MMDET_NATIVE'] = previous


def cache_dir() -> str:
    """Where the compiled kernels are kept (see the module docstring)."""
    if os.environ.get('SPRE_MMDET_CACHE'):
        return os.environ['SPRE_MMDET_CACHE']
    base = os.environ.get('XDG_CACHE_HOME') or osp.join(osp.expanduser('~'), '.cache')
    return osp.join(base, 'spre_mmdet')


def _compiler() -> Optional[str]:
    for name in (os.environ.get('CC'), 'cc', 'gcc', 'clang'):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(extra_flags: Sequence[str] = ()) -> ctypes.CDLL:
    """Compile (or find in the cache) and load the kernels, built with :data:`FLAGS` and
    ``extra_flags`` (e.g. ``-DSPRE_MMDET_PORTABLE``: the build of a compiler without SSE2 or
    vector shuffles, for the tests)."""
    flags = (*FLAGS, *extra_flags)
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError('no C compiler found (set $CC, or install one, e.g. '
                           '`apt install gcc`)')
    with open(SOURCE, 'rb') as f:
        source = f.read()
    digest = hashlib.sha256(source + ' '.join((compiler, *flags)).encode()).hexdigest()[:16]
    folder = cache_dir()
    path = osp.join(folder, f'nm_kernels_{digest}.so')
    if not osp.isfile(path):
        os.makedirs(folder, exist_ok=True)
        # compile beside the target and rename: concurrent ranks never load a partial file
        handle, partial = tempfile.mkstemp(suffix='.so', dir=folder)
        os.close(handle)
        try:
            done = subprocess.run([compiler, *flags, SOURCE, '-o', partial],
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f'{compiler} failed: {done.stderr.strip()[-2000:]}')
            os.replace(partial, path)
        finally:
            if osp.exists(partial):
                os.remove(partial)
    lib = ctypes.CDLL(path)
    pointers = ctypes.POINTER(ctypes.c_void_p)
    int64s = ctypes.POINTER(ctypes.c_int64)
    lib.spre_nm_masks.argtypes = [ctypes.c_int, pointers, pointers, int64s, int64s,
                                  ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.spre_nm_masks.restype = ctypes.c_int
    lib.spre_spatial_mask.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_void_p, ctypes.c_int,
                                      ctypes.POINTER(ctypes.c_uint32), ctypes.c_double]
    lib.spre_spatial_mask.restype = ctypes.c_int
    float_p = ctypes.c_void_p
    lib.spre_fold.argtypes = [float_p] * 12 + [ctypes.c_int64] * 3 + [
        ctypes.c_int, ctypes.c_float, ctypes.c_int]
    lib.spre_fold.restype = ctypes.c_int
    lib.spre_lbc_remove.argtypes = [ctypes.c_int, pointers, pointers, pointers, int64s, int64s,
                                    int64s, int64s, pointers, int64s, ctypes.c_int64,
                                    ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.spre_lbc_remove.restype = ctypes.c_int
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, or ``None`` if turned off or they cannot be built (then the
    eager code runs; the reason is warned once and kept in :func:`unavailable_reason`)."""
    global _library, _failure
    if not enabled():
        return None
    if _library is None and _failure is None:
        with _lock:
            if _library is None and _failure is None:
                try:
                    _library = _build()
                except Exception as error:  # any build/load problem: eager code instead
                    _failure = str(error)
                    warnings.warn(f'spre_mmdet: the fused CPU mask kernels are unavailable '
                                  f'({_failure}); using the eager PyTorch code, which gives '
                                  f'the same masks more slowly. Set SPRE_MMDET_NATIVE=0 to '
                                  f'silence this.')
    return _library


def unavailable_reason() -> Optional[str]:
    """Why :func:`library` is ``None`` (``None`` if it is not, or was never asked for)."""
    if not enabled():
        return 'turned off (SPRE_MMDET_NATIVE=0)'
    return _failure


def handles(tensor: torch.Tensor) -> bool:
    """Whether the kernels can read ``tensor`` in place: contiguous float32 on the CPU."""
    return (tensor.device.type == 'cpu' and tensor.dtype == torch.float32
            and tensor.is_contiguous())


def _threads(numel: int, least: Optional[int] = None) -> int:
    return max(1, min(torch.get_num_threads(), numel // (least or MIN_PER_THREAD)))


def nm_masks(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], n: int,
             m: int) -> bool:
    """Write the N:M masks of ``weights`` (each :func:`handles`, ``C % m == 0``, checked by
    the caller) into the contiguous bool ``masks``. Returns ``False`` (nothing written) if the
    kernels are unavailable."""
    lib = library()
    if lib is None or m > MAX_M:
        return False
    num = len(weights)
    if num == 0:
        return True
    for mask in masks:
        assert mask.dtype == torch.bool and mask.is_contiguous() and mask.device.type == 'cpu'
    pointer_array = ctypes.c_void_p * num
    int64_array = ctypes.c_int64 * num
    status = lib.spre_nm_masks(
        num, pointer_array(*(w.data_ptr() for w in weights)),
        pointer_array(*(mask.data_ptr() for mask in masks)),
        int64_array(*(w.shape[0] * w.shape[1] // m for w in weights)),
        int64_array(*(w[0, 0].numel() for w in weights)), n, m,
        _threads(sum(w.numel() for w in weights)))
    if status:
        raise RuntimeError(f'spre_nm_masks failed with status {status} (n={n}, m={m})')
    return True


class ThresholdHint:
    """What a layer's last ``S`` left for the next one (:func:`spatial_mask`): the unstructured
    threshold and how far it last moved. Only a hint: any value gives the exact ``S``.

    The next refresh collects the keys within ``window`` (relative) of the last threshold;
    the window is twice the last move, within :data:`WINDOWS`. The threshold drifts at a
    steady pace (optimizer steps), so that almost always holds it: 99.4% of refreshes in SGD
    training, 98.6% under AdamW from scratch (measured, docs/methods/spre.md).

    Attributes:
        key: the threshold as the bits of ``|w|`` (``None``: no refresh yet).
        window: the relative half-width of the next refresh's window.
        one_pass: refreshes decided in one pass; ``two_pass``: those that needed two (the
            first, and any after which the threshold had left the window).
    """

    def __init__(self):
        self.key: Optional[int] = None
        self.window = WINDOWS[1]
        self.one_pass = 0
        self.two_pass = 0

    def update(self, key: Optional[int], one_pass: bool) -> None:
        """Record this refresh's threshold ``key`` and the next window."""
        if self.key is not None and key is not None:
            last, now = (struct.unpack('<f', struct.pack('<I', k))[0] for k in (self.key, key))
            move = abs(now - last) / last if last > 0 else math.inf
            low, _, high = WINDOWS
            self.window = min(high, max(low, 2 * move)) if math.isfinite(move) else high
        self.key = key
        if one_pass:
            self.one_pass += 1
        else:
            self.two_pass += 1


#: the one-pass window (relative half-width around the last threshold): (smallest, first,
#: largest). A window holds about ``2 * 0.64 * window`` of a Gaussian layer's weights at 2:4,
#: each collected and ranked: the largest costs about what two passes do.
WINDOWS = (2.0 ** -10, 2.0 ** -8, 2.0 ** -5)
_NO_THRESHOLD = 2 ** 32 - 1


def spatial_mask(weight: torch.Tensor, n: int, m: int,
                 hint: Optional[ThresholdHint] = None) -> Optional[torch.Tensor]:
    """SpRe's ``S`` (bool, one entry per kernel position) of ``weight`` (``(O, C, kh, kw)``,
    :func:`handles`), exactly as :func:`~spre_mmdet.sparsity.spre.spatial_mask` defines it;
    ``None`` if the kernels are unavailable or the kernel is larger than
    :data:`MAX_POSITIONS` (then the eager code computes it).

    With a ``hint`` holding the last threshold, one pass over the weight usually decides (the
    keys within the hint's window of it are collected and ranked); otherwise an exact radix
    selection takes two. ``hint`` is updated with this threshold.
    """
    lib = library()
    positions = weight[0, 0].numel()
    # the kernel counts and indexes in 32 bits
    if lib is None or weight.numel() >= 2 ** 32 - 1 or positions > MAX_POSITIONS:
        return None
    keep = int(round(n / m * weight.numel()))  # as unstructured_mask(weight, n / m)
    spatial = torch.empty(positions, dtype=torch.bool)
    key = ctypes.c_uint32(_NO_THRESHOLD if hint is None or hint.key is None else hint.key)
    threads = _threads(weight.numel(), SPATIAL_MIN_PER_THREAD)
    status = lib.spre_spatial_mask(weight.data_ptr(), weight.numel(), positions, keep, n, m,
                                   spatial.data_ptr(), threads, ctypes.byref(key),
                                   WINDOWS[1] if hint is None else hint.window)
    if status < 0:
        raise RuntimeError(f'spre_spatial_mask failed with status {status}')
    if hint is not None:
        hint.update(None if key.value == _NO_THRESHOLD else key.value, status == 1)
    return spatial


def can_fold(main: torch.Tensor, rep: torch.Tensor, mask: torch.Tensor, spatial: torch.Tensor,
             main_scale: torch.Tensor, rep_scale: torch.Tensor) -> bool:
    """Whether :func:`fold` takes these operands: the kernels are available, every tensor is
    contiguous on the CPU, ``mask`` is bool and the rest float32, ``main``, ``rep`` and
    ``mask`` have one ``(O, C, kh, kw)`` shape, ``spatial`` is ``(kh, kw)`` and the scales have
    ``O`` entries."""
    tensors = (main, rep, mask, spatial, main_scale, rep_scale)
    if not all(t.device.type == 'cpu' and t.is_contiguous() for t in tensors):
        return False
    if mask.dtype != torch.bool or any(t.dtype != torch.float32 for t in tensors if t is not mask):
        return False
    if main.dim() != 4 or not main.shape == rep.shape == mask.shape:
        return False
    out = main.shape[0]
    return (spatial.shape == main.shape[2:] and main_scale.shape == rep_scale.shape == (out,)
            and main.numel() > 0 and library() is not None)


def fold(main: torch.Tensor, rep: torch.Tensor, mask: torch.Tensor, spatial: torch.Tensor,
         main_scale: torch.Tensor, rep_scale: torch.Tensor,
         grad: Optional[torch.Tensor] = None, srste_decay: Optional[float] = None):
    """SpRe's two branches as one weight, ``K = main * a + (rep * (mask * spatial)) * b`` per
    output channel (``a = main_scale``, ``b = rep_scale``), equal to that tensor expression
    bit for bit; or, given ``grad`` (dL/dK), its backward ``(d_main, d_rep, d_a, d_b)`` in one
    pass (``d_a``, ``d_b``: float partial sums over 64 weights, added in double). Operands as
    :func:`can_fold` requires.

    With ``srste_decay`` (SR-STE's ``lambda_w``), ``main`` is the dense latent weight ``W``
    instead: the kernel uses ``W * mask`` for it, and ``d_main`` is SR-STE's
    ``dL/dW = dL/dW~ + lambda_w * (1 - mask) * W``, both equal to
    :func:`~spre_mmdet.sparsity.srste.srste` followed by the expression, bit for bit."""
    lib = library()
    out_c = main.shape[0]
    per_out = main[0].numel()
    positions = spatial.numel()
    threads = _threads(main.numel())
    pointers = [t.data_ptr() for t in (main, rep, mask, spatial, main_scale, rep_scale)]
    masked = (int(srste_decay is not None), 0.0 if srste_decay is None else float(srste_decay))
    if grad is None:
        folded = torch.empty_like(main)
        status = lib.spre_fold(None, *pointers, folded.data_ptr(), None, None, None, None,
                               out_c, per_out, positions, *masked, threads)
        result = folded
    else:
        grads = (torch.empty_like(main), torch.empty_like(rep), torch.empty_like(main_scale),
                 torch.empty_like(rep_scale))
        status = lib.spre_fold(grad.data_ptr(), *pointers, None,
                               *(g.data_ptr() for g in grads), out_c, per_out, positions,
                               *masked, threads)
        result = grads
    if status:
        raise RuntimeError(f'spre_fold failed with status {status}')
    return result


def lbc_takes(scores: torch.Tensor, alive: torch.Tensor, mask: torch.Tensor, m: int) -> bool:
    """Whether :func:`lbc_remove_worst` takes a layer's LBC state: the kernels are available,
    ``scores`` is ``(groups, K)`` float32, ``alive`` a bool tensor of that shape and ``mask``
    the bool ``(O, C, *kernel)`` (or ``(O, C)``) mask those groups of ``m`` input channels
    make up, all contiguous on the CPU, ``K <= LBC_MAX_SUBSETS``, ``m <= LBC_MAX_M``."""
    tensors = (scores, alive, mask)
    if not all(t.device.type == 'cpu' and t.is_contiguous() for t in tensors):
        return False
    if scores.dtype != torch.float32 or alive.dtype != torch.bool or mask.dtype != torch.bool:
        return False
    if scores.dim() != 2 or alive.shape != scores.shape or mask.dim() < 2:
        return False
    groups, subsets = scores.shape
    return (0 < groups and 0 < subsets <= LBC_MAX_SUBSETS and 0 < m <= LBC_MAX_M
            and mask.shape[1] % m == 0 and mask.numel() == groups * m
            and library() is not None)


def lbc_remove_worst(layers: Sequence[tuple], members: torch.Tensor,
                     m: int) -> Optional[List[torch.Tensor]]:
    """LBC's usual removal step for many layers of one N:M pattern at once, in place: every
    group with ``survivors`` alive subsets whose lowest alive score is unique loses that subset
    (``alive`` False, its score 0), and its ``mask`` entries become the union of the members of
    the subsets left. The other groups (lowest alive score tied, NaN or +inf, or another count
    of alive subsets) are left as they are and returned, for the full ranking.

    Args:
        layers: ``(scores, alive, mask, survivors)`` per layer, each as :func:`lbc_takes`
            requires (checked by the caller).
        members: ``(K,)`` int32, bit ``j`` set where member ``j`` is in subset ``k``.

    Returns:
        per layer, its undecided groups (int64 indices, ascending), or ``None`` (nothing done)
        if the kernels are unavailable.
    """
    lib = library()
    if lib is None:
        return None
    num = len(layers)
    if num == 0:
        return []
    assert members.dtype == torch.int32 and members.is_contiguous()
    scores, alive, masks, survivors = zip(*layers)
    ties = [torch.empty(len(s), dtype=torch.int64) for s in scores]
    counts = (ctypes.c_int64 * num)()

    def pointers(tensors):
        return (ctypes.c_void_p * num)(*(t.data_ptr() for t in tensors))

    def int64s(values):
        return (ctypes.c_int64 * num)(*values)

    status = lib.spre_lbc_remove(
        num, pointers(scores), pointers(alive), pointers(masks), int64s(len(s) for s in scores),
        int64s(mask.shape[1] // m for mask in masks),
        int64s(mask[0, 0].numel() for mask in masks), int64s(survivors), pointers(ties), counts,
        members.shape[0], m, members.data_ptr(),
        _threads(sum(s.numel() for s in scores), SPATIAL_MIN_PER_THREAD))
    if status:
        raise RuntimeError(f'spre_lbc_remove failed with status {status}')
    # threads list them in no particular order
    return [found[:count].sort().values for found, count in zip(ties, counts)]


__all__: List[str] = ['enabled', 'disabled', 'cache_dir', 'library', 'unavailable_reason',
                      'handles', 'nm_masks', 'spatial_mask', 'ThresholdHint', 'can_fold',
                      'fold', 'lbc_takes', 'lbc_remove_worst', 'MAX_M', 'WINDOWS']
