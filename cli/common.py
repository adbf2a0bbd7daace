"""What the commands of the CLI share: exit codes, error lines, output, job progress.

Exit codes of every command that talks to the REST API (the ``tree`` and ``cluster``
commands use 0 to 3 alike, for the root's gRPC endpoint):

    0  success
    1  some job failed (or timed out), or the API failed (5xx)
    2  bad usage or bad input, including a 4xx the API answered; one line on stderr
    3  the API does not answer; one line on stderr
    4  not logged in, token expired or refused (401), or the role may not do this (403)
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cloudland.errors import (ApiUnreachable, CloudLandError, ConfigError, Forbidden, InvalidRequest, Overloaded,
                              Unauthorized)
from cloudland_cli.restclient import PAGE_SIZE, ApiClient

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 1, 2, 3, 4
TERMINAL_STATES = ("succeeded", "failed", "timeout")
POLL_S = 0.3
UNREACHABLE_WAIT_S = 120.0  # how long a wait for jobs outlasts an API that does not answer
SHOWN_REASONS = 10
_STATE_STYLE = {"succeeded": "green", "running": "green", "active": "green", "pending": "cyan",
                "dispatched": "cyan", "building": "cyan", "queued": "cyan", "stopped": "yellow",
                "deleting": "yellow", "up": "green", "removed": "dim", "OK": "green", "SLOW": "yellow",
                "STARTING": "cyan"}

out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)


def fail(code: int, message: str) -> NoReturn:
    """Print ``cloudland: MESSAGE`` as one line on stderr and exit with ``code``."""
    typer.echo("cloudland: " + " ".join(message.split()), err=True)
    raise typer.Exit(code)


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn errors.py exceptions into one stderr line and the exit codes above."""
    try:
        yield
    except (ApiUnreachable, Overloaded) as exc:  # Overloaded: still 429 after the client's retries
        fail(EXIT_UNREACHABLE, str(exc))
    except (Unauthorized, Forbidden) as exc:
        fail(EXIT_AUTH, str(exc))
    except (InvalidRequest, ConfigError) as exc:
        fail(EXIT_USAGE, str(exc))
    except CloudLandError as exc:
        fail(EXIT_FAILED, str(exc))


@contextmanager
def connect(require_token: bool = True) -> Iterator[ApiClient]:
    """A client from the stored config, inside ``api_errors``."""
    with api_errors():
        client = ApiClient.from_config(require_token=require_token)
        with client:
            yield client


def confirmed(question: str, what: str, yes: bool) -> bool:
    """True when ``--yes`` was given or the user answers yes on a terminal; with no terminal to ask
    on and no ``--yes``, InvalidRequest (one line, exit 2 under ``api_errors``) naming ``what``."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise InvalidRequest(f"stdin is not a terminal to confirm on: pass --yes to {what}")
    return typer.confirm(question, default=False, err=True)


def delete_asked(client: Any, kind: str, item: dict[str, Any], path: str, yes: bool) -> None:
    """DELETE ``path`` (the ``kind`` ``item``, named in the question) once ``confirmed``; else
    fail, saying it was not deleted."""
    if not confirmed(f"Delete {kind} {item['name']}?", f"delete {kind} {item['name']}", yes):
        fail(EXIT_FAILED, f"{kind} {item['name']} not deleted")
    client.delete(path)
    out.print(f"{kind} {item['id']} {item['name']} deleted")


def print_json(value: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(value, indent=None, default=str) + "\n")


def styled(word: str | None) -> Text:
    """A state or status word in its colour (unknown words red)."""
    text = word or "-"
    return Text(text, style=_STATE_STYLE.get(text, "red" if word else ""))


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
                whole: Sequence[str] = ()) -> None:
    """A Rich table of ``rows`` (Text cells keep their style; others become str).

    The ``whole`` columns (ids to paste into the next command) are never cut or wrapped, however
    narrow the terminal: the other columns wrap and shrink instead (issue 16).
    """
    cells = [[cell if isinstance(cell, Text) else Text("-" if cell is None else str(cell)) for cell in row]
             for row in rows]
    table = Table(title=title)
    for i, column in enumerate(columns):
        if column in whole:
            width = max([len(column), *(cell.cell_len for row in cells for cell in row[i:i + 1])])
            table.add_column(column, no_wrap=True, min_width=width)
        else:
            table.add_column(column)
    for row in cells:
        table.add_row(*row)
    out.print(table)


def print_record(record: dict[str, Any]) -> None:
    """One resource as a two-column grid."""
    grid = Table.grid(padding=(0, 2))
    for key, value in record.items():
        grid.add_row(Text(key, style="bold"), styled(value) if key in ("status", "state") else Text(str(value)))
    out.print(grid)


def all_pages(client: ApiClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, following ``next_after`` page by page."""
    return list(client.iter_after(path, **params))


def print_page(items: list[dict[str, Any]]) -> None:
    """A whole list as ``--json`` prints it: the API's page shape, every page followed (issue 16)."""
    print_json({"items": items, "limit": PAGE_SIZE, "next_after": None})


@dataclass
class BatchOutcome:
    """How the jobs of one or more batches ended."""

    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return self.counts["failed"] + self.counts["timeout"]


def batch_counts(client: ApiClient, batch: str) -> Counter[str]:
    """Jobs of ``batch`` per state (``GET /jobs?batch=..&limit=1`` counts)."""
    page = client.get("/jobs", batch=batch, limit=1)
    return Counter({k: int(v) for k, v in (page.get("counts") or {}).items()})


def watch_batches(client: ApiClient, batches: Sequence[str], total: int, label: str, show: bool = True) -> BatchOutcome:
    """Poll the batches' counts with a progress bar (stderr) until every job is terminal."""
    # Imported here: only commands that wait for jobs draw a bar (issue 16, start-up time).
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
               TimeElapsedColumn())
    outcome = BatchOutcome()
    with Progress(*columns, console=err, transient=True, disable=not show) as progress:
        task = progress.add_task(label, total=total, detail="")
        unreachable_since: float | None = None
        while True:
            counts: Counter[str] = Counter()
            try:
                for batch in batches:
                    counts.update(batch_counts(client, batch))
            except ApiUnreachable:
                # The jobs live in the API's database, not in this process: an API that is
                # restarting (its supervisor, issue 15) is waited for, up to a point.
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_WAIT_S:
                    raise
                progress.update(task, detail="the API does not answer; waiting for it")
                time.sleep(POLL_S)
                continue
            unreachable_since = None
            done = sum(counts[s] for s in TERMINAL_STATES)
            failed = counts["failed"] + counts["timeout"]
            progress.update(task, completed=done, detail=f"{failed} failed" if failed else "")
            if done >= total:
                break
            time.sleep(POLL_S)
    outcome.counts = counts
    if outcome.failed:
        for batch in batches:
            for state in ("failed", "timeout"):
                for job in client.iter_after("/jobs", page_size=200, batch=batch, state=state):
                    outcome.reasons[job.get("reason") or state] += 1
    return outcome


def print_outcome(outcome: BatchOutcome, verb: str, elapsed: float) -> None:
    """``N succeeded, M failed`` and the distinct reasons, most common first."""
    line = Text(f"{outcome.counts['succeeded']} {verb}", style="green")
    if outcome.failed:
        line.append(f", {outcome.failed} failed", style="red")
    out.print(line.append(f" in {elapsed:.1f} s", style=""))
    for reason, n in outcome.reasons.most_common(SHOWN_REASONS):
        out.print(f"  {n} × {reason}")
    if len(outcome.reasons) > SHOWN_REASONS:
        out.print(f"  … and {len(outcome.reasons) - SHOWN_REASONS} more reasons")


def wait_job(client: ApiClient, job_id: str, show: bool = True) -> dict[str, Any]:
    """Long-poll ``GET /jobs/{id}?wait=`` until the job is terminal; shown, a spinner with the
    job's action, state and time so far (a capture may take minutes), refreshed every 2 s."""
    started = time.monotonic()
    with err.status(f"job {job_id}…") if show else _nothing() as status:
        while True:
            job: dict[str, Any] = client.get(f"/jobs/{job_id}", wait=2 if show else 30)
            if job["state"] in TERMINAL_STATES:
                return job
            if status is not None:
                status.update(f"job {job_id}: {job['action']} {job['state']}, "
                              f"{time.monotonic() - started:.0f} s…")


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def job_subject(job: dict[str, Any]) -> str:
    """What a job changes, as ``instance 12`` or ``image 3`` (its subject_type and subject_id)."""
    return f"{job['subject_type']} {job['subject_id']}"


def job_record(job: dict[str, Any]) -> dict[str, Any]:
    """A job as ``job show`` prints it: its subject in one line, where subject_type, subject_id and
    instance_id (None unless the subject is an instance) stood."""
    record: dict[str, Any] = {}
    for key, value in job.items():
        if key == "subject_type":
            record["subject"] = job_subject(job)
        elif key not in ("subject_id", "instance_id"):
            record[key] = value
    return record


def finish_job(job: dict[str, Any], as_json: bool) -> None:
    """Print a terminal job; exit 1 unless it succeeded."""
    if as_json:
        print_json(job)
    else:
        reason = f": {job['reason']}" if job.get("reason") else ""
        out.print(Text(f"job {job['id']} {job['action']} {job_subject(job)} ").append(
            styled(job["state"])).append(reason))
    if job["state"] != "succeeded":
        raise typer.Exit(EXIT_FAILED)
