"""Logit lens page: what every layer predicts at every position."""

from lenslab.app.components import probe_page

TITLE = "Logit lens"
ICON = ":material/search:"
ORDER = 10
URL = "logit-lens"


def render() -> None:
    """Prompt → layer × position grid of decoded tokens, plus the final token's trajectory."""
    probe_page(
        "logit_lens",
        intro="Each cell decodes one hidden state through the final norm and unembedding. "
        "Hover a cell for its top-k tokens.",
    )
