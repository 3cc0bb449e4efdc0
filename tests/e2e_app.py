"""The app as the browser tests run it: every probe's form starts at its fast config.

``streamlit run tests/e2e_app.py`` (from the repository root, see ``e2e_support.start_app``)
replaces each registered probe's ``default_config`` with its entry in ``fast_configs.BROWSER``
(``FAST`` with sizes for the embedded model) for this server process only, then runs the real
``app/main.py``. Streamlit re-runs this script on every interaction; the patch is idempotent.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # streamlit puts the script's folder on the path; be sure of it
    sys.path.insert(0, str(TESTS))

from fast_configs import BROWSER  # noqa: E402

from lenslab.probes import registered_probes  # noqa: E402


def use_fast_defaults() -> None:
    """Make ``default_config()`` of every probe in ``BROWSER`` return its fast config."""
    for name, cls in registered_probes().items():
        if name in BROWSER:
            cls.default_config = lambda self, make=BROWSER[name]: make()  # type: ignore[method-assign]


use_fast_defaults()
runpy.run_path(str(TESTS.parent / "app" / "main.py"), run_name="__main__")
