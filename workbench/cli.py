"""Command line: workbench simulate | sweep | report | list | topology | privacy |
data | cluster.

Thin by design: parse, load the scenario, call the runner. User mistakes print
one line on stderr and exit with status 2, never a traceback; SIGINT and SIGTERM
stop a run cleanly with status 130 and a line saying how to resume it.
"""

from __future__ import annotations

import argparse
import os
import sys

from workbench.allocator import reexec_with_huge_pages
from workbench.errors import RunInterrupted, WorkbenchError
from workbench.interrupts import handle_termination

DESCRIPTION = (
    "Simulation-first workbench for decentralized and federated learning: "
    "run a scenario, list what the registries hold, describe a topology, "
    "fetch a dataset."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(2, f"workbench: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("simulate", help="run a scenario in simulation")
    s.add_argument("scenario", nargs="?", help="scenario YAML file")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key (repeatable)",
    )
    s.add_argument("--out", help="run directory (default runs/<name>/<timestamp>)")
    s.add_argument(
        "--data-dir",
        help="dataset directory (default $WORKBENCH_DATA or the user cache dir)",
    )
    s.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    li = sub.add_parser(
        "list", help="list registry entries (algorithms, topologies, models, ...)"
    )
    li.add_argument("kinds", nargs="*", metavar="KIND", help="only these kinds")
    t = sub.add_parser("topology", help="topology tools")
    t.add_argument("action", choices=["describe"])
    t.add_argument("rest", nargs=argparse.REMAINDER)
    pr = sub.add_parser("privacy", help="attack a finished run's saved messages again")
    pr.add_argument("run_dir", metavar="RUN_DIR", help="a run with a privacy: section")
    pr.add_argument(
        "--attack",
        dest="attacks",
        action="append",
        metavar="SPEC",
        help="an attack to run instead of the scenario's (repeatable): a name or "
        "a YAML mapping such as '{name: lira, shadows: 16}'; its rows replace "
        "that attack's rows in privacy.csv",
    )
    pr.add_argument("--data-dir", help="dataset directory, as for simulate")
    _cluster_parser(sub)
    _sweep_parser(sub)
    d = sub.add_parser("data", help="dataset tools")
    d.add_argument("action", choices=["fetch"])
    d.add_argument("name", help="dataset name, e.g. cifar10, mnist, fashion_mnist")
    d.add_argument("--data-dir", help="where to put the files")
    return p


def _sweep_parser(sub) -> None:
    w = sub.add_parser("sweep", help="run a scenario's grid of points over seeds")
    w.add_argument("scenario", help="scenario YAML file (its sweep: section, if any)")
    for flag, what in (("--grid", "every combination"), ("--zip", "walked together")):
        w.add_argument(
            flag, action="append", default=[], metavar="KEY=V1,V2",
            help=f"swept key and its values, {what} (repeatable)",
        )  # fmt: skip
    w.add_argument("--seeds", help="N (seeds 0..N-1) or a list 0,3,7")
    w.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of every point (repeatable)",
    )  # fmt: skip
    w.add_argument("--out", help="sweep directory (default sweeps/<name>)")
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    r = sub.add_parser("report", help="a sweep's table and figure across seeds")
    r.add_argument("sweep_dir", metavar="SWEEP_DIR")


def _cluster_parser(sub) -> None:
    c = sub.add_parser("cluster", help="run a scenario on node processes (pyzmq)")
    act = c.add_subparsers(dest="action", required=True, parser_class=_Parser)
    node = act.add_parser("node", help="start one node process of a deployment")
    local = act.add_parser("local", help="K node processes on loopback, one run")
    for q in (node, local):
        q.add_argument("scenario", help="scenario YAML file")
        q.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a scenario key")  # fmt: skip
        q.add_argument("--out", help="run directory (rank 0; default runs/...)")
        q.add_argument("--data-dir", help="dataset directory, as for simulate")
    node.add_argument("--hosts", required=True, help="hosts file (YAML)")
    node.add_argument("--rank", required=True, type=int, help="this node's rank")
    node.add_argument("--key", help="this node's .key_secret (default: hosts file)")
    local.add_argument("--nodes", required=True, type=int, help="node processes")
    local.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds of silence before a node is declared dead",
    )
    local.add_argument(
        "--insecure", action="store_true", help="no CurveZMQ keys (plaintext loopback)"
    )
    keys = act.add_parser("keys", help="create CurveZMQ key pairs for the nodes")
    keys.add_argument("directory", help="where to write node-<rank>.key[_secret]")
    keys.add_argument("--nodes", required=True, type=int, help="how many ranks")


def _cluster(args) -> int:
    if args.action == "keys":
        from workbench.cluster.security import create_keys

        if args.nodes < 1:
            raise WorkbenchError(f"--nodes {args.nodes}: give at least 1")
        for rank, key in enumerate(create_keys(args.directory, args.nodes)):
            print(f'rank {rank}: public_key: "{key}"')
        return 0
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if args.action == "node":
        from workbench.cluster.run import run_node

        summary = run_node(
            args.scenario,
            args.overrides,
            args.hosts,
            args.rank,
            key=args.key,
            out=args.out,
            data_dir=args.data_dir,
        )
        if summary is not None:
            _report(summary, "")
        return 0
    from workbench.cluster.launch import launch_local

    run_dir = launch_local(args.scenario, args.overrides, args.nodes, out=args.out,
                           data_dir=args.data_dir, timeout=args.timeout,
                           secure=not args.insecure)  # fmt: skip
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    _report(summary, f"; results in {run_dir}")
    return 0


def _report(summary: dict, where: str) -> None:
    c = summary["cluster"]
    print(
        f"final mean test accuracy {_number(summary['final_mean_test_accuracy'])}, "
        f"{c['nodes']} nodes, {c['seconds_per_round'] * 1e3:.1f} ms/round, "
        f"{c['throughput_mb_per_s']:.1f} MB/s on the wire{where}"
    )


def _simulate(args) -> int:
    from workbench.runner import run

    if os.getcwd() not in sys.path:  # `model: {module: mynets:Net}` from the cwd
        sys.path.insert(0, os.getcwd())
    if bool(args.scenario) == bool(args.resume):
        raise WorkbenchError("give either a SCENARIO file or --resume RUN_DIR")
    if args.resume and args.overrides:
        raise WorkbenchError("--set cannot change a resumed run; start a new one")
    result = run(
        args.scenario,
        args.overrides,
        out=args.out,
        data_dir=args.data_dir,
        resume=args.resume,
        progress=not args.quiet,
    )
    summary = result.summary
    if result.already_finished:
        print(
            f"{result.run_dir} is finished ({summary['rounds']} rounds); "
            "nothing to resume, no file changed"
        )
    print(
        f"final mean test accuracy {_number(summary['final_mean_test_accuracy'])}, "
        f"{summary['peer_steps_per_second']:,.0f} peer-steps/s, "
        f"wall {summary['wall_seconds']:.1f} s (compile "
        f"{summary['compile_seconds']:.1f} s); results in {result.run_dir}"
    )
    return 0


def _seeds(text: str | None):
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")] if "," in text else int(text)
    except ValueError:
        raise WorkbenchError(
            f"--seeds {text!r}: expected a number N or a list like 0,3,7"
        ) from None


def _sweep(args) -> int:
    from workbench.report import print_report
    from workbench.sweep import axes_from_cli, plan, run_sweep

    if os.getcwd() not in sys.path:  # `model: {module: ...}` from the cwd
        sys.path.insert(0, os.getcwd())
    grid, zip_ = axes_from_cli(args.grid, "--grid"), axes_from_cli(args.zip, "--zip")
    sweep = plan(args.scenario, args.overrides, grid, zip_, _seeds(args.seeds),
                 args.out)  # fmt: skip
    failed = 0
    for s in run_sweep(sweep, progress=not args.quiet):
        keys = " ".join(f"{k}={v}" for k, v in s.point.keys.items())
        acc = (s.summary or {}).get("final_mean_test_accuracy")
        print(f"workbench: {s.point.name} {keys} seed={s.point.seed}: {s.status}"
              + (f", test acc {_number(acc)}" if acc is not None else ""))  # fmt: skip
        failed += s.status != "done"
    print_report(sweep.root)
    return 1 if failed else 0


def _sweep_report(args) -> int:
    from pathlib import Path

    from workbench.report import print_report

    print_report(Path(args.sweep_dir))
    return 0


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _list(args) -> int:
    from workbench.catalog import catalog

    print(catalog(args.kinds or None))
    return 0


def _topology(args) -> int:
    from workbench.topology.cli import describe

    return describe(args.rest)


def _privacy(args) -> int:
    from workbench.privacy.cli import attack_run

    result = attack_run(args.run_dir, args.attacks, args.data_dir)
    print(result)
    return 0


def _data(args) -> int:
    from workbench.data import resolve_data_dir
    from workbench.data.fetch import fetch

    for path in fetch(args.name, resolve_data_dir(args.data_dir)):
        print(path)
    return 0


COMMANDS = {
    "simulate": _simulate,
    "list": _list,
    "topology": _topology,
    "privacy": _privacy,
    "data": _data,
    "cluster": _cluster,
    "sweep": _sweep,
    "report": _sweep_report,
}


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: restart with huge pages (allocator.py)
        reexec_with_huge_pages()
    args = _parser().parse_args(argv)
    try:
        with handle_termination():
            return COMMANDS[args.command](args)
    except RunInterrupted as e:
        print(f"workbench: {e}", file=sys.stderr)
        return 130
    except WorkbenchError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
