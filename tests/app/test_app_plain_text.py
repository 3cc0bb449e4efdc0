"""User text is data, never markup: Markdown, HTML and javascript: payloads render literally.

Every string the app hands to a Markdown-rendering element (expander labels, markdown, captions,
alerts, metrics, subheaders) is rendered here with markdown-it (CommonMark + tables +
strikethrough, raw HTML on) and must produce no link, emphasis, image or element from the
payload. The Reports page is driven with AppTest on reports whose title, prompt and model carry
the payloads; the deletion flow (confirm, trash, restore) is checked on the same page.
"""

from __future__ import annotations

import html
import re

import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from lenslab.analyses.report import Report, list_deleted, list_reports
from lenslab.app.plain import md, md_code
from lenslab.probes import LogitLens, LogitLensConfig

PAYLOADS = [
    "[x](javascript:alert(1))",
    "[click](https://evil.example)",
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "<a href='javascript:alert(1)'>a</a>",
    "__getattr__",
    "**bold** and *it* and ~~gone~~",
    "`code` and ``two``",
    "# heading",
    "> quote",
    "- item",
    "1. item",
    "| a | b |",
    ":red[red] :material/home: $x^2$",
    "![img](http://x/y.png)",
    "www.example.com and https://example.com",
    "line one\nline two",
    "\\*escaped\\*",
    "&lt;b&gt; entity",
]
RENDER = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
TAGS = re.compile(r"<(a|strong|em|img|script|h\d|blockquote|ul|ol|li|table|del|s|iframe)\b", re.IGNORECASE)


def rendered(markdown: str) -> str:
    """The HTML a CommonMark renderer makes of ``markdown``, without the paragraph wrapper."""
    return RENDER.render(markdown).strip().removeprefix("<p>").removesuffix("</p>")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_md_renders_every_payload_literally(payload):
    out = rendered(md(payload))
    assert not TAGS.search(out), out
    assert "<" not in out.replace("&lt;", "")  # no element at all
    assert html.unescape(out) == " ".join(payload.splitlines())  # the text itself survives
    code = rendered(md_code(payload))
    assert code.startswith("<code>") and html.unescape(code[6:-7]).strip() == " ".join(payload.splitlines())


def _markdown_strings(at: AppTest) -> list[str]:
    """Every string on the page that Streamlit renders as Markdown."""
    out = [e.label for e in at.expander]
    for kind in ("markdown", "caption", "error", "warning", "info", "success", "subheader", "title"):
        out += [str(e.value) for e in getattr(at, kind)]
    for metric in at.metric:
        out += [metric.label, str(metric.value)]
    return out


@pytest.fixture(scope="module")
def saved_payload_reports(tmp_path_factory, tiny_gemma):
    """One report per payload (title, prompt, model, created), saved once for the module."""
    folder = tmp_path_factory.mktemp("payload-reports")
    result = LogitLens().run(tiny_gemma, "ab", LogitLensConfig(k=2))
    for i, payload in enumerate(PAYLOADS):
        meta = {"title": payload, "prompt": payload, "model": payload, "created": payload}
        Report([result], meta).save(folder / f"r{i}")
    return folder


@pytest.fixture
def payload_reports(lenslab_home, saved_payload_reports):
    """A fresh copy of the payload reports in this test's reports folder (tests may delete some)."""
    import shutil

    from lenslab.models.paths import reports_dir

    shutil.copytree(saved_payload_reports, reports_dir(), dirs_exist_ok=True)
    return reports_dir()


def _reports_page() -> AppTest:
    script = "from lenslab.app.views import reports as page\npage.render()\n"
    return AppTest.from_string(script, default_timeout=120).run()


def test_reports_page_shows_payload_titles_as_text(payload_reports):
    at = _reports_page()
    assert not at.exception, [e.value for e in at.exception]
    labels = [e.label for e in at.expander]
    assert len(labels) == len(PAYLOADS)
    for text in _markdown_strings(at):
        out = rendered(text)
        assert not TAGS.search(out), (text, out)
    prompts = [t.value for t in at.text]  # prompts go through st.text: shown as they are
    assert "<script>alert(1)</script>" in prompts and "[x](javascript:alert(1))" in prompts


def test_delete_asks_first_then_moves_to_trash_and_restores(payload_reports):
    at = _reports_page()
    name = "r0"
    at.button(key=f"del:{name}").click().run()
    assert any("Recently deleted" in w.value for w in at.warning)  # asks, nothing deleted yet
    assert len(list_reports(payload_reports)) == len(PAYLOADS)
    at.button(key=f"del-no:{name}").click().run()
    assert len(list_reports(payload_reports)) == len(PAYLOADS) and not at.warning
    at.button(key=f"del:{name}").click().run()
    at.button(key=f"del-yes:{name}").click().run()
    assert not at.exception
    assert name not in [e.name for e in list_reports(payload_reports)]
    assert [e.name for e in list_deleted(payload_reports)] == [name]
    assert any(s.value == "Recently deleted" for s in at.subheader)
    at.button(key=f"restore:{name}").click().run()
    assert name in [e.name for e in list_reports(payload_reports)] and not list_deleted(payload_reports)
    assert not any(s.value == "Recently deleted" for s in at.subheader)


def test_display_helpers_round_floats_and_keep_text():
    from lenslab.app.components import cell_text, rounded

    assert cell_text(0.6272377967834473) == "0.6272"
    assert cell_text("0.6272377967834473") == "0.6272377967834473"  # text stays text
    assert cell_text(3) == "3"
    assert rounded({"ev": 0.6272377967834473, "rows": [1.23456789, "x"], "n": 7}) == {
        "ev": 0.6272,
        "rows": [1.235, "x"],
        "n": 7,
    }


def _neurosymbolic_explanations(payloads: list[str]) -> None:
    """The neurosymbolic page's read-out block, for results whose model text carries each payload."""
    from types import SimpleNamespace

    import numpy as np

    from lenslab.app.views.neurosymbolic import _explain

    fit = SimpleNamespace(gate_text=lambda layer: "acts on 40% of problems")
    for i, payload in enumerate(payloads):
        _explain(
            SimpleNamespace(
                operation_scores=np.array([0.9]),
                decoded_text=payload,
                fired=i % 2 == 0,
                confidence=0.9,
                gate_threshold=0.5,
                config=SimpleNamespace(threshold=0.5, calibrated_gate=True),
                system_answer=7,
                abstain_reason=payload,
                decoded_operation="+",
                operation="+",
                decoded_first=3,
                first=3,
                decoded_second=4,
                second=4,
                readout_layer=2,
                exact_answer=7,
                fit=fit,
                baseline_answer=payload,
                baseline_answer_ce=1.0,
                merged_answer=payload,
                merged_answer_ce=0.5,
                merge_layer=3,
                few_shot_prompt=payload,
            )
        )


def test_neurosymbolic_page_shows_decoded_text_and_answers_as_text():
    at = AppTest.from_function(_neurosymbolic_explanations, args=(PAYLOADS,), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    strings = [
        s for s in _markdown_strings(at) if "encoder reads" in s or "Model alone" in s or "With merge" in s
    ]
    assert len(strings) >= 2 * len(PAYLOADS)  # the read-out line and the model-alone line of each
    page_own = re.compile(r"</?(strong|code)>")  # the page's bold figures and inline code
    for text in strings:
        out = page_own.sub("", rendered(text))
        assert not TAGS.search(out) and "<" not in out.replace("&lt;", ""), (text, out)
    shown = " ".join(html.unescape(page_own.sub("", rendered(t))) for t in strings)
    for payload in PAYLOADS:  # the text itself survives, as text (emphasis would eat its stars)
        assert " ".join(payload.splitlines()) in shown, payload
