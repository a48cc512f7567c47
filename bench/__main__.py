"""`python -m bench`: run the benchmarks and print one table.

    python -m bench                 # everything, about 5-10 minutes on 2 cores
    python -m bench --write         # the same, and write the table to docs/benchmarks.md
    python -m bench --quick         # a smoke run of everything, a minute or two
    python -m bench --only webhook  # one benchmark (repeatable)
    python -m bench --profile DIR   # run the app under pyinstrument, one report per app run

Only --write (on a full run) replaces docs/benchmarks.md, so trying the benchmarks never
changes a tracked file; --output writes the table anywhere else. Work files and the cache
of slow-to-build fixtures live in .cache/bench/ inside the repository (ignored by git).
The exit status is non-zero only if a benchmark could not run; a missed goal is a FAIL in
the table, not an error.
"""

from __future__ import annotations

import argparse
import gc
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from bench import bulkorder, delivery, flashsale, keyimport, memory, paytokey, webhook
from bench.harness import REPO, Context, Machine, Row, failed_row
from store.crypto import KeyVault

BENCHMARKS = {
    m.NAME: m for m in (webhook, delivery, paytokey, flashsale, keyimport, bulkorder, memory)
}
DOC = REPO / "docs" / "benchmarks.md"
WORK = REPO / ".cache" / "bench"
CACHE = WORK / "cache"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.write and (args.quick or args.only or args.profile):
        parser.error(
            "--write needs a full run: a smoke, partial or profiled run must not replace the figures"
        )
    # The fake Bot API runs in this process and stamps each message as it handles it. A full
    # garbage collection over thousands of recorded messages stalls it for tens of
    # milliseconds, bunching arrivals into one second and answering 429s that are an
    # artifact of the instrument, not of the app: keep the collector out of the way.
    gc.freeze()
    gc.set_threshold(200_000, 50, 1000)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The in-process webhook run logs through this process: its 429 retries are expected.
    logging.getLogger("telegram").setLevel(logging.CRITICAL)
    return uvloop.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    machine = Machine.now()
    chosen = args.only or list(BENCHMARKS)
    WORK.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=WORK))
    ctx = Context(
        quick=args.quick,
        workdir=workdir,
        cache=CACHE,
        key_secret=KeyVault.generate(),
        profile_dir=args.profile,
    )
    rows: list[Row] = []
    timings: list[str] = []
    began = time.monotonic()
    print(f"keyvend bench on {machine.describe()}", file=sys.stderr)
    try:
        for name in chosen:
            started = time.monotonic()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                found = await BENCHMARKS[name].run(ctx)
            except Exception as exc:  # noqa: BLE001 - report it in the table, run the rest
                found = [failed_row(name, "-", exc)]
            for row in found:
                print(
                    f"  {row.benchmark}: {row.figure} -> {row.verdict}", file=sys.stderr, flush=True
                )
            rows += found
            timings.append(f"{name} {time.monotonic() - started:.0f} s")
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - began
    report = render(rows, machine, Machine.now(), mode=_mode(args), timings=timings, total=total)
    print(report)
    output = args.output or (DOC if args.write else None)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report)
        print(f"written to {output}", file=sys.stderr)
    return 1 if any(row.figure.startswith("did not run") for row in rows) else 0


def _mode(args: argparse.Namespace) -> str:
    mode = "quick smoke run" if args.quick else "full run"
    if args.only:
        mode += " of " + ", ".join(args.only)
    if args.profile:
        mode += ", app under pyinstrument (slower than normal)"
    return mode


def render(
    rows: list[Row],
    machine: Machine,
    after: Machine,
    *,
    mode: str,
    timings: list[str],
    total: float,
) -> str:
    """The table and its notes, as Markdown: readable on a terminal and in docs/."""
    lines = [
        "# keyvend benchmarks",
        "",
        f"`make bench` ({mode}) on {machine.describe()}; took {total / 60:.1f} min ({', '.join(timings)}).",
        "",
    ]
    busy = max(machine.load[0], after.load[0])
    if busy > 0.5 * machine.cores:
        lines += [
            (
                f"**The machine was busy** (1-minute load average {machine.load[0]:.2f} at start, "
                f"{after.load[0]:.2f} at the end, on {machine.cores} cores): other work competed for the CPU, so "
                "these figures are lower and noisier than on a quiet machine. Re-run `make bench` on a quiet one."
            ),
            "",
        ]
    lines += [
        (
            "Every ratio divides a figure by a baseline measured in the same run on the same machine "
            "(the notes say which), so ratios compare across machines; absolute figures do not. "
            "`python -m bench --help` lists the options (`--quick`, `--only NAME`, `--profile DIR`); "
            "the code and what each benchmark does are in `bench/`."
        ),
        "",
        "| benchmark | figure | p50 | p99 | ratio | goal | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, row in enumerate(rows, 1):
        # Three decimals: a ratio of 0.947 against a goal of 0.95 must not print as 0.95.
        ratio = "" if row.ratio is None else f"{row.ratio:.3f}"
        mark = f" [{number}]" if row.notes else ""
        lines.append(
            f"| {row.benchmark}{mark} | {row.figure} | {row.p50} | {row.p99} | {ratio} | {row.goal} "
            f"| {row.verdict} |"
        )
    notes = [(number, row) for number, row in enumerate(rows, 1) if row.notes]
    if notes:
        lines += ["", "Notes:", ""]
        for number, row in notes:
            lines.append(f"{number}. " + "; ".join(row.notes) + ".")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="keyvend's benchmarks (issue 4)."
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every benchmark")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--write", action="store_true", help="write the table to docs/benchmarks.md (full run only)"
    )
    parser.add_argument("--output", type=Path, help="write the table to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each `keyvend run` under pyinstrument and write its report to DIR",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (databases, app logs)"
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
