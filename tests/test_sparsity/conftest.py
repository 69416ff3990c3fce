"""The ``mask_kernels`` fixture: a test that uses it runs twice, on the fused CPU kernels
(``spre_mmdet.sparsity.native``) and on the eager PyTorch reference."""
import pytest

from spre_mmdet.sparsity import native


@pytest.fixture(params=['fused', 'eager'])
def mask_kernels(request, monkeypatch) -> str:
    monkeypatch.setenv('SPRE_MMDET_NATIVE', '1' if request.param == 'fused' else '0')
    if request.param == 'fused':  # must build here: a missing kernel fails, it does not skip
        assert native.library() is not None, native.unavailable_reason()
    return request.param
