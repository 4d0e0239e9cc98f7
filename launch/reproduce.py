"""Reproduce a paper's table: make its data, train every row and seed, write docs/results.md.

    python launch/reproduce.py --list                                   # the tables and their rows
    python launch/reproduce.py dusego-t2 --profile cpu --seeds 0 1 2    # DuSEGO's depth table on a CPU
    python launch/reproduce.py egnn-nbody --profile paper               # EGNN's 5-body table, full protocol
    python launch/reproduce.py fastegnn-t1-nbody --profile paper --seeds 0 1 2   # on a GPU
    python launch/reproduce.py eghn-t1 --profile cpu --budget 0.5       # half the epochs (the table says so)

Profiles: 'paper' is the published protocol; 'cpu' cuts data and epochs (the table states how).
--budget scales every row's epochs. Runs go to <runs>/<table>/<profile>[-b<budget>]/<row>-s<seed>;
a finished run is not run again and a killed one resumes from its checkpoint, so the same
command continues a table. --report only rewrites the table from the runs there are.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from scaleq.papers.reproduce import REPO, Plan, markdown, plot_trend, reproduce, write_section
from scaleq.papers.tables import TABLES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", nargs="?", choices=sorted(TABLES))
    parser.add_argument("--profile", default="cpu", help="'paper' (published protocol) or 'cpu' (default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=float, default=1.0, help="scale every row's epochs (default 1)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "papers")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "papers")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "results.md")
    parser.add_argument("--rows", nargs="+", default=[], help="only these rows (keys from --list)")
    parser.add_argument("--report", action="store_true", help="only write the table from the finished runs")
    parser.add_argument("--list", action="store_true", help="list the tables, their profiles and rows")
    args = parser.parse_args(argv)
    if args.list or args.table is None:
        for table in TABLES.values():
            print(f"{table.name}: {table.title} [{', '.join(table.profiles)}]")
            for row in table.rows:
                print(f"    {row.key:18s} {row.group:20s} {row.label} (paper {row.paper})")
        return 0
    table = TABLES[args.table]
    if args.profile not in table.profiles:
        parser.error(f"table {table.name} has profiles {sorted(table.profiles)}, not {args.profile!r}")
    if args.budget <= 0:
        parser.error(f"--budget must be > 0, got {args.budget}")
    unknown = [key for key in args.rows if key not in {r.key for r in table.rows}]
    if unknown:
        parser.error(f"table {table.name} has no rows {unknown}; see --list")
    plan = Plan(table, args.profile, tuple(args.seeds), args.budget, args.runs.resolve(), args.data.resolve(),
                tuple(args.rows))
    command = "python launch/reproduce.py " + shlex.join(
        [table.name, "--profile", args.profile, "--seeds", *map(str, args.seeds)]
        + (["--budget", f"{args.budget:g}"] if args.budget != 1.0 else [])
        + (["--rows", *args.rows] if args.rows else []))
    if args.report:
        from scaleq.papers.reproduce import collect

        results = collect(plan)
    else:
        results = reproduce(plan)
    body = markdown(plan, results, command)
    if table.plot:
        png = args.results.parent / f"results_{table.name}_{plan.tag}.png"
        plot_trend(plan, results, png)
        body += f"\n![{table.name}]({png.name})\n"
    write_section(args.results, f"{table.name}:{plan.tag}", body)
    print(body)
    print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
