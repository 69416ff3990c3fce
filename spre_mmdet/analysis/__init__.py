"""Analysis of trained sparse checkpoints (no model is built; state dicts only).

:mod:`.spatial`: per-kernel-position sparsity of k x k convs, unstructured vs N:M vs SpRe's
spatial mask ``S`` (SPEC section 4), with plots and JSON/CSV output for
``tools/analyze_sparsity.py``.
"""
from .spatial import (AnalysisError, KernelSummary, LayerAnalysis, SkippedLayer, analyze_layer,
                      analyze_state_dict, extract_state_dict, find_kxk_convs, format_table,
                      nm_position_sparsity, plot_layers, plot_overview, position_sparsity,
                      suggest_prefixes, summarize, synthetic_state_dict, synthetic_weight,
                      unstructured_position_sparsity, write_csv, write_spatial_json)

__all__ = [
    'AnalysisError', 'KernelSummary', 'LayerAnalysis', 'SkippedLayer', 'analyze_layer',
    'analyze_state_dict', 'extract_state_dict', 'find_kxk_convs', 'format_table',
    'nm_position_sparsity', 'plot_layers', 'plot_overview', 'position_sparsity',
    'suggest_prefixes', 'summarize', 'synthetic_state_dict', 'synthetic_weight',
    'unstructured_position_sparsity', 'write_csv', 'write_spatial_json'
]
