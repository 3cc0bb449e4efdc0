"""The lenslab command: run writes the app's report; bad input exits 2 with one line."""

import numpy as np
import pytest

from lenslab.analyses.report import Report
from lenslab.cli import build_config, main
from lenslab.probes import get_probe


def test_build_config_types():
    probe = get_probe("logit_lens")
    cfg = build_config(probe, ["k=7", "layers=1,3"])
    assert cfg.k == 7 and cfg.layers == (1, 3)
    assert build_config(probe, ["layers=none"]).layers is None
    with pytest.raises(ValueError, match="unknown setting"):
        build_config(probe, ["nope=1"])
    with pytest.raises(ValueError, match="cannot read"):
        build_config(probe, ["k=seven"])
    with pytest.raises(ValueError, match="key=value"):
        build_config(probe, ["k"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "nope", "--prompt", "x", "--out", "o"], "unknown probe"),
        (["run", "logit_lens", "--prompt", "x", "--out", "o", "--config", "k=0"], "k must be"),
        (["run", "logit_lens", "--prompt", " ", "--out", "o", "--model", "gemma-3-270m"], "empty"),
        (["run", "logit_lens", "--prompt", "x", "--out", "o", "--model", "bad name!!"], "could not be found"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lenslab: error:") and message in err[-1]


@pytest.mark.slow
def test_run_writes_report_and_rerun_reproduces(tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["run", "logit_lens", "--prompt", "Hello <world>", "--config", "k=3", "--out", str(out)]
    assert main(argv) == 0
    report = Report.load(out)
    rerun = report.meta["rerun"][0]
    assert rerun.startswith("lenslab run logit_lens --model gemma-3-270m") and "k=3" in rerun
    import shlex

    again = tmp_path / "again"
    assert main([*shlex.split(rerun)[1:], "--out", str(again)]) == 0
    a, b = report.results[0], Report.load(again).results[0]
    assert np.array_equal(a.top_probs, b.top_probs) and a.config == b.config


def test_list_shows_probes_and_models(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "logit_lens" in out and "gemma-3-270m" in out


@pytest.mark.slow
def test_cli_report_equals_app_report(lenslab_home, tmp_path):
    from streamlit.testing.v1 import AppTest

    from lenslab.analyses.report import list_reports
    from lenslab.models.paths import reports_dir

    prompt = "Paris is the capital of"
    at = AppTest.from_string(
        "from lenslab.app import state\nfrom lenslab.app.views import logit_lens as page\n"
        "state.sidebar()\npage.render()\n",
        default_timeout=300,
    ).run()
    at.text_area[0].set_value(prompt)
    next(b for b in at.button if b.label == "Run").click().run()
    next(b for b in at.button if "Save report" in b.label).click().run()
    (entry,) = list_reports(reports_dir())
    app_report = Report.load(entry.path)
    cli_out = tmp_path / "cli"
    assert main(["run", "logit_lens", "--prompt", prompt, "--out", str(cli_out)]) == 0
    cli_report = Report.load(cli_out)
    a, b = app_report.results[0], cli_report.results[0]
    assert a.config == b.config and a.tokens == b.tokens and a.top_tokens == b.top_tokens
    for name in ("top_ids", "top_probs", "final_rank", "final_prob"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert app_report.meta["rerun"] == cli_report.meta["rerun"]
