"""Every numeric field of every page refuses out-of-range values with one message and runs nothing.

The pages are driven with AppTest on a tiny random model. For each number field the allowed range
is read from its help text ("Allowed: between 1 and 50."), a value just outside it (and a far-off
one) is entered, and the page must show the one "Invalid settings" message naming the field and
the range, disable or ignore its run buttons, and show no result. The browser would refuse such a
value silently (keeping the old one) if the widget carried min/max; these fields must not.
"""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from lenslab.app.plain import INVALID
from lenslab.app.views import discover

pytestmark = pytest.mark.slow
RUN_LABELS = re.compile(r"^(Run|Show feature|Steer|Evaluate|Train SAE|Inspect|Train the learned prompt)")
ALLOWED = re.compile(r"Allowed: (between (?P<lo>\S+) and (?P<hi>\S+)|≥ (?P<min>\S+)|≤ (?P<max>\S+))\.")
# Pages whose number fields appear only after a step that needs a trained artefact are opened
# in that state by their own tests (the SAE tabs: test_sae_tab_fields_refuse_out_of_range).
PAGES = [m.__name__.rsplit(".", 1)[-1] for m in discover() if m.URL != "reports"]


def bad_values(help_text: str) -> list[float]:
    """Values just outside and far outside the range in ``help_text``."""
    if "Allowed: any finite number." in (help_text or ""):  # bounded by the prompt, checked on run
        return [1e9, -1e9]
    found = ALLOWED.search(help_text or "")
    assert found, f"number field without its allowed range in the help: {help_text!r}"
    low = found["lo"] or found["min"]
    high = found["hi"] or found["max"]
    out = []
    if low is not None:
        lo = float(low)
        out.append(lo - 1 if lo == int(lo) else lo / 10)
    if high is not None:
        hi = float(high)
        out.append(hi + 1 if hi < 1e6 else hi * 10)
    return out


def results_on(at: AppTest) -> int:
    """How many result elements (figures, metrics, tables) the page shows."""
    return len(at.get("plotly_chart")) + len(at.metric) + len(at.dataframe)


def refusal(at: AppTest, label: str) -> str | None:
    """The one-style message naming ``label`` and a range, if the page shows it."""
    for message in (e.value for e in at.error):
        plain = message.replace("\\", "").replace("_", " ")  # config fields are named by their key
        if message.startswith(INVALID) and label in plain and re.search(r"between|≥|≤|range", plain):
            return message
    return None


def run_buttons(at: AppTest) -> list:
    return [b for b in at.button if RUN_LABELS.match(b.label or "")]


def check_field(
    at: AppTest, key: str, label: str, value: float, start: float, before: int, reopen
) -> AppTest:
    """Enter ``value``: message + guarded buttons disabled; pressing them with it runs nothing."""
    disabled_before = {b.key for b in run_buttons(at) if b.disabled}
    at = at.number_input(key=key).set_value(value).run()
    assert not at.exception, [e.value for e in at.exception]
    if refusal(at, label) is None:  # inside a form: the value counts when the form is submitted
        at.number_input(key=key).set_value(value)
        for button in run_buttons(at):
            if not button.disabled:
                button.click()
        at = at.run()
        assert refusal(at, label), (label, value, [e.value for e in at.error])
        assert results_on(at) == before, f"a result appeared although {label}={value}"
        return reopen()  # the form keeps the submitted value: start again from a fresh page
    guarded = [b.key for b in run_buttons(at) if b.disabled and b.key not in disabled_before]
    enabled_before = [b.key for b in run_buttons(at) if b.key not in disabled_before]
    assert guarded or not enabled_before, f"no run button is disabled while {label}={value}"
    assert results_on(at) == before
    # The bad value and a press of the guarded buttons arrive in the same rerun (a fast click):
    at = at.number_input(key=key).set_value(start).run()
    at.number_input(key=key).set_value(value)
    for name in guarded:
        at.button(key=name).click()
    at = at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert refusal(at, label)
    assert not [s for s in at.get("status") if "done" in str(getattr(s, "label", ""))], "a probe ran"
    assert results_on(at) == before, f"a result appeared although {label}={value}"
    return at.number_input(key=key).set_value(start).run()


def opened(view: str, open_page) -> AppTest:
    """``view`` on tiny Gemma, in a state where its run buttons can run (so a bad field must stop them)."""
    at = open_page(view)
    if view == "patching":  # the default pair differs in length under the character tokenizer
        clean = at.text_area(key="activation_patching:prompt").value
        at = at.text_area(key="activation_patching:corrupted").set_value(clean[:-1] + "?").run()
        assert not at.button(key="activation_patching:run").disabled
    return at


@pytest.mark.parametrize("view", PAGES)
def test_every_number_field_refuses_out_of_range(view, open_page):
    at = opened(view, open_page)
    before = results_on(at)
    fields = [(w.key, w.label, w.help or "", w.value) for w in at.number_input]
    for key, label, help_text, start in fields:
        for value in bad_values(help_text):
            at = check_field(at, key, label, value, start, before, lambda: opened(view, open_page))


def test_logit_lens_k_out_of_range_names_field_and_range(open_page):
    at = open_page("logit_lens")
    at = at.number_input(key="logit_lens:k").set_value(-5).run()
    message = next(e.value for e in at.error if e.value.startswith(INVALID))
    assert "k must be between 1 and 50, got -5" in message.replace("\\", "")
    assert next(b for b in at.button if b.label == "Run").disabled
    assert not at.get("plotly_chart")
