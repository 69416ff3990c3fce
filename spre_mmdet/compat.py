"""Fixes for current torch/mmengine, applied once on import (see the foundation issue)."""
