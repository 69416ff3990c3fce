"""spre_mmdet.allocator: freed tensor memory is kept for reuse, and only when it may be."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from spre_mmdet import allocator, cli

# A 24 MiB tensor, written and freed: what glibc then keeps of it in the process (mallinfo2's
# free bytes in the heap). glibc's defaults serve it with mmap and give it back at free.
_KEPT_AFTER_FREE = textwrap.dedent('''
    import ctypes, torch
    from spre_mmdet.allocator import reuse_freed_memory
    print('APPLIED', reuse_freed_memory())
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks',
            'fordblks', 'keepcost')]
    mallinfo2 = ctypes.CDLL('libc.so.6').mallinfo2
    mallinfo2.restype = MallInfo2
    torch.empty(24 << 20, dtype=torch.uint8).fill_(1)  # freed at once
    print('KEPT', mallinfo2().fordblks)
''')


def _kept_after_free(**env):
    done = subprocess.run([sys.executable, '-c', _KEPT_AFTER_FREE],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(' ', 1) for line in done.stdout.splitlines() if ' ' in line)
    return lines['APPLIED'], int(lines['KEPT'])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc only')
def test_a_freed_tensor_stays_in_the_process_for_reuse():
    """With the settings a freed 24 MiB tensor stays in the heap, ready for the next step;
    with glibc's defaults it is handed back to the kernel (and faulted in again next time)."""
    applied, kept = _kept_after_free()
    assert applied.startswith('glibc ') and 'mmap threshold 32 MiB' in applied
    off, kept_by_default = _kept_after_free(SPRE_MMDET_MALLOC='0')
    assert off == 'None'
    assert kept >= 24 << 20 > kept_by_default, (kept, kept_by_default)


@pytest.mark.parametrize('env', [{'SPRE_MMDET_MALLOC': '0'}, {'MALLOC_MMAP_THRESHOLD_': '65536'},
                                 {'MALLOC_TRIM_THRESHOLD_': '0'}])
def test_user_settings_are_left_alone(env, monkeypatch):
    """glibc's own variables, or SPRE_MMDET_MALLOC=0, mean nothing is changed."""
    monkeypatch.setattr(allocator, '_applied', None)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert allocator.reuse_freed_memory() is None


def test_every_tool_keeps_freed_memory(monkeypatch):
    """run_tool, which every tool's main goes through, applies the settings first."""
    calls = []
    monkeypatch.setattr(cli, 'reuse_freed_memory', lambda: calls.append('reuse'))
    cli.run_tool(lambda: calls.append('main'))
    assert calls == ['reuse', 'main']
