"""Every notebook runs top to bottom on the embedded model (nbclient, a real Jupyter kernel).

The notebooks share one kernel, started once for the module: each notebook starts from an
empty namespace (``%reset -f``), and ``ModelSession.load()`` with default settings returns the
model the kernel loaded first, so the embedded model is loaded once, not once per notebook (the
same rule as the test process's, ``tests/conftest.py``). A kernel that died is restarted.

A notebook may start with a cell tagged ``parameters`` (papermill's convention) holding its sizes;
the test sets smaller ones from ``TEST_PARAMETERS`` in a cell right after it, so every cell still
runs on the embedded model, faster, while a reader running the notebook gets its defaults.

The kernel's LENSLAB_HOME is a throw-away copy (``home_support.sandbox_home``): a notebook that
saves a learned prompt or refits maps never overwrites the real home's prepared artefacts.
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
    "future_lens": {"eval_examples": 32, "eval_layers": (9,), "grid_layers": (12,)},
    "jacobian": {
        "prompt": "The Eiffel Tower is in",
        "n_components": 4,
        "exact_components": 2,
        "krylov_rank": 3,
    },
    "jacobian_lens": {"gap_layer": 16},
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
def real_home_before():
    """The real home's artefacts as they were before any notebook ran (to prove none wrote there)."""
    from home_support import snapshot

    from lenslab.models.paths import artefacts_dir

    return snapshot(artefacts_dir())


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, real_home_before):
    """One Jupyter kernel for every notebook, started in ``notebooks/`` with a throw-away home.

    Its LENSLAB_HOME links the real models and holds a copy of the real prepared artefacts, so
    notebooks reuse what ``lenslab prepare`` built, and whatever they save (a learned prompt,
    refitted maps) lands in tmp; reports go to tmp too.
    """
    import os

    from home_support import sandbox_home
    from jupyter_client.manager import KernelManager

    root = tmp_path_factory.mktemp("nb-home")
    env = {**os.environ, "LENSLAB_HOME": str(sandbox_home(root)), "LENSLAB_REPORTS": str(root / "reports")}
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(NOTEBOOKS[0].parent), env=env)
    yield manager
    manager.shutdown_kernel(now=True)


def run_cells(kernel, nb) -> None:
    """Execute ``nb`` in ``kernel`` (restarted first if it died); outputs are left in its cells."""
    from nbclient import NotebookClient

    if not kernel.is_alive():
        kernel.restart_kernel(now=True)
    client = NotebookClient(
        nb, km=kernel, timeout=900, resources={"metadata": {"path": str(NOTEBOOKS[0].parent)}}
    )
    try:
        client.execute()
    finally:
        if client.kc is not None:
            client.kc.stop_channels()


def test_there_are_notebooks():
    assert any(p.name == "logit_lens.ipynb" for p in NOTEBOOKS)
    assert set(TEST_PARAMETERS) <= {p.stem for p in NOTEBOOKS}, "TEST_PARAMETERS names a missing notebook"


def test_the_kernel_home_is_a_sandbox(kernel):
    """Where the notebooks' kernel would save artefacts is a copy in tmp, not the real home."""
    from lenslab.models.loading import models_dir
    from lenslab.models.paths import artefacts_dir, lenslab_home

    nb = nbformat.v4.new_notebook()
    code = (
        "from lenslab.models import loading, paths\n"
        "print(paths.lenslab_home(), paths.artefacts_dir(), loading.models_dir(), sep='\\n')"
    )
    nb.cells.append(nbformat.v4.new_code_cell(code))
    run_cells(kernel, nb)
    home, artefacts, models = (Path(line) for line in nb.cells[0].outputs[0].text.split())
    real = lenslab_home().resolve()
    assert home.resolve() != real and not home.resolve().is_relative_to(real), home
    assert not artefacts.resolve().is_relative_to(real), (
        f"the kernel saves artefacts into the real home: {artefacts}"
    )
    assert models.resolve() == models_dir().resolve(), "the kernel does not see the prepared models"
    linked_out = [p for p in artefacts.rglob("*") if p.is_symlink() and p.resolve().is_relative_to(real)]
    assert not linked_out, f"artefacts linked into the real home (a write would go through): {linked_out[:3]}"
    real_files = {str(p.relative_to(artefacts_dir())) for p in artefacts_dir().rglob("*") if p.is_file()}
    copied = {str(p.relative_to(artefacts)) for p in artefacts.rglob("*") if p.is_file()}
    assert real_files <= copied, (
        f"prepared artefacts missing from the sandbox: {sorted(real_files - copied)[:3]}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel):
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "notebooks are committed without outputs"
    )
    prepare_cells(nb, path.stem)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PREAMBLE))
    run_cells(kernel, nb)
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]


def test_no_notebook_wrote_into_the_real_home(kernel, real_home_before):
    """After the notebooks ran, every file of the real home's artefacts is as it was."""
    from home_support import changes, snapshot

    from lenslab.models.paths import artefacts_dir

    changed = changes(real_home_before, snapshot(artefacts_dir()))
    assert not changed, f"a notebook run changed the real home's artefacts: {changed[:5]}"
