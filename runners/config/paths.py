"""Where the configs are: ``conf/`` beside the package in a checkout, inside it in a wheel."""

from __future__ import annotations

from pathlib import Path

# A checkout keeps conf/ and data/ beside runners/; a wheel carries them inside it (pyproject's
# package-dir), so an installed runner finds its configs and the sample documents there.
_RUNNERS_DIR = Path(__file__).resolve().parent.parent
PROJECT_ROOT = _RUNNERS_DIR if (_RUNNERS_DIR / "conf").is_dir() else _RUNNERS_DIR.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
