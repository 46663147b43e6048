"""Staging: the job's inputs in and its outputs out, several files at a time.

Each file moves in bounded chunks through ``AgentClient`` (which retries a
broken transfer and checks the sha256 the control plane recorded), so the
agent's memory does not grow with a file's size.  Outputs are declared as a
file, a directory (taken recursively, paths kept) or a glob (``*.h5``,
``results/**/*.csv``).  Progress goes to the job's events ("staged 1.2 of
3.4 GB") at most every ``report_every_s`` seconds.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from skyport.agent.client import AgentClient
from skyport.errors import ControlPlaneError, SkyportError, StorageError
from skyport.models import check_relative_path

__all__ = ["Progress", "StageOutResult", "expand_outputs", "human_bytes", "stage_in",
           "stage_out"]

log = logging.getLogger(__name__)
PARALLEL = 4  # files in flight at once: enough to fill a link, few enough for a small node
_GLOB_CHARS = frozenset("*?[")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # unreachable; for the type checker


class Progress:
    """Bytes moved so far out of ``total``, told to ``report`` now and then (thread-safe)."""

    def __init__(self, verb: str, total: int, report: Callable[[str], object],
                 every_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.verb = verb
        self.total = total
        self.done = 0
        self._report = report
        self._every_s = every_s
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = self._clock()
            if now - self._last < self._every_s:
                return
            self._last = now
            text = self.text()
        self._send(text)

    def text(self) -> str:
        return f"{self.verb} {human_bytes(self.done)} of {human_bytes(self.total)}"

    def finish(self) -> None:
        self._send(self.text())

    def _send(self, text: str) -> None:
        try:
            self._report(text)
        except SkyportError as exc:  # progress is a courtesy: never fail a transfer for it
            log.warning("could not report progress (%s): %s", text, exc)


@dataclass(frozen=True)
class StageOutResult:
    saved: tuple[str, ...]
    problems: tuple[str, ...]  # "missing outputs: ..." / "outputs not saved: ...", for exit


def expand_outputs(workdir: Path, outputs: Iterable[str]
                   ) -> tuple[list[tuple[str, Path]], list[str], list[str]]:
    """(files as (relative path, path), declared outputs that matched nothing, refused).

    A file that resolves outside ``workdir`` (a symlink out of it) is refused:
    an output never copies what the job's directory does not hold.
    """
    root = workdir.resolve()
    found: dict[str, Path] = {}
    missing: list[str] = []
    refused: list[str] = []
    for out in outputs:
        out = out.rstrip("/") or out
        if _GLOB_CHARS & set(out):
            hits = [Path(p) for p in sorted(glob.glob(out, root_dir=workdir, recursive=True))]
            candidates = [workdir / h for h in hits]
        else:
            candidates = [workdir / out] if (workdir / out).exists() else []
        files: list[Path] = []
        for c in candidates:
            if c.is_dir():
                files += sorted(p for p in c.rglob("*") if p.is_file())
            elif c.is_file():
                files.append(c)
        if not files:
            missing.append(out)
        for f in files:
            rel = f.relative_to(workdir).as_posix()
            if not f.resolve().is_relative_to(root):
                refused.append(rel)
                continue
            found[rel] = f
    return sorted(found.items()), missing, refused


def stage_in(client: AgentClient, workdir: Path, report: Callable[[str], object],
             parallel: int = PARALLEL) -> list[tuple[str, int]]:
    """The script and every input into ``workdir``, in parallel; (name, size) of each."""
    client.download("script.sh", workdir / "script.sh")
    listed = [f for f in client.files() if f.path.startswith("inputs/")]
    entries = [(f.path.removeprefix("inputs/"), f.path, f.size) for f in listed]
    for name, _, _ in entries:
        check_relative_path(name, "input")
    progress = Progress("staged in", sum(f.size for f in listed), report)

    def one(name: str, stored: str, listed_size: int) -> tuple[str, int]:
        dest = workdir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = client.download(stored, dest, progress.add, size=listed_size)
        log.info("staged in %s (%d bytes)", name, size)
        return name, size

    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="stage-in") as pool:
        got = list(pool.map(lambda e: one(*e), entries))
    if entries:
        progress.finish()
    return got


def stage_out(client: AgentClient, workdir: Path, outputs: Iterable[str],
              report: Callable[[str], object], parallel: int = PARALLEL, *,
              attempts: int = 3, backoff_s: float = 2.0,
              sleep: Callable[[float], None] = time.sleep,
              stored_as: Callable[[str], str] = lambda rel: f"outputs/{rel}",
              required: bool = True) -> StageOutResult:
    """Upload every declared output, in parallel; what was saved and what went wrong.

    ``stored_as`` names each file under the job's prefix (node k's go under
    ``outputs/nodes/<k>/``, ``skyport.agent.nodes``); ``required=False``: a
    declared output this node does not have is no problem.

    A control plane unreachable past the client's retries raises
    ``ControlPlaneError`` (the agent then has no one to report to).
    """
    files, missing, refused = expand_outputs(workdir, outputs)
    progress = Progress("staged out", sum(p.stat().st_size for _, p in files), report)
    failed: list[str] = []
    saved: list[str] = []

    def one(rel: str, path: Path) -> str | None:
        for attempt in range(1, attempts + 1):
            try:
                client.put_file(stored_as(rel), path, progress.add)
            except ControlPlaneError:
                raise
            except StorageError as exc:  # the storage's trouble may pass: try again
                if attempt == attempts:
                    return f"{rel} ({exc})"
                log.warning("saving %s failed (%s); try %d of %d", rel, exc, attempt + 1,
                            attempts)
                sleep(backoff_s * attempt)
            except (SkyportError, OSError) as exc:
                return f"{rel} ({exc})"
            else:
                log.info("staged out %s", rel)
                return None
        return f"{rel} (not saved)"  # attempts < 1

    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="stage-out") as pool:
        for (rel, _), problem in zip(files, pool.map(lambda f: one(*f), files), strict=True):
            if problem is None:
                saved.append(rel)
            else:
                failed.append(problem)
    if files:
        progress.finish()
    problems = []
    if refused:  # the agent reads as the control plane's user: a link out is an attack
        log.warning("refused outputs that resolve outside the working directory: %s", refused)
        problems.append("outputs refused (symbolic links out of the working directory): "
                        + ", ".join(refused))
    if missing and required:
        problems.append("missing outputs: " + ", ".join(missing))
    if failed:
        problems.append("outputs not saved: " + ", ".join(failed))
    return StageOutResult(tuple(saved), tuple(problems))
