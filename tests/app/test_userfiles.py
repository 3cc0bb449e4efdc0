"""Files from the browser: typed paths only inside data folders, uploads checked, remote servers gated."""

from __future__ import annotations

import os

import pytest
from streamlit.testing.v1 import AppTest

from lenslab.app import access, userfiles
from lenslab.app.userfiles import PathRefused, accept_text_upload, check_user_path

MB = 2**20


@pytest.fixture
def roots(tmp_path, monkeypatch, lenslab_home):
    """One configured data folder with a file, and an outside folder with a secret."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "ok.txt").write_text("fine\n")
    (outside / "secret.txt").write_text("secret\n")
    monkeypatch.setenv("LENSLAB_DATA_DIRS", str(data))
    return data, outside


def _refusal(text: str) -> str:
    with pytest.raises(PathRefused) as caught:
        check_user_path(text, "corpus")
    return str(caught.value)


def test_paths_outside_the_data_folders_get_one_message_whether_they_exist_or_not(roots):
    data, outside = roots
    messages = {
        _refusal("/etc/passwd"),
        _refusal("/etc/no-such-file-here"),
        _refusal(str(outside / "secret.txt")),
        _refusal(str(outside / "missing.txt")),
        _refusal(f"{data}/../outside/secret.txt"),  # '..' out of a root
        _refusal(f"{data}/../../../../../../etc/passwd"),
        _refusal("outside/secret.txt"),  # relative: would depend on the server's working folder
        _refusal("~/.ssh/id_rsa"),
    }
    assert len(messages) == 1 and "data folders" in messages.pop()
    assert check_user_path(str(data / "ok.txt"), "corpus") == (data / "ok.txt").resolve()
    assert check_user_path(str(data / "new.txt"), "corpus").parent == data.resolve()  # missing inside: ok


def test_symlinks_are_judged_by_their_target(roots):
    data, outside = roots
    (data / "escape.txt").symlink_to(outside / "secret.txt")
    (data / "escape_dir").symlink_to(outside, target_is_directory=True)
    (data / "inner.txt").symlink_to(data / "ok.txt")
    assert "data folders" in _refusal(str(data / "escape.txt"))
    assert "data folders" in _refusal(str(data / "escape_dir" / "secret.txt"))
    assert check_user_path(str(data / "inner.txt"), "corpus") == (data / "ok.txt").resolve()


def test_a_server_reachable_from_other_machines_takes_no_paths(roots, monkeypatch):
    data, _ = roots
    monkeypatch.setattr(userfiles, "bound_address", lambda: "0.0.0.0")
    assert not userfiles.path_fields_enabled()
    with pytest.raises(PathRefused, match="upload"):
        check_user_path(str(data / "ok.txt"), "corpus")
    for address, loopback in [("localhost", True), ("127.0.0.1", True), ("::1", True), ("0.0.0.0", False)]:
        assert userfiles.is_loopback(address) is loopback
    assert not userfiles.is_loopback("")  # unset binds every interface


def test_uploads_are_checked_in_memory_and_stored_under_a_server_chosen_name(lenslab_home):
    with pytest.raises(ValueError, match="the limit is 20 MB"):
        accept_text_upload("big.txt", b"a" * (100 * MB), "corpus", limit_mb=20)
    with pytest.raises(ValueError, match="binary"):
        accept_text_upload("x.txt", b"\x7fELF\x00\x01\x02" + os.urandom(256), "corpus")
    with pytest.raises(ValueError, match="UTF-8"):
        accept_text_upload("x.txt", "caf\u00e9".encode("latin-1"), "corpus")
    with pytest.raises(ValueError, match="empty"):
        accept_text_upload("x.txt", b"  \n", "corpus")
    with pytest.raises(ValueError, match=r"\.txt or \.jsonl"):
        accept_text_upload("x.sh", b"echo hi", "corpus")
    stored = accept_text_upload("../../../etc/cron.d/x.txt", b"hello\n", "corpus")
    assert stored.path.parent == userfiles.upload_dir() and stored.path.read_bytes() == b"hello\n"
    assert "cron" not in stored.path.name and stored.path.suffix == ".txt"
    assert check_user_path(str(stored.path), "corpus") == stored.path.resolve()  # usable by the probe


def test_access_token_comparison():
    assert access.token_matches("s3cret", "s3cret")
    assert not access.token_matches("s3cre", "s3cret")
    assert not access.token_matches("", "")  # no configured token matches nothing


def test_lenslab_app_refuses_a_public_address_without_a_token(monkeypatch, capsys):
    from lenslab import cli

    monkeypatch.delenv("LENSLAB_ACCESS_TOKEN", raising=False)
    monkeypatch.setattr(cli.os, "execve", lambda *a: pytest.fail("the server was started"))
    assert cli.main(["app", "--no-prepare", "--address", "0.0.0.0"]) == 2
    assert "LENSLAB_ACCESS_TOKEN" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- in the app
def test_upload_field_refuses_huge_and_binary_files(open_page):
    at = open_page("sae_features")
    assert at.get("file_uploader"), "the training corpus offers an upload"
    at = at.number_input(key="sae:train:layer").set_value(1).run()  # the tiny model has 2 layers
    assert not at.error and not at.button(key="sae:trainbtn").disabled
    key = "sae:train:corpus:upload"
    at.file_uploader(key=key).set_value(("big.txt", b"x" * (100 * MB), "text/plain")).run()
    assert any("the limit is" in e.value for e in at.error)
    assert at.button(key="sae:trainbtn").disabled
    at.file_uploader(key=key).set_value(("data.txt", b"\x00\x01binary" * 100, "text/plain")).run()
    assert any("binary" in e.value for e in at.error)
    assert at.button(key="sae:trainbtn").disabled
    at.file_uploader(key=key).set_value(("data.txt", b"some text\n" * 10, "text/plain")).run()
    assert not at.error and not at.button(key="sae:trainbtn").disabled


def test_typed_etc_passwd_is_refused_in_the_app(open_page):
    at = open_page("sae_features")
    at = at.number_input(key="sae:train:layer").set_value(1).run()
    at.text_input(key="sae:train:corpus").set_value("/etc/passwd").run()
    messages = [e.value for e in at.error]
    assert any("data folders" in m for m in messages) and at.button(key="sae:trainbtn").disabled
    at.text_input(key="sae:train:corpus").set_value("/etc/no-such-file").run()
    assert [e.value for e in at.error] == messages  # the same words whether the file exists or not
    assert not any("root:" in str(e.value) for e in at.text)  # no preview of the file


GATE = "from lenslab.app import access\naccess.require_access()\nimport streamlit as st\nst.write('inside')\n"


def _gate(monkeypatch, token: str | None) -> AppTest:
    monkeypatch.setattr(userfiles, "bound_address", lambda: "0.0.0.0")
    if token is None:
        monkeypatch.delenv(access.TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(access.TOKEN_ENV, token)
    return AppTest.from_string(GATE, default_timeout=60)


def _inside(at: AppTest) -> bool:
    return any(m.value == "inside" for m in at.markdown)


def test_a_public_server_needs_the_access_token(monkeypatch):
    at = _gate(monkeypatch, None).run()
    assert not _inside(at) and any(access.TOKEN_ENV in e.value for e in at.error)
    at = _gate(monkeypatch, "s3cret").run()
    assert not _inside(at) and at.text_input[0].label == "Access token"
    at.text_input[0].set_value("wrong")
    at = at.button[0].click().run()
    assert not _inside(at) and any("Wrong access token" in e.value for e in at.error)
    at.text_input[0].set_value("s3cret")
    at = at.button[0].click().run()
    assert _inside(at)
    linked = _gate(monkeypatch, "s3cret")
    linked.query_params["token"] = "s3cret"
    linked = linked.run()
    assert _inside(linked) and "token" not in linked.query_params  # kept out of shared links
