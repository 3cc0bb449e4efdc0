"""Every notebook runs top to bottom on the embedded model (nbclient, a real Jupyter kernel).

The notebooks share one kernel, started once for the module: each notebook starts from an
empty namespace (``%reset -f``), and ``ModelSession.load()`` with default settings returns the
model the kernel loaded first, so the embedded model is loaded once, not once per notebook (the
same rule as the test process's, ``tests/conftest.py``). A kernel that died is restarted.

A notebook may start with a cell tagged ``parameters`` (papermill's convention) holding its sizes;
the test sets smaller ones from ``TEST_PARAMETERS`` in a cell right after it, so every cell still
runs on the embedded model, faster, while a reader running the notebook gets its defaults.
"""

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
pytestmark = pytest.mark.slow

# Run in the kernel before each notebook: a clean namespace, and one embedded model per kernel.
PREAMBLE = """\
%reset -f
def _one_load_per_kernel():
    from lenslab.models import ModelSession
    from lenslab.models.loading import DEFAULT_MODEL
    if getattr(ModelSession.load, "_shared", None) is not None:
        return
    real = ModelSession.load.__func__
    shared = {}
    def load(cls, name=None, *, device=None, dtype="float32", max_tokens=512, trust_remote_code=False):
        if name not in (None, DEFAULT_MODEL) or max_tokens != 512 or trust_remote_code:
            return real(cls, name, device=device, dtype=dtype, max_tokens=max_tokens,
                        trust_remote_code=trust_remote_code)
        key = (str(device), str(dtype))
        if key not in shared:
            shared[key] = real(cls, name, device=device, dtype=dtype)
        return shared[key]
    load._shared = shared
    ModelSession.load = classmethod(load)
_one_load_per_kernel()
del _one_load_per_kernel
"""


# Per notebook: the sizes the test runs it at (each name must be assigned in its parameters cell).
TEST_PARAMETERS: dict[str, dict[str, object]] = {
    "attention": {"induction_length": 8, "induction_sequences": 2},
    "future_lens": {"eval_examples": 32},
    "patching": {"layers": (0, 1, 8, 17)},
    "shared_neurons": {"n_prompts": 4, "resamples": 100},
}


def prepare_cells(nb, name: str) -> None:
    """Insert notebook ``name``'s test sizes after its ``parameters`` cell; refuse names it lacks."""
    wanted = TEST_PARAMETERS.get(name)
    if not wanted:
        return
    index = next(
        (i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None
    )
    assert index is not None, "TEST_PARAMETERS names a notebook without a cell tagged 'parameters'"
    assigned = {
        target.id
        for node in ast.walk(ast.parse(nb.cells[index].source))
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    missing = set(wanted) - assigned
    assert not missing, f"the parameters cell does not assign {sorted(missing)}"
    lines = [f"{name} = {value!r}" for name, value in wanted.items()]
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell("# test sizes\n" + "\n".join(lines)))


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One Jupyter kernel for every notebook, started in ``notebooks/`` with reports in tmp."""
    import os

    from jupyter_client.manager import KernelManager

    env = {**os.environ, "LENSLAB_REPORTS": str(tmp_path_factory.mktemp("nb-reports"))}
    # The real LENSLAB_HOME: notebooks reuse the artefacts `lenslab prepare` built; reports go to tmp.
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(NOTEBOOKS[0].parent), env=env)
    yield manager
    manager.shutdown_kernel(now=True)


def test_there_are_notebooks():
    assert any(p.name == "logit_lens.ipynb" for p in NOTEBOOKS)
    assert set(TEST_PARAMETERS) <= {p.stem for p in NOTEBOOKS}, "TEST_PARAMETERS names a missing notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "notebooks are committed without outputs"
    )
    if not kernel.is_alive():
        kernel.restart_kernel(now=True)
    prepare_cells(nb, path.stem)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PREAMBLE))
    client = NotebookClient(nb, km=kernel, timeout=900, resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
