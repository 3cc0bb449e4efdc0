# The two set-up commands of the README. Both are idempotent.
.PHONY: app test setup lint bench

app:            ## install (once), prepare the embedded model (once), start http://localhost:8501
	scripts/setup.sh
	.venv/bin/lenslab app

test:           ## install (once), prepare (once), run the whole test suite
	scripts/setup.sh --test
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m pytest -n auto --maxprocesses 4 --durations=25

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:
	for b in bench/bench_*.py; do .venv/bin/python $$b || exit 1; done
