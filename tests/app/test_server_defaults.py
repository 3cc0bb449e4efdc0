"""Server defaults: localhost only, no remote code unless asked, no secrets in logs or reports."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tomllib

import pytest
from e2e_support import REPO, SECRET_ENV, STATS, listening_addresses, start_app

FAKE = "hf_FakeSecretTokenForTests0123456789abcdef"
LOOPBACK = {"127.0.0.1", "::1"}


def test_streamlit_config_binds_localhost_and_sends_no_statistics():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    assert config["browser"]["gatherUsageStats"] is False


def test_lenslab_app_command_defaults_to_localhost(monkeypatch):
    from lenslab import cli

    seen = {}

    def fake_execve(path, argv, env):
        seen["argv"], seen["env"] = argv, env
        raise SystemExit(0)

    monkeypatch.setattr(cli.os, "execve", fake_execve)
    with pytest.raises(SystemExit):
        cli.main(["app", "--no-prepare"])
    argv = seen["argv"]
    assert argv[argv.index("--server.address") + 1] == "localhost"
    assert argv[argv.index("--browser.gatherUsageStats") + 1] == "false"


@pytest.mark.slow
def test_plain_streamlit_run_listens_on_loopback_only(tmp_path):
    """`streamlit run` from the repo root with no address flag listens on loopback sockets only."""
    server = start_app(tmp_path, address=None, extra_env={"HF_TOKEN": FAKE})
    try:
        addresses = listening_addresses(server.port)
        assert addresses, "found no listening socket for the server"
        assert addresses <= LOOPBACK, f"the app listens on {addresses}, not only on loopback"
    finally:
        server.stop()
    assert FAKE not in server.log()
    assert "gatherUsageStats" not in server.log(), "usage statistics are still switched on"


class _Stop(Exception):
    pass


def test_trust_remote_code_is_off_unless_asked(monkeypatch, tmp_path):
    from lenslab.models import ModelSession, loading

    seen = {}

    def capture(resolved, dtype, trust_remote_code=False):
        seen["trust_remote_code"] = trust_remote_code
        raise _Stop

    monkeypatch.setattr(loading, "load_hf", capture)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(_Stop):
        ModelSession.load(str(tmp_path))
    assert seen["trust_remote_code"] is False
    with pytest.raises(_Stop):
        ModelSession.load(str(tmp_path), trust_remote_code=True)
    assert seen["trust_remote_code"] is True


def test_a_model_folder_with_custom_code_is_not_executed(tmp_path):
    """A local folder whose config asks for its own Python code is refused, and the code never runs."""
    from lenslab.models import ModelSession

    folder = tmp_path / "evil-model"
    folder.mkdir()
    flag = tmp_path / "code-ran"
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {
                    "AutoConfig": "evil.EvilConfig",
                    "AutoModelForCausalLM": "evil.EvilForCausalLM",
                },
            }
        )
    )
    (folder / "evil.py").write_text(f"open({str(flag)!r}, 'w').write('ran')\n")
    with pytest.raises((ValueError, OSError)) as info:
        ModelSession.load(str(folder))
    assert str(info.value)
    assert not flag.exists(), "the model folder's code was executed without trust_remote_code"


@pytest.mark.slow
def test_no_secrets_in_cli_output_logs_or_reports(tmp_path, tiny_gemma, caplog):
    """A fake token in the environment must not appear in the CLI's output, logs or report files."""
    import os

    from lenslab.analyses.report import Report, provenance, report_meta
    from lenslab.probes import LogitLens, LogitLensConfig

    env = {**os.environ, **dict.fromkeys(SECRET_ENV, FAKE), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "cli-report"
    proc = subprocess.run(
        [sys.executable, "-m", "lenslab.cli", "run", "logit_lens", "--prompt", "Hello", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert FAKE not in proc.stdout + proc.stderr
    for file in out.iterdir():
        assert FAKE.encode() not in file.read_bytes(), f"secret found in {file.name}"

    for name in SECRET_ENV:
        os.environ[name] = FAKE
    try:
        with caplog.at_level(logging.DEBUG):
            result = LogitLens().run(tiny_gemma, "hi", LogitLensConfig(k=2))
            meta = report_meta([result], tiny_gemma, "t")
            path = Report([result], meta).save(tmp_path / "api-report")
        assert FAKE not in json.dumps(provenance(tiny_gemma))
        assert FAKE not in caplog.text
        for file in path.iterdir():
            assert FAKE.encode() not in file.read_bytes()
    finally:
        for name in SECRET_ENV:
            os.environ.pop(name, None)
    STATS.add("reports_checked", 2)
