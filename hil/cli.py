"""``hil/run``: run a hardware-in-the-loop campaign from a targets file.

Examples::

    hil/run hil/targets.example.toml
    hil/run pis.toml --scenario rollout --out results.json --uninstall

Exit status: 0 when every scenario passed on every target, 1 when one failed or
the campaign could not finish, 2 for a bad targets file or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from hil.campaign import ISOLATING_ENV, Campaign
from hil.errors import HilError
from hil.report import Report, table
from hil.targets import SCENARIOS, load_targets

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hil/run",
        description="Run the edgeops agent's scenarios (rollout, telemetry) on real devices "
        "over SSH and on simulated devices in network namespaces.",
        epilog="example: hil/run hil/targets.example.toml --out results.json",
    )
    p.add_argument("targets", type=Path, help="the targets file (TOML; see docs/hil.md)")
    p.add_argument(
        "--scenario",
        default=None,
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default: the file's, else all)",
    )
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument(
        "--workdir",
        type=Path,
        help="the run's folder: workspace, broker, logs (default: hil-runs/<time>)",
    )
    p.add_argument(
        "--uninstall",
        action="store_true",
        help="remove the agent and its folder from SSH targets afterwards",
    )
    p.add_argument(
        "--ssh",
        default=os.environ.get("HIL_SSH", "ssh"),
        help="the ssh client to use (default: ssh, or $HIL_SSH)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # the run has a workspace of its own; variables pointing elsewhere would be refused
    for var in ISOLATING_ENV:
        os.environ.pop(var, None)
    try:
        spec = load_targets(args.targets)
        if args.scenario:
            names = tuple(s.strip() for s in args.scenario.split(",") if s.strip())
            spec = spec.with_scenarios(names)
    except HilError as exc:
        print(f"hil/run: {exc}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path("hil-runs") / time.strftime("%Y%m%d-%H%M%S")
    if workdir.exists() and any(workdir.iterdir()):
        print(
            f"hil/run: {workdir} is not empty: give each run a folder of its own", file=sys.stderr
        )
        return 2
    quiet = (lambda line: None) if args.quiet else None
    campaign = Campaign(spec, workdir, uninstall=args.uninstall, ssh=args.ssh, log=quiet)
    report: Report = campaign.report()
    try:
        with campaign:
            report = campaign.run()
    except HilError as exc:
        report.error = str(exc)
    except KeyboardInterrupt:
        report.error = "interrupted"
    except Exception as exc:  # a bug: keep the traceback, still write what is known
        traceback.print_exc()
        report.error = f"internal error: {type(exc).__name__}: {exc}"
    if report.error:  # what was learnt before it stopped
        fresh = campaign.report()
        report.targets, report.broker = fresh.targets, fresh.broker
        report.seconds = round(time.monotonic() - campaign.started, 1)
    print(table(report))
    out = args.out or workdir / "results.json"
    report.write(out)
    print(f"results: {out}; logs: {workdir / 'logs'}")
    return 0 if report.ok else 1
