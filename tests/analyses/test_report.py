"""Reports: lossless round trip, escaped HTML, atomic saves, safe names."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lenslab.analyses.report import (
    Report,
    delete_report,
    list_deleted,
    list_reports,
    report_meta,
    resolve_in,
    restore_report,
    safe_name,
    trash_dir,
    zip_report,
)
from lenslab.probes import LogitLens, LogitLensConfig

EVIL = '<script>alert("x")</script> "><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def result(tiny_gemma):
    return LogitLens().run(tiny_gemma, EVIL, LogitLensConfig(k=3))


def test_round_trip_bit_exact(tmp_path, result, tiny_gemma):
    meta = report_meta([result, result], tiny_gemma, "two")
    path = Report([result, result], meta).save(tmp_path / "r")
    back = Report.load(path)
    assert len(back.results) == 2 and back.meta["title"] == "two"
    for r in back.results:
        for name in ("top_ids", "top_probs", "final_rank", "final_prob", "layers"):
            a, b = getattr(r, name), getattr(result, name)
            assert a.dtype == b.dtype and np.array_equal(a, b)
        assert r.tokens == result.tokens and r.config == result.config and r.prompt == EVIL
    assert meta["rerun"][0].startswith("lenslab run logit_lens --model tiny-gemma3-s0")
    assert {"torch", "transformer_lens", "lenslab", "device", "dtype", "created"} <= set(meta)


def test_html_is_escaped_and_self_contained(tmp_path, result):
    path = Report([result], {"title": EVIL}).save(tmp_path / "r")
    html = (path / "report.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html
    assert "<script src=" not in html  # nothing loaded from the network: plotly.js is inlined
    assert html.count("* plotly.js v") == 1  # exactly one inlined copy for all figures


def test_arrays_load_without_pickle(tmp_path, result):
    path = Report([result], {}).save(tmp_path / "r")
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_existing_report_not_overwritten_by_default(tmp_path, result):
    Report([result], {"title": "a"}).save(tmp_path / "r")
    with pytest.raises(FileExistsError):
        Report([result], {"title": "b"}).save(tmp_path / "r")
    Report([result], {"title": "b"}).save(tmp_path / "r", overwrite=True)
    assert Report.load(tmp_path / "r").meta["title"] == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temp or old folders left


def test_crash_mid_save_leaves_nothing_listed(tmp_path, result, monkeypatch):
    import lenslab.analyses.report as report_mod

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report_mod, "render_html", boom)
    with pytest.raises(OSError):
        Report([result], {}).save(tmp_path / "r")
    assert not (tmp_path / "r").exists() and list(tmp_path.iterdir()) == []
    assert list_reports(tmp_path) == []


def test_killed_process_mid_save_leaves_old_or_nothing(tmp_path):
    """SIGKILL a saver repeatedly at random moments: every listed report must load.

    One helper process imports lenslab and runs the probe once, then forks a saver per round
    (saving in a loop until killed), so the rounds do not each pay the imports.
    """
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(os.getcwd())!r})
        import torch
        torch.set_num_threads(1)  # no thread pool to inherit across fork
        from lenslab.models.tiny import tiny_session
        from lenslab.probes import LogitLens, LogitLensConfig
        from lenslab.analyses.report import Report
        s = tiny_session("gemma3")
        r = LogitLens().run(s, "hello", LogitLensConfig())
        for line in sys.stdin:
            pid = os.fork()
            if pid == 0:
                i = 0
                while True:
                    Report([r], {{"title": str(i)}}).save({str(tmp_path / "r")!r}, overwrite=True)
                    i += 1
            print(pid, flush=True)
            os.waitpid(pid, 0)
            print("reaped", flush=True)
        """
    )
    import contextlib
    import random
    import signal
    import time

    helper = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    saver = None
    try:
        for _ in range(3):
            helper.stdin.write("go\n")
            helper.stdin.flush()
            saver = int(helper.stdout.readline())
            time.sleep(random.uniform(0.2, 1.0))
            os.kill(saver, signal.SIGKILL)
            assert helper.stdout.readline().strip() == "reaped"
            saver = None
            for entry in list_reports(tmp_path):
                Report.load(entry.path)  # raises if a listed report is broken
    finally:
        if saver is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(saver, signal.SIGKILL)  # a failed round leaves no saver behind
        helper.kill()
        helper.wait()
    assert (tmp_path / "r" / "report.json").exists() or not list_reports(tmp_path)


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "..", ".", "", "a/../../b", "\x00"])
def test_report_names_cannot_escape(tmp_path, name):
    try:
        path = resolve_in(tmp_path, name)
    except ValueError:
        return
    assert path.parent == tmp_path.resolve()


def test_safe_name_keeps_readable_names():
    assert safe_name("my report 1") == "my-report-1"


def test_corrupt_reports_give_clear_errors(tmp_path, result):
    path = Report([result], {}).save(tmp_path / "r")
    (path / "arrays.npz").write_bytes((path / "arrays.npz").read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        Report.load(path)
    (path / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        Report.load(path)
    with pytest.raises(FileNotFoundError, match="not a report"):
        Report.load(tmp_path / "missing")
    doc_path = Report([result], {}).save(tmp_path / "s") / "report.json"
    doc = json.loads(doc_path.read_text())
    doc["results"][0]["data"]["bogus"] = 1
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="unknown field"):
        Report.load(tmp_path / "s")


def test_list_zip_delete(tmp_path, result):
    Report([result], {"title": "hello", "prompt": "p", "model": "m"}).save(tmp_path / "one")
    (tmp_path / ".tmp-half").mkdir()
    entries = list_reports(tmp_path)
    assert [e.name for e in entries] == ["one"] and entries[0].probes == ["logit_lens"]
    assert zip_report(entries[0].path)[:2] == b"PK"
    delete_report(tmp_path, "one")
    assert list_reports(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        delete_report(tmp_path, "one")


def test_delete_moves_to_trash_and_restore_brings_it_back_bit_exact(tmp_path, result):
    saved = Report([result], {"title": "kept", "prompt": "p", "model": "m"}).save(tmp_path / "one")
    files = {f.name: f.read_bytes() for f in saved.iterdir()}
    trashed = delete_report(tmp_path, "one")
    assert not saved.exists() and trashed.parent == trash_dir(tmp_path)
    assert [e.title for e in list_deleted(tmp_path)] == ["kept"] and list_reports(tmp_path) == []
    restored = restore_report(tmp_path, "one")
    assert restored == saved.resolve() and list_deleted(tmp_path) == []
    assert {f.name: f.read_bytes() for f in restored.iterdir()} == files
    # restoring never overwrites a live report of the same name
    delete_report(tmp_path, "one")
    Report([result], {"title": "newer"}).save(tmp_path / "one")
    with pytest.raises(FileExistsError):
        restore_report(tmp_path, "one")
    assert [e.title for e in list_reports(tmp_path)] == ["newer"]
    with pytest.raises(FileNotFoundError):
        restore_report(tmp_path, "nope")
    with pytest.raises(ValueError):
        restore_report(tmp_path, "..")
