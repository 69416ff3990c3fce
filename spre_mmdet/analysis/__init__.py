"""Per-kernel-position sparsity of trained checkpoints' ``k x k`` convs (state dicts only).

N:M removes exactly ``p = 1 - N/M`` of the weights at every kernel position ``(i, j)``, while
unstructured magnitude pruning at the same overall rate removes less at some positions (typically
the centre and the cross) and more elsewhere. SpRe gives the positions that unstructured pruning
keeps denser (its spatial mask ``S``) an extra branch during training (docs/methods/spre.md).

Modules, by job:

* :mod:`.positions`: the per-position numbers of one conv weight (:func:`analyze_layer`,
  :class:`LayerAnalysis`) and their averages per kernel size (:func:`summarize`);
* :mod:`.state_dict`: the ``k x k`` convs of a state dict, analysed with the checkpoint's own
  masks when it has them (:func:`analyze_state_dict`);
* :mod:`.tables`: a printed table (:func:`format_table`), ``S`` as JSON and a CSV;
* :mod:`.plots`: PNG heatmaps (:func:`plot_overview`, :func:`plot_layers`);
* :mod:`.synthetic`: centre/cross-heavy demo weights (:func:`synthetic_state_dict`);
* :mod:`.premise`: SpRe's premise over seeds of trained dense weights (relative ``|w|`` and
  kept fraction of unstructured pruning per position; :func:`aggregate`, :func:`plot_premise`).

``tools/analyze_sparsity.py`` is the command line.
"""
from .plots import plot_layers, plot_overview
from .premise import (ALL_LAYERS, DEFAULT_DENSITIES, REGIONS, Interval, LayerPremise,
                      PremiseStats, aggregate, parse_density, plot_premise, position_kept,
                      position_magnitude, premise_of_state_dict, premise_table, region_masks,
                      write_premise_csv)
from .positions import (AnalysisError, KernelSummary, LayerAnalysis, SkippedLayer, analyze_layer,
                        nm_position_sparsity, position_sparsity, summarize,
                        unstructured_position_sparsity)
from .state_dict import analyze_state_dict, find_kxk_convs, suggest_prefixes
from .synthetic import synthetic_state_dict, synthetic_weight
from .tables import format_table, write_csv, write_spatial_json

__all__ = [
    'AnalysisError', 'KernelSummary', 'LayerAnalysis', 'SkippedLayer', 'analyze_layer',
    'analyze_state_dict', 'find_kxk_convs', 'format_table',
    'nm_position_sparsity', 'plot_layers', 'plot_overview', 'position_sparsity',
    'suggest_prefixes', 'summarize', 'synthetic_state_dict', 'synthetic_weight',
    'unstructured_position_sparsity', 'write_csv', 'write_spatial_json',
    'ALL_LAYERS', 'DEFAULT_DENSITIES', 'REGIONS', 'Interval', 'LayerPremise', 'PremiseStats',
    'aggregate', 'parse_density', 'plot_premise', 'position_kept', 'position_magnitude',
    'premise_of_state_dict', 'premise_table', 'region_masks', 'write_premise_csv'
]
