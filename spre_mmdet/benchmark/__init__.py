"""Dense vs 2:4 sparse tensor-core benchmark of detector layers (used by
``tools/benchmark_sparse.py`` and ``tools/analysis_tools/gpu_check.py``). Plain torch except
:mod:`.detector` (mmdet loading).

The training-side benchmarks are scripts of the checkout, ``tools/analysis_tools/``:
``train_cost.py`` (training step, FLOPs, peak RSS and deploy time per method),
``mask_speed.py`` (mask refresh cost) and ``lbc_memory.py`` (LBC score memory)."""
from .gemm import (BACKENDS, GemmLayer, conv_weight_to_gemm, forced_backend, gemm_dims,
                   im2col_nhwc, resolve_backend, search_cusparselt_algorithms,
                   shape_constraints)
from .layers import (LayerCheck, candidate_reason, capture_input_shapes, check_layers,
                     format_checks, set_module, swapped)
from .report import (CSV_COLUMNS, build_report, format_e2e_table, format_layer_table, write_all,
                     write_csv, write_json, write_plot)
from .runner import (DTYPES, GRAPH_SCOPES, TOLERANCES, bench_end_to_end, bench_layer_cuda,
                     check_layer_cpu, compare, compare_outputs, dispatch_decisions, layer_calls,
                     speedups, tolerance_text)
from .timing import (NEEDS_GPU, CudaClock, cuda_time, device_time, host_time, sparse_support,
                     summarize, time_interleaved)

__all__ = [
    'BACKENDS', 'GemmLayer', 'conv_weight_to_gemm', 'forced_backend', 'gemm_dims', 'im2col_nhwc',
    'resolve_backend', 'search_cusparselt_algorithms', 'shape_constraints', 'LayerCheck',
    'candidate_reason', 'capture_input_shapes', 'check_layers', 'format_checks', 'set_module',
    'swapped', 'CSV_COLUMNS', 'build_report', 'format_e2e_table', 'format_layer_table',
    'write_all', 'write_csv', 'write_json', 'write_plot', 'DTYPES', 'GRAPH_SCOPES', 'TOLERANCES',
    'bench_end_to_end', 'bench_layer_cuda', 'check_layer_cpu', 'compare', 'compare_outputs',
    'dispatch_decisions', 'layer_calls', 'speedups', 'tolerance_text', 'NEEDS_GPU', 'CudaClock',
    'cuda_time', 'device_time', 'host_time', 'sparse_support', 'summarize', 'time_interleaved'
]
