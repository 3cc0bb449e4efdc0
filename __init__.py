"""lenslab: an interactive mechanistic-interpretability workbench.

The repository root is the ``lenslab`` package (see ``pyproject.toml``): ``lenslab.models`` loads
models, ``lenslab.probes`` holds the probe families, ``lenslab.analyses`` saves reports and
``lenslab.app`` is the Streamlit front end.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lenslab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

__all__ = ["__version__", "sweep"]


def __getattr__(name: str):
    """``lenslab.sweep``: imported on first use, so ``import lenslab`` stays light."""
    if name == "sweep":
        from lenslab.sweeps.runner import sweep

        return sweep
    raise AttributeError(f"module 'lenslab' has no attribute {name!r}")
