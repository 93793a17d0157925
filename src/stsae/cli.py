"""`stsae` command line: one subcommand per pipeline stage, plus `run` for all of them.

Every option is a config override (`--set section.key=value`); the config file is the single source of
truth. User errors (bad config, missing inputs, a locked run directory) print one line and exit 2.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from stsae.config import Config, load_config
from stsae.errors import StsaeError
from stsae.pipeline.lock import run_lock
from stsae.pipeline.runner import STAGES, StageContext, StageEntry, run_stages
from stsae.pipeline.safety import claim_run_dir, environment_error_message
from stsae.rundir import RunDir
from stsae.stages import train
from stsae.utils.dist import is_main_process
from stsae.utils.logs import setup_logging

app = typer.Typer(
    help="ST-SAE: sparse, temporally coherent PPG concepts on PaPaGei-S embeddings, and vascular age.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("stsae.cli")
# A full disk, a quota or a read-only run directory is the user's to fix, not a bug: one line, exit 2.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: built-in defaults).")]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default: runs/<run.name>).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: section.key=value.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rerun even if inputs and config are unchanged.")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging (-vv: debug).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings only, no progress bars.")]
BreakLockOpt = Annotated[bool, typer.Option(
    "--break-lock", help="Take the run lock even if a process on another host holds it (only once that run ended).")]


def _resolve(config_path: Path | None, overrides: list[str] | None, run_dir: Path | None) -> tuple[Config, RunDir]:
    config = load_config(config_path, overrides or [])
    return config, RunDir(run_dir or Path("runs") / config.run.name)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn user-fixable errors into one line on stderr and exit code 2."""
    try:
        yield
    except (StsaeError, FileNotFoundError) as exc:
        logging.getLogger("stsae").debug("user error", exc_info=True)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        logging.getLogger("stsae").debug("environment error", exc_info=True)
        typer.echo(f"error: {environment_error_message(exc)}", err=True)
        raise typer.Exit(2) from None


def _await_claim(paths: RunDir, timeout_s: float = 300.0) -> None:
    """Another torchrun rank waits until rank 0 has claimed the run directory (its lock file exists).

    Why: a rank that starts logging or fingerprinting first writes into a fresh directory, and rank 0's
    claim then refuses it as a non-empty directory that is not a run directory."""
    deadline = time.monotonic() + timeout_s
    while not paths.lock.exists():
        if time.monotonic() > deadline:
            raise StsaeError(f"{paths.root}: rank 0 did not claim the run directory within {timeout_s:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def _session(config: Config, paths: RunDir, force: bool, verbose: int, quiet: bool,
             break_lock: bool = False) -> Iterator[StageContext]:
    """Claim the run directory, start logging and hold the run lock while the caller works in it."""
    if is_main_process():
        claim_run_dir(paths, force)
    else:
        _await_claim(paths)
    setup_logging(-1 if quiet else verbose, paths.log)
    lock = run_lock(paths.lock, break_lock) if is_main_process() else contextlib.nullcontext()
    with lock:
        yield StageContext(config, paths, fingerprint="", force=force)


def _execute(stage_names: list[str], config_path: Path | None, overrides: list[str] | None,
             run_dir: Path | None, force: bool, verbose: int, quiet: bool,
             partial: dict[str, StageEntry] | None = None, break_lock: bool = False) -> RunDir:
    with _user_errors():
        config, paths = _resolve(config_path, overrides, run_dir)
        with _session(config, paths, force, verbose, quiet, break_lock) as ctx:
            run_stages(ctx, stage_names, partial)
    return paths


def _stage_command(stage_name: str, help_text: str, command_name: str | None = None) -> None:
    def command(config: ConfigOpt = None, run_dir: RunDirOpt = None, set_: SetOpt = None,
                force: ForceOpt = False, verbose: VerboseOpt = 0, quiet: QuietOpt = False,
                break_lock: BreakLockOpt = False) -> None:
        _execute([stage_name], config, set_, run_dir, force, verbose, quiet, break_lock=break_lock)

    command.__doc__ = help_text
    app.command(name=command_name or stage_name, help=help_text)(command)


for _stage in STAGES:
    if _stage.name != "train":
        _stage_command(_stage.name, _stage.help)
_stage_command("prepare", "Alias of `prepare` (the synthetic cohort is the default source).", "simulate")


@app.command(name="train")
def train_command(
    config: ConfigOpt = None, run_dir: RunDirOpt = None, set_: SetOpt = None, force: ForceOpt = False,
    verbose: VerboseOpt = 0, quiet: QuietOpt = False, break_lock: BreakLockOpt = False,
    only: Annotated[str | None, typer.Option(
        "--only", help="Comma-separated filter of grid entries, e.g. 'full,K=4096' or 'vanilla,seed=1'.")] = None,
) -> None:
    """Train the ST-SAE grid: full, five ablations, K-sweep, seeds (finished models are skipped)."""
    tokens = [part.strip() for part in only.split(",")] if only else []
    partial: dict[str, StageEntry] = {"train": functools.partial(train.run, only=tokens)} if tokens else {}
    _execute(["train"], config, set_, run_dir, force, verbose, quiet, partial, break_lock)


@app.command(name="run")
def run_command(config: ConfigOpt = None, run_dir: RunDirOpt = None, set_: SetOpt = None,
                force: ForceOpt = False, verbose: VerboseOpt = 0, quiet: QuietOpt = False,
                break_lock: BreakLockOpt = False) -> None:
    """Run every stage in order; unchanged stages are skipped. Ends with the report path and headlines."""
    paths = _execute([s.name for s in STAGES], config, set_, run_dir, force, verbose, quiet, break_lock=break_lock)
    if is_main_process():
        from stsae.report.headline import headline_lines

        with _user_errors():
            for line in headline_lines(paths):
                typer.echo(line)



def _apply(source: Path, config_path: Path | None, overrides: list[str] | None, run_dir: Path | None,
           force: bool, verbose: int, quiet: bool, break_lock: bool, transfer: bool) -> None:
    from stsae.apply.run import apply_run, checked_source

    with _user_errors():
        config, paths = _resolve(config_path, overrides, run_dir)
        checked = checked_source(source, config, paths)  # refused before the run directory is touched
        with _session(config, paths, force, verbose, quiet, break_lock=break_lock) as ctx:
            apply_run(ctx, checked, transfer=transfer)
    if is_main_process():
        typer.echo(f"Report: {paths.report_html}")


@app.command(name="apply")
def apply_command(
    from_run: Annotated[Path, typer.Option("--from-run", help="Finished run directory A whose models are applied.")],
    config: ConfigOpt = None, run_dir: RunDirOpt = None, set_: SetOpt = None, force: ForceOpt = False,
    verbose: VerboseOpt = 0, quiet: QuietOpt = False, break_lock: BreakLockOpt = False,
    transfer: Annotated[bool, typer.Option("--transfer", help="Also write transfer.json (`stsae transfer`).")] = False,
) -> None:
    """Prepare and extract a new cohort with run A's settings, then apply A's frozen concepts and age model."""
    _apply(from_run, config, set_, run_dir, force, verbose, quiet, break_lock, transfer)


@app.command(name="transfer")
def transfer_command(
    source: Annotated[Path, typer.Option("--source", help="Finished run directory A (the source site).")],
    target_config: Annotated[Path | None, typer.Option("--target-config", help="YAML config of cohort B.")] = None,
    run_dir: RunDirOpt = None, set_: SetOpt = None, force: ForceOpt = False, verbose: VerboseOpt = 0,
    quiet: QuietOpt = False, break_lock: BreakLockOpt = False,
) -> None:
    """`apply` plus transfer.json: A's age model vs a refit on B, Δage odds ratios, concept firing shift."""
    _apply(source, target_config, set_, run_dir, force, verbose, quiet, break_lock, transfer=True)
