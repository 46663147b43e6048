"""Command line of the timetable benchmark.

  python -m benchmarks.timetable --trace T.swf --policy easy [--json]
  python -m benchmarks.timetable --trace T.swf --policy easy --windows 10 --window-len 1024 --seed 1
  python -m benchmarks.timetable --trace T.swf --policy conservative --overcommit
  python -m benchmarks.timetable compare --trace T.swf [--trace ...] --out results/ [--windows 10]
  python -m benchmarks.timetable speed --trace T.swf [--queued 10000 --running 1000 --repeats 3]
  python -m benchmarks.timetable multigate --trace T.swf --policy easy \
      [--pools cheap:100:0.03:600,fast:100:0.10:60] [--prefer cost] [--slack 5 | --baseline] \
      [--windows 3 --window-len 1024 --seed 1] [--json]

Bad input gives a one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from benchmarks.timetable.swf import TraceError, read_swf
from skyport.timetable import UnknownPolicyError, known_policies

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fail(message)


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _positive(name: str):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            _fail(f"{name}: {text!r} is not an integer; give a whole number > 0")
        if value <= 0:
            _fail(f"{name}: {value} is not allowed; give a whole number > 0")
        return value

    return parse


def _policy(text: str) -> str:
    known = known_policies()
    if text not in known:
        _fail(f"--policy: {text!r} is not a known policy; known policies: {', '.join(known)}")
    return text


def _slack(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        _fail(f"--slack: {text!r} is not a number; give a number >= 1")
    if not value >= 1 or value == float("inf"):
        _fail(f"--slack: {text} is not allowed; give a number >= 1")
    return value


def _parser(command: str) -> _Parser:
    parser = _Parser(prog=f"python -m benchmarks.timetable{' ' + command if command else ''}")
    parser.add_argument("--trace", action="append", required=True, help="SWF trace file")
    if command == "":
        parser.add_argument("--policy", type=_policy, default="easy")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--overcommit",
            action="store_true",
            help="treat processors of jobs past their requested time as free (not the product)",
        )
    if command == "multigate":
        from benchmarks.timetable.multigate import DEFAULT_POOLS

        parser.add_argument("--policy", type=_policy, default="easy")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--pools", default=DEFAULT_POOLS,
                            help="name:capacity:price per processor-hour:boot_s, comma-separated")
        parser.add_argument("--prefer", choices=("time", "cost"), default="cost")
        parser.add_argument("--slack", type=_slack, default=None,
                            help="deadline = submit + fastest boot + SLACK x requested time")
        parser.add_argument("--baseline", action="store_true",
                            help="the fastest pool alone, no preference, no deadline")
    if command in ("", "compare", "multigate"):
        parser.add_argument("--windows", type=_positive("--windows"), default=0)
        parser.add_argument("--window-len", type=_positive("--window-len"), default=1024)
        parser.add_argument("--seed", type=int, default=1)
    if command == "compare":
        parser.add_argument("--out", required=True, help="folder for the table and plots")
        parser.add_argument("--policy", type=_policy, action="append", help="default: all")
    if command == "speed":
        parser.add_argument("--queued", type=_positive("--queued"), default=10_000)
        parser.add_argument("--running", type=_positive("--running"), default=1_000)
        parser.add_argument("--repeats", type=_positive("--repeats"), default=3)
        parser.add_argument("--policy", type=_policy, action="append", help="default: all")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("compare", "speed", "multigate") else ""
    args = _parser(command).parse_args(argv[1:] if command else argv)
    try:
        traces = [read_swf(path) for path in args.trace]
        if command == "compare":
            from benchmarks.timetable.compare import compare

            compare(traces, args.out, args.policy, args.windows, args.window_len, args.seed)
            return 0
        if command == "speed":
            from benchmarks.timetable.speed import speed

            report = speed(traces, args.policy, args.queued, args.running, args.repeats)
            print(json.dumps(report, indent=1))
            return 0
        if len(traces) != 1:
            _fail(f"--trace: given {len(traces)} times; a single run takes exactly one trace")
        result: dict[str, Any]
        if command == "multigate":
            from benchmarks.timetable.multigate import parse_pools, run_multigate

            result = run_multigate(
                traces[0], args.policy, parse_pools(args.pools), prefer=args.prefer,
                slack=args.slack, baseline=args.baseline, windows=args.windows,
                window_len=args.window_len, seed=args.seed)
            print(json.dumps(result) if args.json else "\n".join(
                f"{k:>24}  {v:.6g}" if isinstance(v, float) else f"{k:>24}  {v}"
                for k, v in result.items()))
            return 0
        from benchmarks.timetable.run import run_policy

        result = run_policy(
            traces[0],
            args.policy,
            windows=args.windows,
            window_len=args.window_len,
            seed=args.seed,
            overcommit=args.overcommit,
        )
    except (TraceError, UnknownPolicyError) as exc:
        _fail(str(exc))
    except ValueError as exc:
        if str(exc).startswith("--"):
            _fail(str(exc))
        raise
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}  {value:.6g}" if isinstance(value, float) else f"{key:>24}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
