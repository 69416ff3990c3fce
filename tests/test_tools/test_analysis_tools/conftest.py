"""The scripts of ``tools/analysis_tools/`` are run as ``python tools/analysis_tools/<name>.py``,
which puts their own folder first on ``sys.path``; the tests import them (and the folders they
import, e.g. ``sweep_lib``) the same way, by that folder."""
import sys
from pathlib import Path

ANALYSIS_TOOLS = Path(__file__).resolve().parents[3] / 'tools' / 'analysis_tools'
if str(ANALYSIS_TOOLS) not in sys.path:
    sys.path.insert(0, str(ANALYSIS_TOOLS))
