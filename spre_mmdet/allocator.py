"""Keep freed tensor memory in the process for reuse (glibc malloc), as the tools do.

A CPU training step allocates and frees the same large tensors every iteration (activations,
gradients, the sparse methods' masked weights). glibc serves blocks above its mmap threshold
with a fresh ``mmap`` and gives them back at ``free``; it raises that threshold only as it sees
frees, and it trims the heap's free top. So each step faults in pages the step before returned,
and the kernel zeroes them. Measured on Mask R-CNN R-50 (backbone and neck, batch 2 x 320, 2
threads, 21 rounds each): dense 1.05 -> 0.85 s, SR-STE 1.11 -> 0.91 s, SpRe 1.29 -> 0.98 s, and
single steps over 0.83-1.07 s instead of 0.9-2.1 s (docs/results.md, section 4).

:func:`reuse_freed_memory` sets both limits once, through ``mallopt``: blocks up to
:data:`MMAP_THRESHOLD` come from the heap, and the heap keeps up to :data:`TRIM_THRESHOLD` of
free memory at its top. A process then holds memory up to its peak instead of returning it
between steps. The peak itself does not grow. It changes where tensors live, never what is
computed: training stays bit-exact.

The tools call it at start (:func:`spre_mmdet.cli.run_tool`). It does nothing if the user set
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` (glibc's own variables), set
``SPRE_MMDET_MALLOC=0``, or if the C library is not glibc (macOS, musl; jemalloc or tcmalloc
through ``LD_PRELOAD`` take no notice of glibc's settings).
"""
import ctypes
import ctypes.util
import os
from typing import Optional

__all__ = ['MMAP_THRESHOLD', 'TRIM_THRESHOLD', 'reuse_freed_memory', 'applied_setting']

#: blocks up to this size come from the heap (glibc's largest allowed value on 64-bit)
MMAP_THRESHOLD = 32 << 20
#: the heap keeps up to this much free memory at its top instead of returning it
TRIM_THRESHOLD = 1 << 30
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied: Optional[str] = None


def reuse_freed_memory() -> Optional[str]:
    """Set glibc malloc's mmap and trim thresholds (see the module docstring), once per
    process. Returns what was set, or ``None`` with nothing changed."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get('SPRE_MMDET_MALLOC') == '0' or \
            {'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_'} & set(os.environ):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):  # not glibc
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    version.restype = ctypes.c_char_p
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or \
            mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return None
    _applied = (f'glibc {version().decode()} malloc: mmap threshold {MMAP_THRESHOLD >> 20} MiB, '
                f'trim threshold {TRIM_THRESHOLD >> 20} MiB')
    return _applied


def applied_setting() -> Optional[str]:
    """What :func:`reuse_freed_memory` set in this process, or ``None`` if it set nothing."""
    return _applied
