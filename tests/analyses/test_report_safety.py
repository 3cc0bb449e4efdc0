"""Report safety: hostile text stays text in Chromium, nothing is unpickled, names stay inside the
reports folder, and killing a saver never leaves a listed report that cannot be opened."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from e2e_support import CHROMIUM, REPO, STATS, launch_chromium, runnable_probes, screenshot
from hypothesis import given, settings
from hypothesis import strategies as st

from lenslab.analyses.report import Report, delete_report, list_reports, report_meta, resolve_in

XSS = '<script>window.__xss=1</script>"><img src=x onerror="window.__xss=2"><svg onload="window.__xss=3">'


# ------------------------------------------------------------------------------- HTML in Chromium
@pytest.mark.e2e
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
def test_report_html_runs_no_script_from_prompts_or_titles(tiny_gemma, tmp_path):
    """Every registered probe that runs on the tiny model renders the hostile prompt as inert text."""
    from lenslab.probes import get_probe

    results = []
    for name, (config, _pilot, _seconds) in sorted(runnable_probes(tiny_gemma, 6.0).items()):
        try:
            results.append(get_probe(name).run(tiny_gemma, XSS, config))
        except ValueError:  # a probe that reads the prompt as something else may refuse it
            continue
    assert results, "no probe ran on the tiny model"
    meta = report_meta(results, tiny_gemma, XSS)
    path = Report(results, meta).save(tmp_path / "xss")
    html = (path / "report.html").read_text(encoding="utf-8")
    assert "<script>window.__xss" not in html and "<img src=x" not in html and "<svg onload" not in html
    # Playwright's sync API refuses a thread whose asyncio loop is running, and a test earlier in
    # the same process may leave one set (pytest-xdist runs modules in any order): its own thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_open_and_check, path).result()
    STATS.add("xss_blocked", len(results))
    STATS.add("reports_checked")


def _open_and_check(path) -> None:
    """Open the saved report in Chromium: no script of the prompt runs, the prompt shows as text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto((path / "report.html").as_uri())
            page.locator(".js-plotly-plot").first.wait_for(state="attached", timeout=60_000)
            page.wait_for_timeout(500)
            try:
                assert page.evaluate("() => window.__xss") is None, "a script from the report ran"
                assert not dialogs
                body = page.inner_text("body")
                assert "<script>window.__xss=1</script>" in body, "the prompt is shown as text"
                assert page.locator("img[src='x']").count() == 0 and page.locator("svg[onload]").count() == 0
            except AssertionError:
                screenshot(page, "report-xss")
                STATS.add("failures")
                raise
        finally:
            browser.close()


# ------------------------------------------------------------------------------------ no pickle
_PICKLE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("joblib", "load"),
    ("dill", "load"),
    ("dill", "loads"),
}


def _source_files():
    for path in REPO.rglob("*.py"):
        parts = set(path.relative_to(REPO).parts)
        if parts & {".venv", "tests", "build", "notebooks", ".git"}:
            continue
        yield path


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def test_no_code_path_unpickles():
    """No np.load(allow_pickle=True), torch.load without weights_only=True, or pickle/joblib loads."""
    problems = []
    files = list(_source_files())
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if node.func.attr == "load" and owner in ("np", "numpy"):
                flag = _keyword(node, "allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where} np.load with allow_pickle")
            if node.func.attr == "load" and owner == "torch":
                flag = _keyword(node, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where} torch.load without weights_only=True")
            if (owner, node.func.attr) in _PICKLE_CALLS:
                problems.append(f"{where} {owner}.{node.func.attr}")
    assert not problems, problems


class _Payload:
    """Unpickling this sets an environment variable: proof that a pickle was executed."""

    def __reduce__(self):
        return (exec, ("import os; os.environ['LENSLAB_PICKLE_RAN'] = '1'",))


def test_a_pickle_inside_arrays_npz_is_never_executed(tiny_gemma, tmp_path):
    from lenslab.probes import LogitLens, LogitLensConfig

    result = LogitLens().run(tiny_gemma, "hello", LogitLensConfig(k=2))
    path = Report([result], {"title": "p"}).save(tmp_path / "p")
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    key = next(iter(arrays))
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload()
    arrays[key] = evil
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # object arrays are pickled inside the .npy
    (path / "arrays.npz").write_bytes(buffer.getvalue())
    os.environ.pop("LENSLAB_PICKLE_RAN", None)
    with pytest.raises(ValueError):
        Report.load(path)
    assert "LENSLAB_PICKLE_RAN" not in os.environ, "a pickle in a report was executed"
    STATS.add("reports_checked")


# ------------------------------------------------------------------------------ path traversal
@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(
    name=st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            ["..", ".", "../x", "..\\x", "/etc/passwd", "~/x", "a/../../b", "%2e%2e%2f", "\x00", "ｘ/.."]
        ),
        st.lists(st.sampled_from(["..", ".", "a", "/", "\\", "\x00", "~"]), max_size=6).map("".join),
    )
)
def test_report_names_never_escape(tmp_path_factory, name):
    root = tmp_path_factory.getbasetemp() / "reports-root"
    root.mkdir(exist_ok=True)
    STATS.add("fuzz_cases")
    try:
        path = resolve_in(root, name)
    except ValueError as exc:
        assert str(exc)
        STATS.add("fuzz_rejected")
    else:
        assert path.parent == root.resolve() and path.name not in ("", ".", "..")
        STATS.add("fuzz_ok")
    with pytest.raises((ValueError, FileNotFoundError)):
        delete_report(root, name)  # nothing by that name inside; never anything outside


# --------------------------------------------------------------------------- killed during save
def test_killing_savers_never_leaves_a_broken_listed_report(tmp_path):
    """SIGKILL processes that save large reports (new names and overwrites) at random moments.

    One process imports lenslab and runs the probe once, then forks a saver per line it reads
    (the import, not the save, is what a fresh interpreter per saver costs); each saver is a
    separate process killed by the test at a random moment of its saving.
    """
    folder = tmp_path / "reports"
    script = textwrap.dedent(
        f"""
        import os, sys, uuid
        import numpy as np
        sys.path.insert(0, {str(REPO.parent)!r})
        from lenslab.models.tiny import tiny_session
        from lenslab.probes import LogitLens, LogitLensConfig
        from lenslab.analyses.report import Report
        s = tiny_session("gemma3")
        r = LogitLens().run(s, "hello " * 60, LogitLensConfig(k=50))
        print("ready", flush=True)
        for _ in sys.stdin:
            pid = os.fork()
            if pid:
                print("saver", pid, flush=True)
                continue
            i = 0
            while True:
                name = "same" if i % 2 else "new-" + uuid.uuid4().hex[:6]
                Report([r] * 2, {{"title": str(i)}}).save({str(folder)!r} + "/" + name, overwrite=True)
                print("saved", os.getpid(), flush=True)
                i += 1
        """
    )
    rng = random.Random(9)
    savers: list[int] = []
    server = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        for _ in range(4):
            server.stdin.write("go\n")
            server.stdin.flush()
            line = server.stdout.readline().split()
            while line[:1] != ["saver"]:  # a killed saver's last lines may still be in the pipe
                line = server.stdout.readline().split()
            pid = int(line[1])
            savers.append(pid)
            started = time.monotonic()
            while server.stdout.readline().split() != ["saved", str(pid)]:
                pass  # one complete save of this saver, then kill it mid-way later
            one_save = time.monotonic() - started
            time.sleep(rng.uniform(0.0, 1.5 * one_save))
            os.kill(pid, signal.SIGKILL)
            while os.path.exists(f"/proc/{pid}") and _state(pid) not in ("Z", "X"):
                time.sleep(0.01)  # dead (a zombie of the server's) before the next one starts
    finally:  # no saver outlives the test, even when it fails half-way
        for pid in savers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.kill()
        server.wait()
    listed = list_reports(folder)
    assert listed, "the savers never completed a report"
    lost = 0
    for entry in listed:
        try:
            Report.load(entry.path)
        except (ValueError, FileNotFoundError):
            lost += 1
    STATS.add("reports_checked", len(listed))
    STATS.add("reports_lost", lost)
    assert lost == 0, f"{lost} listed reports could not be opened"
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert all(name.startswith((".tmp-", ".old-")) for name in leftovers)


def _state(pid: int) -> str:
    """A process's state letter from /proc (R, S, Z ...); "X" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


# ------------------------------------------------------------------------------ the Reports page
@pytest.mark.slow
def test_reports_page_shows_a_message_for_a_corrupt_report(tiny_gemma, lenslab_home, tmp_path):
    from streamlit.testing.v1 import AppTest

    from lenslab.models.paths import reports_dir
    from lenslab.probes import LogitLens, LogitLensConfig

    result = LogitLens().run(tiny_gemma, XSS, LogitLensConfig(k=2))
    path = Report([result], {"title": "broken one"}).save(reports_dir() / "broken")
    (path / "arrays.npz").write_bytes((path / "arrays.npz").read_bytes()[:64])
    script = "from lenslab.app.views import reports\nreports.render()\n"
    at = AppTest.from_string(script, default_timeout=60).run()
    assert not at.exception
    at.toggle(key="open:broken").set_value(True).run()
    assert not at.exception
    assert any("Cannot open this report" in e.value for e in at.error)
    STATS.add("reports_checked")
    assert zipfile.is_zipfile(io.BytesIO((path / "arrays.npz").read_bytes())) is False
