"""``dfl-sim``: run, resume, validate, list and compare experiments; run the defense tables.

A thin layer over :mod:`dfl.api`. Every ``DflError`` (bad config, data, CLI input) is printed as one
message and exits with code 2, never with a traceback.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from dfl.errors import DflError, Terminated, raise_terminated  # noqa: E402

FAMILIES = ("datasets", "partitioners", "models", "topologies", "aggregators", "protocols", "attacks", "defenses")
JOBS_HELP = ("runs at once, each in its own process (default 1); the figures do not depend on it, the serial "
             "engine only")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfl-sim", description="Decentralized federated learning simulator for privacy research.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run an experiment (or resume one)")
    r.add_argument("config", nargs="?", help="experiment YAML file")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set rounds=3 (repeatable)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    r.add_argument("--out", metavar="DIR", help="parent directory of the run directory (default: output.dir)")
    r.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")

    a = sub.add_parser("attack", help="run attacks on a finished run's kept shared states, without training")
    a.add_argument("run_dir", metavar="RUN_DIR", help="a run made with output.save_shared: true")
    a.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="the attacks to run, e.g. --set 'attacks=[{name: rmia}]' (repeatable; attacks only)")
    a.add_argument("--out", metavar="DIR", help="parent directory of the replay's run directory (default: RUN_DIR/attacks)")

    v = sub.add_parser("validate", help="check an experiment file without running it")
    v.add_argument("config")
    v.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")

    li = sub.add_parser("list", help="list registered datasets, models, topologies, ... with their parameters")
    li.add_argument("family", nargs="?", choices=FAMILIES, help="one family (default: all)")

    c = sub.add_parser("compare", help="run a grid of experiments and write one comparison table")
    c.add_argument("config")
    c.add_argument("--over", action="append", default=[], metavar="KEY=V1,V2",
                   help="an axis of the grid, e.g. --over topology.name=fully_connected,ring,star (repeatable)")
    c.add_argument("--seeds", type=int, default=1, help="seeds per grid cell (seed, seed+1, ...)")
    c.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--out", metavar="DIR", help="parent directory of the comparison directory")
    c.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)

    t = sub.add_parser("table", help="run one of the defense evaluation tables and write its report.md")
    t.add_argument("name", metavar="NAME", nargs="?", help="the table to run (--list lists them)")
    t.add_argument("--list", action="store_true", help="list every table: name, title and file; then exit")
    t.add_argument("--tables", metavar="DIR",
                   help="folder of <name>.table.yaml files (and base experiments), searched before $DFL_SIM_TABLES "
                        "and the shipped tables")
    t.add_argument("--dataset", default="digits",
                   help="cifar10 or digits (default digits), or any registered data set run on the --base settings")
    t.add_argument("--base", metavar="cifar10|digits",
                   help="base experiment for other data sets (default cifar10: the settings tuned there)")
    t.add_argument("--seeds", type=int, default=2, help="seeds per cell (default 2)")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--out", metavar="DIR", help="parent directory of the table's directory")
    t.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)

    sa = sub.add_parser("search-augmentation",
                        help="find the defensive-augmentation policy (best op and magnitude per class) against DP-SGD")
    sa.add_argument("config", help="experiment YAML file (data, model and training recipe)")
    sa.add_argument("--sigma", type=float, default=0.5, help="DP-SGD noise multiplier to beat (default 0.5)")
    sa.add_argument("--max-grad-norm", type=float, default=1.0)
    sa.add_argument("--ops", nargs="+", help="ops to try (default: all 14)")
    sa.add_argument("--magnitudes", nargs="+", type=int, help="magnitudes to try, 0-9 (default: 1 3 5 7 9)")
    sa.add_argument("--train-samples", type=int, default=2000)
    sa.add_argument("--epochs", type=int, default=5)
    sa.add_argument("--images-per-class", type=int, default=2)
    sa.add_argument("--iterations", type=int, default=600, help="inverting-gradients steps per reconstruction")
    sa.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    sa.add_argument("--out", metavar="DIR", default="runs/augmentation-search", help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    previous = signal.signal(signal.SIGTERM, raise_terminated) if _main_thread() else None
    try:
        return int(_dispatch(args, console) or 0)
    except DflError as exc:
        console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        run_dir = getattr(exc, "run_dir", None)
        hint = f"resume with `dfl-sim run --resume {run_dir}`" if run_dir else "no run was under way to resume"
        console.print(f"{what}; {hint}", highlight=False, soft_wrap=True)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "list":
        return _list(args.family)
    if args.command == "validate":
        # here, not at the top: `dfl-sim --help` and bad command lines answer before torch is imported
        from dfl.api import validate

        cfg = validate(args.config, args.sets)
        console.print(f"{args.config}: valid ({cfg.nodes} nodes, {cfg.topology.name}, {cfg.data.dataset.name}, "
                      f"{cfg.model.name}, {cfg.rounds} rounds)", highlight=False)
        return 0
    if args.command == "run":
        return _run(args, console)
    if args.command == "attack":
        # here, not at the top: `dfl-sim --help` and bad command lines answer before torch is imported
        from dfl import api

        result = api.attack(args.run_dir, args.sets, out_dir=args.out)
        records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        kinds = sorted({r["kind"] for r in records})
        console.print(f"{len(records)} attack records ({', '.join(kinds) or 'none'})", highlight=False)
        print(f"records: {result.run_dir / 'metrics.jsonl'}")
        return 0
    if args.command == "compare":
        return _compare(args, console)
    if args.command == "search-augmentation":
        return _search_augmentation(args, console)
    if args.command == "table":
        return _table(args, console)
    raise AssertionError(args.command)


def _table(args: argparse.Namespace, console: Console) -> int:
    # here, not at the top: `dfl-sim --help` and bad command lines answer before torch is imported
    from dfl.errors import ConfigError
    from dfl.studies.tables import find_tables, list_tables, run_table, search_path

    if args.list:
        tables = list_tables(args.tables)
        width = max((len(f.name) for f, _ in tables), default=0)
        for f, table in tables:
            print(f"{f.name:<{width}}  {table.title}")
            print(f"{'':<{width}}  {f.path} ({f.source})")
        print("searched, first file of a name wins: "
              + ("; ".join(f"{d} ({source})" for source, d in search_path(args.tables)) or "no folder"))
        return 0
    if args.name is None:
        names = ", ".join(find_tables(args.tables)) or "(none found)"
        raise ConfigError([("table", f"name the table to run: dfl-sim table NAME, NAME one of {names}; "
                                     "`dfl-sim table --list` shows their titles and files")])

    def on_run(label: str, i: int, total: int) -> None:
        console.print(f"[{i}/{total}] {label}", highlight=False)

    out = run_table(args.name, args.dataset, seeds=args.seeds, overrides=args.sets, out_dir=args.out, on_run=on_run,
                    jobs=args.jobs, base=args.base, tables_dir=args.tables)
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'}")
    return 0


def _run(args: argparse.Namespace, console: Console) -> int:
    # here, not at the top: `dfl-sim --help` and bad command lines answer before torch is imported
    from dfl import api
    from dfl.errors import ConfigError

    if bool(args.config) == bool(args.resume):
        raise ConfigError([("run", "give either a CONFIG file or --resume RUN_DIR (one of them)")])
    if args.resume and args.sets:
        raise ConfigError([("--set", "cannot override a resumed run's config; start a new run instead")])
    show = not args.quiet
    with _progress(console, show) as update:
        if args.resume:
            result = api.resume(args.resume, progress=update)
        else:
            result = api.run(args.config, args.sets, out_dir=args.out, progress=update, t0=_T0)
    if show:
        _summary_table(console, result.summary)
    print(f"report: {result.run_dir / 'report.md'}")
    return 0


def _compare(args: argparse.Namespace, console: Console) -> int:
    # here, not at the top: `dfl-sim --help` and bad command lines answer before torch is imported
    from dfl import api

    def on_run(label: str, i: int, total: int) -> None:
        console.print(f"[{i}/{total}] {label}", highlight=False)

    res = api.compare(args.config, args.over, seeds=args.seeds, overrides=args.sets, out_dir=args.out, on_run=on_run,
                      jobs=args.jobs)

    table = Table(title="comparison (mean ± std over seeds)")
    keys = [k for k in res.rows[0] if not k.endswith("_std") and k != "seeds"
            and (not k.startswith("mia_") or k.endswith("_auc"))
            and (not k.startswith("gi_") or k.endswith(("_psnr", "_recognisability")))]
    short = {"mean_test_acc": "test acc", "min_test_acc": "min test acc", "mean_train_acc": "train acc",
             "mean_holdout_acc": "holdout acc", "generalization_gap": "gap", "consensus_distance": "consensus"}
    for k in keys:
        table.add_column(short.get(k, k.removeprefix("mia_").removeprefix("gi_").replace("_auc", " AUC")))
    for row in res.rows:
        table.add_row(*[(f"{row[k]:.3f} ± {row[k + '_std']:.3f}" if row["seeds"] > 1 else f"{row[k]:.4f}")
                        if f"{k}_std" in row else str(row[k]) for k in keys])
    Console().print(table)
    print(f"comparison: {res.out_dir / 'comparison.md'}")
    return 0


def _search_augmentation(args: argparse.Namespace, console: Console) -> int:
    # here, not at the top: `dfl-sim --help` and bad command lines answer before torch is imported
    from dfl.api import validate
    from dfl.errors import ConfigError
    from dfl.plugins import load_plugins
    from dfl.registries import DEFENSES
    from dfl.studies.augsearch import search, write

    load_plugins()
    ops = DEFENSES.get("defensive_augmentation").obj.OPS  # the augmentation search scores that defense's ops
    bad = [o for o in args.ops or [] if o not in ops]
    if bad:
        raise ConfigError([("--ops", f"unknown op(s) {', '.join(bad)}; choose from {', '.join(ops)}")])
    if any(not 0 <= m <= 9 for m in args.magnitudes or []):
        raise ConfigError([("--magnitudes", f"magnitudes must lie in 0..9, got {args.magnitudes}")])
    for name in ("sigma", "train_samples", "epochs", "images_per_class", "iterations"):
        if getattr(args, name) <= 0 and not (name == "sigma" and args.sigma == 0):
            raise ConfigError([(f"--{name.replace('_', '-')}", f"must be positive, got {getattr(args, name)}")])
    cfg = validate(args.config, args.sets)
    result = search(cfg, sigma=args.sigma, max_grad_norm=args.max_grad_norm, ops=args.ops, magnitudes=args.magnitudes,
                    train_samples=args.train_samples, epochs=args.epochs, images_per_class=args.images_per_class,
                    iterations=args.iterations, log=lambda m: console.print(m, highlight=False))
    out = Path(args.out)
    write(result, out)
    print((out / "report.md").read_text())
    print(f"policy: {out / 'policy.yaml'}")
    return 0


class _progress:
    """A rich progress bar over rounds; yields the callback ``api.run`` calls after every round."""

    def __init__(self, console: Console, show: bool) -> None:
        self.console, self.show = console, show
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return None

        self.bar = Progress(TextColumn("round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[info]}"), console=self.console, transient=False)
        self.bar.__enter__()
        self.task = None

        def update(done: int, total: int, summary: dict[str, Any]) -> None:
            if self.task is None:
                self.task = self.bar.add_task("rounds", total=total, completed=0, info="")
            info = f"test acc {summary['mean_test_acc']:.3f}" if "mean_test_acc" in summary else ""
            self.bar.update(self.task, completed=done, info=info)

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _summary_table(console: Console, summary: dict[str, Any]) -> None:

    if not summary:
        return
    per = summary.get("per_node", [])
    final = summary.get("final", {})
    table = Table(title=f"{summary['name']}: round {summary['final_round']}")
    if per and len(per) <= 20:
        keys = [k for k in per[0] if not k.endswith("_loss") or k == "test_loss"]
        for k in keys:
            table.add_column("samples" if k == "train_samples" else k.replace("_", " "), justify="right")
        for r in per:
            table.add_row(*[f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys])
    else:
        for k in ("metric", "mean", "std", "min", "max"):
            table.add_column(k, justify="right")
        for k in final:
            if k.startswith("mean_"):
                m = k[5:]
                table.add_row(m, *[f"{final[f'{s}_{m}']:.4f}" for s in ("mean", "std", "min", "max")])
    Console().print(table)
    mia = summary.get("mia", {})
    if mia:
        attacks = sorted({k[: -len("_auc")] for k in mia if k.endswith("_auc")})
        t = Table(title="membership inference (mean over victims, last attacked round)")
        for col in ("attack", "AUC", "accuracy", "TPR@1%FPR", "advantage", "victims' gap"):
            t.add_column(col, justify="right")
        for a in attacks:
            t.add_row(a, *[f"{mia[f'{a}_{m}']:.3f}" if f"{a}_{m}" in mia else "-"
                           for m in ("auc", "accuracy", "tpr_at_1_fpr", "advantage", "victim_gap")])
        Console().print(t)
    audit = summary.get("dp_audit")
    if audit:
        line = (f"DP audit (round {audit['round']}): accountant epsilon {audit['mean_epsilon']:.3f} (mean over "
                f"DP nodes), empirical lower bound {audit['mean_epsilon_lower']:.3f} (largest "
                f"{audit['max_epsilon_lower']:.3f})")
        Console().print(line, highlight=False)
        if audit["violations"]:
            Console(stderr=True).print(f"[bold red]DP AUDIT VIOLATION[/]: in {audit['violations']} of {audit['audits']} "
                                       "audits the lower bound exceeds the accountant's epsilon; see report.md")
    if "generalization_gap" in final:
        Console().print(f"generalisation gap {final['generalization_gap']:.4f}, "
                        f"consensus distance {final.get('consensus_distance', float('nan')):.4g}", highlight=False)


def _list(family: str | None) -> int:
    from rich.table import Table

    # here, not at the top: `dfl-sim --help` and bad command lines answer before torch is imported
    from dfl.plugins import load_plugins
    from dfl.registries import FAMILIES as REG

    load_plugins()
    out = Console()
    for fam in [family] if family else FAMILIES:
        reg = REG[fam]
        table = Table(title=fam, show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("parameters (default)")
        table.add_column("description")
        for entry in reg:
            params = []
            for name, f in entry.params.model_fields.items():
                default = "required" if f.is_required() else (
                    repr(f.default_factory()) if f.default_factory else repr(f.default))  # type: ignore[call-arg]
                params.append(f"{name}={default}")
            table.add_row(entry.name, ", ".join(params) or "-", entry.summary)
        if not len(reg):
            table.add_row("-", "-", f"no {fam} registered yet")
        out.print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
