"""What a user waits for in the browser: the logit lens page of a ~30-token prompt, against its floor.

The page-latency benchmark (``bench_pages.py``) times probes in-process. This one times what the
user sees: the real app (``app/main.py`` under ``streamlit run``, default config, the embedded
model) in Debian's Chromium driven by Playwright. After a warm-up run (the model loads and the
page's code is imported), each timed run types a new prompt of ``--tokens`` tokens (a different
prefix each time, so no cache can answer it), presses Run and stops the clock when a plotly
figure of the new result is attached to the page. Beside it, in the same run and on the same
machine, it times:

- the logit lens' **floor** at that prompt (``bench_pages.build_floors``: one body forward + one
  batched ``rows @ W_U`` + logsumexp / top-k on the plain HF model), and
- the probe itself in this process (``LogitLens().run``), so the browser's own overhead (the
  Streamlit rerun, sending the figure, drawing it) reads as the difference; the arrival of the
  figure's websocket message splits that overhead between the server and the browser.

The figure is browser / floor. Run: ``python bench/bench_browser.py [--tokens 30] [--repeat 3]``
(needs Debian's chromium and playwright, as the browser tests do).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script or a module

from transformers import AutoModelForCausalLM

from bench.bench_pages import TEXT, build_floors, measure
from bench.common import machine, write
from lenslab.models import ModelSession
from lenslab.models.loading import embedded_dir
from lenslab.models.paths import lenslab_home
from lenslab.probes import LogitLens

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from e2e_support import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402 - Chromium as the browser tests run it


def prompts(session: ModelSession, n_tokens: int, count: int) -> list[str]:
    """``count`` different prompts of ``n_tokens`` tokens (BOS included) or the closest below."""
    words = (TEXT * 8).split(" ")
    found = []
    for offset in range(count):
        chosen = words[offset]
        for i in range(offset + 1, len(words)):
            candidate = " ".join(words[offset:i])
            if session.tokenize(candidate).shape[-1] > n_tokens:
                break
            chosen = candidate
        found.append(chosen)
    return found


def start_app(folder: Path) -> tuple[subprocess.Popen, str]:
    """The real app on a free port, its own reports folder, models and artefacts shared."""
    port = free_port()
    home = folder / "home"
    home.mkdir()
    for part in ("models", "artefacts"):
        (home / part).symlink_to(lenslab_home() / part, target_is_directory=True)
    env = dict(os.environ, LENSLAB_HOME=str(home), LENSLAB_REPORTS=str(folder / "reports"))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py")]
    command += ["--server.port", str(port), "--server.headless", "true", "--server.address", "localhost"]
    command += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((folder / "server.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("the app did not become healthy in 180 s")


FIGURE_FRAME_BYTES = 20_000  # the grid's message is ~90 KB; every other message of a run is under 10 KB


def time_in_browser(url: str, texts: list[str]) -> list[tuple[float, float]]:
    """Per prompt (the first is warm-up): seconds from pressing Run to the result's first figure
    attached, and to the arrival of the message carrying it.

    Each run opens the page afresh (a new browser session: no earlier figure on it; the model
    stays resident in the server), types the prompt, waits for the rerun that commits it to end,
    and times Run → the first plotly figure attached. The figure's websocket message is the
    largest of the run (over ``FIGURE_FRAME_BYTES``); its arrival splits the wait into the
    server's part (rerun, probe, figure built and sent) and the browser's (drawing it).
    """
    from playwright.sync_api import sync_playwright

    seconds = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for text in texts:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            frames: list[tuple[float, int]] = []
            page.on(
                "websocket",
                lambda ws, frames=frames: ws.on(
                    "framereceived", lambda payload: frames.append((time.perf_counter(), len(payload)))
                ),
            )
            page.goto(f"{url}/logit-lens", timeout=180_000)
            box = page.locator("textarea[aria-label='Prompt']").first
            box.wait_for(state="visible", timeout=180_000)
            box.fill(text)
            box.press("Tab")  # commit the value; the rerun it triggers draws no result yet
            page.wait_for_timeout(300)
            page.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=60_000)
            if page.locator(".js-plotly-plot").count():
                raise RuntimeError("a figure is on the page before Run: the timing would be wrong")
            button = page.get_by_role("button", name="Run").first
            frames.clear()
            started = time.perf_counter()
            button.click()
            page.locator(".js-plotly-plot").first.wait_for(state="attached", timeout=300_000)
            attached = time.perf_counter()
            figure = [t for t, size in frames if size > FIGURE_FRAME_BYTES and t <= attached]
            arrived = figure[0] if figure else float("nan")
            seconds.append((attached - started, arrived - started))
            page.close()
        browser.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    session = ModelSession.load()
    texts = prompts(session, args.tokens, args.repeat + 1)
    n_tokens = session.tokenize(texts[1]).shape[-1]
    hf = AutoModelForCausalLM.from_pretrained(embedded_dir("gemma-3-270m"), attn_implementation="eager")
    hf.to(session.device).eval()
    floor = build_floors(session, hf)("logit_lens", texts[1])
    probe, config = LogitLens(), LogitLens().default_config()
    fns = {"probe": lambda: probe.run(session, texts[1], config), "floor": floor.run}
    wall, cpu = measure(fns, args.repeat)
    with tempfile.TemporaryDirectory() as folder:
        process, url = start_app(Path(folder))
        try:
            runs = time_in_browser(url, texts)[1:]
        finally:
            process.terminate()
            process.wait(timeout=30)
    browser = [total for total, _ in runs]
    best = min(browser)
    excess = best - wall["probe"]
    share = (
        f"the browser's own share (Streamlit rerun, sending and drawing the figure) is about {excess:.2f} s."
        if excess > 0
        else "under this load the in-process probe took longer than the browser run, so the browser's "
        "own share can't be separated from the noise: rerun on an idle machine."
    )
    rows = "\n".join(
        f"| {i + 1} | {total:.2f} | {total / wall['floor']:.2f}× | {arrived:.2f} | {total - arrived:.2f} |"
        for i, (total, arrived) in enumerate(runs)
    )
    load = f"load average {load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    write(
        "browser",
        f"""## The logit lens in the browser against its floor (`browser`)

Measured on {machine()} ({load}); `python bench/bench_browser.py {" ".join(sys.argv[1:])}`: the
real app in Debian's Chromium, a {n_tokens}-token prompt (a new one each run, after a warm-up run),
from pressing Run to the result's figure attached to the page. Beside it in the same run, best of
{args.repeat}: the floor ({floor.kind}: body forward + one batched `rows @ W_U` + logsumexp/top-k on
the plain HF model) {wall["floor"]:.2f} s wall / {cpu["floor"]:.2f} s CPU, and the probe in-process
{wall["probe"]:.2f} s wall / {cpu["probe"]:.2f} s CPU ({wall["probe"] / wall["floor"]:.2f}× the floor).

| run | browser (s) | browser / floor (wall) | figure's message arrived (s) | drawing it (s) |
|---|---|---|---|---|
{rows}

The last two columns split each run at the arrival of the websocket message carrying the grid:
before it, the server's part (the rerun, the probe, the figure built and sent); after it, the
browser's (Streamlit and plotly.js drawing the figure in a freshly opened tab).

Best browser run: **{best:.2f} s = {best / wall["floor"]:.2f}× the floor**; {share}
""",
    )
    print(f"browser best {best:.2f} s, floor {wall['floor']:.2f} s, probe {wall['probe']:.2f} s", flush=True)


if __name__ == "__main__":
    main()
