"""The ``lenslab`` command: start the app, prepare offline artefacts, run probes, list things.

``lenslab run`` writes exactly the report the app would write for the same inputs, so a saved
report's recorded command reproduces it. Bad input exits non-zero with a one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

APP_MAIN = Path(__file__).resolve().parent / "app" / "main.py"


def _progress_printer(prefix: str):
    """A Progress callback writing one updating line to stderr."""

    def progress(fraction: float, message: str = "") -> None:
        sys.stderr.write(f"\r{prefix}: {100 * fraction:5.1f}% {message[:60]:<60}")
        sys.stderr.flush()
        if fraction >= 1.0:
            sys.stderr.write("\n")

    return progress


def parse_config_value(config_cls: type, key: str, raw: str) -> Any:
    """Turn ``key=raw`` into a typed value for ``config_cls`` (the field's kind reads the text)."""
    from lenslab.probes.fields import config_field

    return config_field(config_cls, key).parse(raw)


def build_config(probe: Any, pairs: list[str]) -> Any:
    """The probe's default config with ``key=value`` overrides applied."""
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--config expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        values[key.strip()] = parse_config_value(probe.config_cls, key.strip(), raw)
    return dataclasses.replace(probe.default_config(), **values)


def cmd_run(args: argparse.Namespace) -> int:
    """Run one probe on one prompt and save its report."""
    from lenslab.analyses.report import Report, report_meta
    from lenslab.models import ModelSession
    from lenslab.models.session import validate_prompt
    from lenslab.probes import get_probe

    probe = get_probe(args.probe)
    config = build_config(probe, args.config or [])
    config.check_numbers()
    validate_prompt(args.prompt)
    session = ModelSession.load(args.model, device=args.device, dtype=args.dtype)
    config.validate(session)
    result = probe.run(session, args.prompt, config, _progress_printer(probe.name))
    meta = report_meta([result], session, args.title or probe.title)
    path = Report([result], meta).save(Path(args.out), overwrite=args.overwrite)
    print(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Print probes, offline models and trained artefacts."""
    from lenslab.models import available_offline
    from lenslab.models.paths import artefacts_dir
    from lenslab.probes import registered_probes

    print("probes:")
    for name, cls in sorted(registered_probes().items()):
        print(f"  {name:<18} {cls.title}")
    print("models available offline:")
    for name in available_offline():
        print(f"  {name}")
    root = artefacts_dir()
    print(f"trained artefacts ({root}):")
    found = sorted(p for p in root.glob("*/*/*") if not p.name.startswith(".")) if root.is_dir() else []
    for path in found:
        print(f"  {path.relative_to(root)}")
    if not found:
        print("  none")
    return 0


def _prepared_stamp(model: str) -> Path:
    from lenslab.models.paths import artefacts_dir

    return artefacts_dir() / f".prepared-{model}"


def cmd_prepare(args: argparse.Namespace) -> int:
    """Convert the embedded model and build each probe's default artefacts (idempotent)."""
    from filelock import FileLock

    from lenslab.models import ModelSession, prepare_embedded
    from lenslab.models.paths import lenslab_home
    from lenslab.probes import FAMILIES

    started = time.perf_counter()
    prepare_embedded(args.model, progress=lambda m: print(m, file=sys.stderr))
    if args.skip_artefacts:
        return 0
    lenslab_home().mkdir(parents=True, exist_ok=True)
    with FileLock(str(lenslab_home() / ".prepare.lock")):
        session = ModelSession.load(args.model)
        for family in FAMILIES:  # each family face that trains artefacts exports its preparer
            prepare = getattr(family, "prepare_default_artefacts", None)
            if prepare is not None:
                name = family.__name__.rsplit(".", 1)[-1]
                step_started = time.perf_counter()
                prepare(session, _progress_printer(f"prepare {name}"))
                print(f"prepare {name}: {time.perf_counter() - step_started:.0f} s", file=sys.stderr)
        _prepared_stamp(args.model).parent.mkdir(parents=True, exist_ok=True)
        _prepared_stamp(args.model).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    print(f"prepared in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


def _prepare_in_background(model: str) -> None:
    """Start ``lenslab prepare`` detached so the app opens at once while artefacts build."""
    import subprocess

    from lenslab.models.paths import lenslab_home

    if _prepared_stamp(model).exists():
        return
    log_path = lenslab_home() / "prepare.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "lenslab.cli", "prepare", "--model", model],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # below the app's priority: the landing page needs none of it and must not wait for it
            preexec_fn=lambda: os.nice(10),
        )
    print(f"building default artefacts in the background (log: {log_path})", file=sys.stderr)


def cmd_app(args: argparse.Namespace) -> int:
    """Start the Streamlit app (localhost only unless --address is given, which needs a token)."""
    from lenslab.app.userfiles import is_loopback

    if not is_loopback(args.address) and not os.environ.get("LENSLAB_ACCESS_TOKEN", "").strip():
        print(
            f"refusing to serve on {args.address!r} without an access token: set LENSLAB_ACCESS_TOKEN "
            "(users then open the app with ?token=...)",
            file=sys.stderr,
        )
        return 2
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_MAIN),
        "--server.address",
        args.address,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",
        "--server.maxUploadSize",
        "50",
    ]
    env = dict(os.environ)
    if args.model:
        env["LENSLAB_MODEL"] = args.model
    if not args.no_prepare:
        from lenslab.models.loading import DEFAULT_MODEL

        _prepare_in_background(DEFAULT_MODEL)
    os.execve(sys.executable, command, env)
    return 0  # pragma: no cover - execve does not return


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run (or resume) a sweep; progress on stderr, the report folder on stdout."""
    from lenslab.sweeps.runner import new_sweep_folder, resume, sweep

    def show(status) -> None:
        sys.stderr.write(f"\rsweep: {status.line()[:110]:<110}")
        sys.stderr.flush()

    backend = {"backend": args.backend, "workers": args.workers, "address": args.address}
    backend["gpus_per_worker"] = args.gpus_per_worker
    if args.resume:
        result = resume(args.resume, on_status=show, **backend)
        folder = Path(args.resume)
    else:
        if not args.probe or not args.source:
            raise ValueError("give a probe and --source (or --resume DIR)")
        folder = Path(args.out) if args.out else new_sweep_folder()
        result = sweep(
            args.probe,
            args.source,
            folder,
            models=args.model or (),
            config=args.config or (),
            grid=args.grid or (),
            limit=args.limit,
            shard_size=args.shard_size,
            max_tokens=args.max_tokens,
            dtype=args.dtype,
            imports=args.imports or (),
            title=args.title or "",
            on_status=show,
            **backend,
        )
    sys.stderr.write("\n")
    failed = result.failures()
    if failed:
        print(f"{len(failed)} item(s) failed (listed in the report), e.g. {failed[0][2]}", file=sys.stderr)
    print(folder / "report")
    return 0


def cmd_replicate(args: argparse.Namespace) -> int:
    """Re-run each seed paper's key check, print the table and save it as a report."""
    from lenslab.analyses.report import Report, report_meta
    from lenslab.models import ModelSession
    from lenslab.models.paths import reports_dir
    from lenslab.probes import get_probe

    probe = get_probe("replications")
    families = tuple(f.strip() for f in args.families.split(",") if f.strip()) if args.families else None
    config = probe.config_cls(mode="full" if args.full else "quick", families=families)
    config.check_numbers()
    session = ModelSession.load(args.model, device=args.device)
    config.validate(session)
    result = probe.run(session, "", config, _progress_printer("replicate"))
    for row in result.rows():
        print(" | ".join(row.values()))
    out = (
        Path(args.out)
        if args.out
        else reports_dir() / f"replications-{config.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    path = Report([result], report_meta([result], session, f"Replications ({config.mode})")).save(
        out, overwrite=args.overwrite
    )
    print(path)
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests)."""
    p = argparse.ArgumentParser(prog="lenslab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a probe and save its report")
    run.add_argument("probe")
    run.add_argument("--model", default=None, help="embedded name, HF id or local folder")
    run.add_argument("--prompt", required=True)
    run.add_argument("--config", action="append", metavar="KEY=VALUE")
    run.add_argument("--out", required=True, help="report folder to write")
    run.add_argument("--title", default=None)
    run.add_argument("--device", default=None)
    run.add_argument("--dtype", default="float32")
    run.add_argument("--overwrite", action="store_true")
    run.set_defaults(func=cmd_run)
    lst = sub.add_parser("list", help="probes, offline models, trained artefacts")
    lst.set_defaults(func=cmd_list)
    prep = sub.add_parser("prepare", help="convert the embedded model, build default artefacts")
    prep.add_argument("--model", default="gemma-3-270m")
    prep.add_argument("--skip-artefacts", action="store_true")
    prep.set_defaults(func=cmd_prepare)
    app = sub.add_parser("app", help="start the web app")
    app.add_argument("--address", default="localhost")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--model", default=None)
    app.add_argument("--no-prepare", action="store_true", help="don't build missing artefacts")
    app.set_defaults(func=cmd_app)
    jl = sub.add_parser("fit-jlens", help="fit the Jacobian lens (quick by default; --full: reference spec)")
    jl.add_argument("--model", default=None, help="embedded name, HF id or local folder")
    jl.add_argument("--full", action="store_true", help="128-token windows, ≥ 100 prompts until converged")
    jl.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop fitting after this long (default: no limit; the quick fit is prepare's prompt count)",
    )
    jl.add_argument("--checkpoint", default=None, help="state file to resume from and save to")
    jl.set_defaults(func=cmd_fit_jlens)
    swp = sub.add_parser("sweep", help="run probes over many prompts (locally or on Ray); resumable")
    swp.add_argument("probe", nargs="?", help="probe name(s), comma-separated")
    swp.add_argument(
        "--source", "--prompts", help="tasks:<set>, corpus:pydoc, or a .txt / .jsonl file of prompts"
    )
    swp.add_argument("--model", action="append", help="model spec (repeatable; tiny:<family> to try)")
    swp.add_argument("--config", action="append", metavar="KEY=VALUE")
    swp.add_argument("--grid", action="append", metavar="KEY=V1,V2")
    swp.add_argument("--limit", type=int, default=0, help="at most this many prompts")
    swp.add_argument("--shard-size", type=int, default=8)
    swp.add_argument("--max-tokens", type=int, default=512)
    swp.add_argument("--dtype", default="float32")
    swp.add_argument("--import", dest="imports", action="append", metavar="MODULE")
    swp.add_argument(
        "--out", default=None, help="sweep folder (default: a new one under LENSLAB_HOME/sweeps)"
    )
    swp.add_argument("--resume", default=None, metavar="DIR", help="finish the sweep in DIR")
    swp.add_argument("--backend", choices=("ray", "serial"), default="ray")
    swp.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per CPU / GPU)")
    swp.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    swp.add_argument("--gpus-per-worker", type=float, default=None)
    swp.add_argument("--title", default=None)
    swp.set_defaults(func=cmd_sweep)
    rep = sub.add_parser("replicate", help="re-run each seed paper's key check and save the table")
    size = rep.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, prepared artefacts (default)")
    size.add_argument("--full", action="store_true", help="the papers' sizes (hours on a CPU)")
    rep.add_argument("--families", default=None, help="comma-separated subset (default: all)")
    rep.add_argument("--model", default=None, help="embedded name, HF id or local folder")
    rep.add_argument("--device", default=None)
    rep.add_argument(
        "--out", default=None, help="report folder (default: a new one under the reports folder)"
    )
    rep.add_argument("--overwrite", action="store_true")
    rep.set_defaults(func=cmd_replicate)
    return p


def cmd_fit_jlens(args: argparse.Namespace) -> int:
    """Fit J̄ on the training documents and save the lens (resumable with --checkpoint)."""
    from lenslab.models import ModelSession
    from lenslab.probes.jacobian_lens import (
        PREPARE_SPEC,
        FitSpec,
        JacobianLens,
        fit_shard,
        training_documents,
    )
    from lenslab.probes.sae.corpus import corpus_texts

    session = ModelSession.load(args.model)
    spec = FitSpec() if args.full else PREPARE_SPEC
    texts = corpus_texts(spec.corpus)
    state = fit_shard(
        session,
        training_documents(len(texts)),
        spec,
        texts=texts,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        stop_when_converged=True,
        max_seconds=args.max_seconds,
        progress=_progress_printer("fit J-lens"),
    )
    path = JacobianLens.from_state(state).save()
    print(f"{state.n_prompts} prompts, {state.n_positions} positions, {state.seconds:.0f} s → {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"lenslab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lenslab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
