"""Job commands: submit, jobs, show, logs, wait, cancel, fetch."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from skyport.cli import render
from skyport.cli.app import Output, cli, command, get_client
from skyport.cli.progress import ProgressBars
from skyport.errors import NotFoundError, ValidationError
from skyport.models import Job, JobState
from skyport.options import OPTIONS, input_url
from skyport.protocol import ArrayView
from skyport.script import build_spec, cli_directives
from skyport.units import format_duration

FOLLOW_POLL_S = 1.0  # how often ``logs -f`` asks for more when the server cannot wait
FOLLOW_WAIT_S = 10.0  # how long the server may hold one ``logs -f`` call


def _now() -> datetime:
    return datetime.now(UTC)


def _submit_options(fn: Any) -> Any:
    """One click option per row of the option table: the directive's name and help.

    Each option's parameter name is the table's Python argument, the keyword
    ``@skyport.job`` takes for it.
    """
    for opt in reversed(list(OPTIONS.values())):
        fn = click.option(
            f"--{opt.directive}",
            opt.argument,
            multiple=opt.repeatable,
            default=None,
            help=opt.help,
            metavar="VALUE",
        )(fn)
    return fn


@command(cli, "submit")
@click.argument("script", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@_submit_options
def submit_cmd(out: Output, script: str, **options: Any) -> None:
    """Submit a job script; command-line options override its #SKYPORT directives."""
    if script == "-":
        raw, base_dir = sys.stdin.buffer.read(), Path.cwd()
    else:
        raw, base_dir = Path(script).read_bytes(), Path(script).resolve().parent
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError("script", f"{script} (byte {exc.start}: {raw[exc.start]:#04x})",
                              "a UTF-8 text file") from None
    pairs: list[tuple[str, str]] = []
    for opt in OPTIONS.values():
        value = options.get(opt.argument)
        if opt.repeatable:
            if opt.kind == "url":  # a plain path on the command line is relative to here
                value = [input_url(v, Path.cwd()) for v in value or ()]
            pairs.extend((opt.directive, v) for v in value or ())
        elif value is not None:
            pairs.append((opt.directive, value))
    spec = build_spec(text, cli_directives(pairs), base_dir=base_dir)
    with ProgressBars() as bars:
        if spec.array is not None:  # one call, one record, a task per index
            view = get_client().submit_array(spec, progress=bars.update)
            out.emit(view.model_dump(mode="json", exclude={"indices"}), view.id)
            return
        job = get_client().submit(spec, progress=bars.update)
    out.emit(job.summary(), job.id)


@command(cli, "jobs")
@click.option("--all", "all_", is_flag=True, help="everyone's jobs (admins)")
@click.option(
    "--state",
    "states",
    multiple=True,
    metavar="STATE",
    type=click.Choice([s.value for s in JobState], case_sensitive=False),
    help="only jobs in this state (repeatable)",
)
@click.option("--expand", is_flag=True, help="a row per array task, not one per array")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="the newest N jobs, newest first (an array's tasks count one each)")
def jobs_cmd(out: Output, all_: bool, states: tuple[str, ...], expand: bool,
             limit: int | None) -> None:
    """List jobs; a job array is one row with its tasks counted per state."""
    jobs = get_client().jobs(all=all_, states=[s.upper() for s in states], limit=limit,
                             newest=limit is not None)
    now = _now()
    items: list[Any] = list(jobs) if expand else render.group_arrays(jobs)
    out.emit(
        [x.summary() for x in items],
        lambda: render.table(render.JOB_HEADERS, render.listing_rows(items, now))
        if items else "no jobs",
    )


@command(cli, "show")
@click.argument("job_id")
def show_cmd(out: Output, job_id: str) -> None:
    """A job's fields, event history and stored files."""
    client = get_client()
    try:
        job = client.job(job_id)
    except NotFoundError:
        try:  # an array's id: the array, its tasks counted per state
            view = client.array(job_id)
        except NotFoundError:
            raise NotFoundError(f"no job {job_id}") from None
        out.emit(view.model_dump(mode="json"), lambda: _array_text(view))
        return
    files = client.files(job_id)
    document = {**job.summary(), "files": [f._asdict() for f in files]}
    out.emit(document, lambda: _show_text(job, files))


def _array_text(view: ArrayView) -> str:
    return render.key_values([
        ("array", view.id),
        ("name", view.name),
        ("owner", view.owner),
        ("indices", view.array),
        ("tasks", view.task_count),
        ("at most running", view.throttle),
        ("states", " ".join(f"{k.value}:{v}" for k, v in view.counts.items())),
        ("task ids", f"{view.id}_<index>, e.g. {view.task_ids()[0]}" if view.indices else None),
    ])


def _show_text(job: Job, files: list[Any]) -> str:
    now = _now()
    res, lay = job.spec.resources, job.spec.layout
    fields = [
        ("id", job.id),
        ("name", job.name),
        ("owner", job.owner),
        ("kind", job.spec.kind),
        ("state", job.state.value),
        ("reason", job.reason or None),
        ("waits", f"{job.wait_reason}: {job.wait_detail}" if job.wait_reason else None),
        ("held", True if job.held else None),
        ("dependency", job.spec.dependency),
        ("exit code", job.exit_code),
        (
            "resources",
            f"{res.nodes} node(s) x {res.cpus_per_node} cpus"
            + (f", {res.mem_mb} MB" if res.mem_mb else "")
            + (f", {res.gpus_per_node} gpus" if res.gpus_per_node else "")
            + f", time limit {format_duration(res.time_limit_s)}",
        ),
        (
            "layout",
            f"{lay.ranks_per_node} rank(s)/node x {job.spec.threads_per_rank} "
            f"thread(s)/rank, {lay.mpi}",
        ),
        ("gate", job.gate),
        ("flavor", job.flavor),
        ("price", f"{job.price_per_hour:.4f}/h" if job.price_per_hour is not None else None),
        ("cost so far", f"{c:.4f}" if (c := job.cost(now)) is not None else None),
        ("nodes", ", ".join(job.node_names) or None),
        ("submitted", render.format_when(job.submitted_at, now)),
        (
            "planned start",
            render.format_when(job.planned_start_at, now) if job.planned_start_at else None,
        ),
        ("started", render.format_when(job.started_at, now) if job.started_at else None),
        ("ended", render.format_when(job.ended_at, now) if job.ended_at else None),
        ("eta/elapsed", render.timing(job, now)),
        ("restarts", job.restarts),
    ]
    parts = [render.key_values(fields), "", "events:"]
    if job.events:
        parts.append(
            render.table(
                ("TIME", "STATE", "REASON"),
                [(render.format_when(e.time, now), e.state.value, e.reason) for e in job.events],
            )
        )
    else:
        parts.append("(none)")
    parts += ["", "files:"]
    if files:
        parts.append(
            render.table(("PATH", "SIZE"), [(f.path, render.format_size(f.size)) for f in files])
        )
    else:
        parts.append("(none)")
    return "\n".join(parts)


@command(cli, "logs")
@click.argument("job_id")
@click.option("--stderr", "use_stderr", is_flag=True, help="the error stream instead of stdout")
@click.option("-f", "--follow", is_flag=True, help="keep printing until the job ends")
def logs_cmd(out: Output, job_id: str, use_stderr: bool, follow: bool) -> None:
    """Print a job's output (stdout, or stderr with --stderr)."""
    client = get_client()
    stream = "stderr" if use_stderr else "stdout"
    collected: list[bytes] = []
    offset = 0
    state = JobState.QUEUED
    size = 0
    while True:
        asked = time.monotonic()
        # following: the server holds the call until the next append or state report
        chunk = client.logs(job_id, stream, offset, wait_s=FOLLOW_WAIT_S if follow else 0.0)
        state, size = chunk.state, chunk.size
        if chunk.data:
            offset += len(chunk.data)
            if out.json:
                collected.append(chunk.data)
            else:
                click.echo(chunk.data, nl=False)
        if offset >= chunk.size and (not follow or chunk.state.is_terminal()):
            break
        if not chunk.data and time.monotonic() - asked < FOLLOW_POLL_S:
            time.sleep(FOLLOW_POLL_S)  # answered at once with nothing new: a busy server
    if out.json:
        out.emit(
            {
                "job_id": job_id,
                "stream": stream,
                "size": size,
                "state": state.value,
                "text": b"".join(collected).decode("utf-8", errors="replace"),
            },
            "",
        )


@command(cli, "wait")
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, metavar="S", help="give up after S seconds")
def wait_cmd(out: Output, job_id: str, timeout: float | None) -> None:
    """Block until a job ends; exit status 0 only if it SUCCEEDED."""
    job = get_client().wait(job_id, timeout=timeout)
    text = f"{job.id} {job.state.value}" + (f": {job.reason}" if job.reason else "")
    out.emit(job.summary(), text)
    if job.state is not JobState.SUCCEEDED:
        click.get_current_context().exit(1)


@command(cli, "cancel")
@click.argument("job_ids", nargs=-1)
@click.option("--checkpoint", is_flag=True, help="store a last checkpoint first (one job)")
@click.option("--state", "states", multiple=True, type=click.Choice(
    [s.value for s in JobState if not s.is_terminal()], case_sensitive=False),
    help="only your jobs in this state (repeatable)")
@click.option("--name", default=None, help="only your jobs whose name matches (e.g. 'sweep-*')")
@click.option("--all", "all_mine", is_flag=True, help="every job of yours that is not over")
def cancel_cmd(out: Output, job_ids: tuple[str, ...], checkpoint: bool, states: tuple[str, ...],
               name: str | None, all_mine: bool) -> None:
    """Cancel jobs (their clusters are torn down): IDs, or your jobs by --state/--name/--all."""
    client = get_client()
    if checkpoint or (len(job_ids) == 1 and not (states or name or all_mine)):
        if len(job_ids) != 1 or states or name or all_mine:
            raise click.UsageError("--checkpoint takes exactly one job id and no filter")
        try:
            job = client.cancel_after_checkpoint(job_ids[0]) if checkpoint \
                else client.cancel(job_ids[0])
        except NotFoundError:
            if checkpoint:
                raise
            # maybe an array's id: the bulk call cancels every task of it
            answer = client.cancel_many(job_ids)
            if answer.not_found:
                raise
            out.emit(answer.model_dump(mode="json"),
                     f"cancelled {len(answer.cancelled)} job(s)")
            return
        out.emit(job.summary(), f"{job.id} {job.state.value}")
        return
    if not (job_ids or states or name or all_mine):
        raise click.UsageError("name job ids, or select with --state, --name or --all")
    answer = client.cancel_many(job_ids, states=[s.upper() for s in states] or None,
                                name=name, all=all_mine)

    def text() -> str:
        lines = [f"cancelled {len(answer.cancelled)} job(s)"]
        if answer.already_ended:
            lines.append("already over: " + " ".join(answer.already_ended))
        if answer.not_found:
            lines.append("no such job: " + " ".join(answer.not_found))
        return "\n".join(lines)

    out.emit(answer.model_dump(mode="json"), text)


@command(cli, "hold")
@click.argument("job_id")
def hold_cmd(out: Output, job_id: str) -> None:
    """Keep a queued job out of planning until 'skyport release' (as scontrol hold)."""
    job = get_client().hold(job_id)
    out.emit(job.summary(), f"{job.id} {job.state.value} (held)")


@command(cli, "release")
@click.argument("job_id")
def release_cmd(out: Output, job_id: str) -> None:
    """Put a held job back in the queue."""
    job = get_client().release(job_id)
    out.emit(job.summary(), f"{job.id} {job.state.value}")


@command(cli, "fetch")
@click.argument("job_id")
@click.argument("dest", required=False, type=click.Path(file_okay=False))
@click.option("--only", "prefix", default="", metavar="PREFIX",
              help="only the files under PREFIX, e.g. outputs/")
def fetch_cmd(out: Output, job_id: str, dest: str | None, prefix: str) -> None:
    """Download a job's stored files into DEST (default ./<id>/): checked, resumable."""
    target = Path(dest) if dest else Path(job_id)
    with ProgressBars() as bars:
        written = get_client().fetch(job_id, target, bars.update, prefix)
    out.emit(
        {"job_id": job_id, "dest": str(target), "files": [str(p) for p in written]},
        lambda: "\n".join(str(p) for p in written) if written else f"job {job_id} has no files",
    )
