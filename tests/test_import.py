"""``import spre_mmdet`` with a broken OpenMMLab stack fails with one line naming the packages
and the fix; the sparsity core imports without mmdet."""
import subprocess
import sys


def _run(code, tmp_path, broken_mmdet=None):
    env_path = tmp_path / 'site'
    env_path.mkdir(exist_ok=True)
    if broken_mmdet is not None:  # an mmdet that fails as a broken install does
        (env_path / 'mmdet').mkdir(exist_ok=True)
        (env_path / 'mmdet' / '__init__.py').write_text(broken_mmdet)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env={'PYTHONPATH': str(env_path), 'PATH': '/usr/bin:/bin'})


def test_broken_mmdet_is_one_line_naming_the_fix(tmp_path):
    """mmdet's own mmcv version check failing (or any error inside mmdet) is one line."""
    broken = ("raise AssertionError('MMCV==2.2.0 is used but incompatible. Please install "
              "mmcv>=2.0.0rc4, <2.2.0.')\n")
    out = _run('import spre_mmdet', tmp_path, broken)
    assert out.returncode == 1
    assert 'Traceback' not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith('ERROR:')]
    assert len(lines) == 1, out.stderr
    assert 'MMCV==2.2.0' in lines[0] and 'mmcv' in lines[0] and 'scripts/install.sh' in lines[0]


def test_broken_import_is_a_project_error_for_callers(tmp_path):
    code = ('try:\n    import spre_mmdet\nexcept Exception as e:\n'
            '    print(type(e).__name__, isinstance(e, RuntimeError))\n')
    out = _run(code, tmp_path, "import mmcv_ext_that_is_missing\n")
    assert out.stdout.strip() == 'StackError True', out.stderr


def test_sparsity_core_imports_without_mmdet(tmp_path):
    """`import spre_mmdet.sparsity` works where mmdet, mmengine and mmcv are not installed."""
    code = ("import sys\n"
            "for name in ('mmdet', 'mmengine', 'mmcv'):\n"
            "    sys.modules[name] = None  # not installed: imports raise ModuleNotFoundError\n"
            "import spre_mmdet.sparsity as s\n"
            "import torch\n"
            "print(int(s.nm_mask(torch.randn(4, 8), 2, 4).sum()))\n")
    out = _run(code, tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == '16', out.stderr
