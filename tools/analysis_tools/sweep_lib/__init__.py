"""A reproducible multi-seed comparison of the methods where N:M sparsity binds.

The grid is {method} x {N:M pattern} x {seed}; every cell is one run of ``tools/train.py`` on a
shipped config (the same init, optimizer and schedule for every method: each seed's dense
initial weights are written once and loaded by every method of that seed), so a cell is exactly
what a user would run. :mod:`.grid` defines the cells, :mod:`.run` runs them (in parallel
processes, resumable: finished cells are kept in ``results.jsonl``), :mod:`.stats` aggregates
(mean, spread, paired differences with 95% intervals) and :mod:`.report` writes the table, the
plots and the per-kernel-position analysis. ``tools/analysis_tools/sweep.py`` is the command
line; it imports this folder as a package from its own directory.
"""
from .grid import (DETECTION_METHODS, METHODS, NATURAL_METHODS, TOY_METHODS, Cell,
                   classification_grid, detection_grid, natural_grid, toy_grid)
from .stats import paired_difference, summarize

__all__ = ['DETECTION_METHODS', 'METHODS', 'NATURAL_METHODS', 'TOY_METHODS', 'Cell',
           'classification_grid', 'detection_grid', 'natural_grid', 'paired_difference',
           'summarize', 'toy_grid']
