"""spre_mmdet.allocator: freed tensor memory is kept for reuse, and only when it may be."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from spre_mmdet import allocator, cli

# Two passes over tensors of growing sizes (8-28 MiB), each freed before the next: the page
# faults of the second pass are those of memory the first one gave back.
_FAULTS_OF_A_SECOND_PASS = textwrap.dedent('''
    import resource, sys, torch
    from spre_mmdet.allocator import reuse_freed_memory
    print('APPLIED', reuse_freed_memory())
    def one_pass():
        for mib in (8, 12, 16, 20, 24, 28):
            torch.empty(mib << 20, dtype=torch.uint8).fill_(1)
    one_pass()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    one_pass()
    print('FAULTS', resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
''')


def _second_pass(**env):
    done = subprocess.run([sys.executable, '-c', _FAULTS_OF_A_SECOND_PASS],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(' ', 1) for line in done.stdout.splitlines() if ' ' in line)
    return lines['APPLIED'], int(lines['FAULTS'])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc only')
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    """With the settings, a second pass over the same tensor sizes faults in (almost) no
    pages; with glibc's defaults it faults in most of the 108 MiB again."""
    applied, tuned = _second_pass()
    assert applied.startswith('glibc ') and 'mmap threshold 32 MiB' in applied
    off, default = _second_pass(SPRE_MMDET_MALLOC='0')
    assert off == 'None'
    pages = (8 + 12 + 16 + 20 + 24 + 28) << 20 >> 12
    assert tuned < pages // 20 < pages // 4 < default, (tuned, default)


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
