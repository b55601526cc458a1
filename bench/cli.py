"""The command line: ``python -m bench run | list | train | tune | report | plan``.

Thin: it parses, then calls down (:mod:`bench.run.runner`, :mod:`models.training`, :mod:`models.tuning`,
:mod:`bench.report.rebuild`). The flags of ``train`` and ``tune`` are generated from the recipe
dataclasses (:class:`models.recipes.TrainConfig`, :class:`models.recipes.TuneConfig`), and
``list`` enumerates the registries. Bad input (unknown names, bad values, missing or corrupt
files, a mistyped flag, a place that cannot be written) ends with one line
``error: <problem and fix>`` on stderr and exit status 2, never a traceback. SIGINT and SIGTERM
stop a command the same way, with one line saying that finished work is kept (exit 130 / 143);
a second signal while it stops ends the process at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import datasets
import explainers
import models
from bench import metrics
from bench.core.errors import BenchError, did_you_mean
from bench.core.io import check_entry, ensure_folder, os_error
from bench.core.params import SEED_RANGE, Range
from bench.core.registry import Registry
from bench.perf.allocator import tune_allocator
from bench.perf.floor import format_passes, metric_passes_per_image, passes_per_image
from bench.report.html import read_manifest
from bench.report.rebuild import rebuild
from bench.report.truth import rebuild_truth
from bench.run.config import CONFIG_DIR, RunConfig, load_config, parse_value, stats_settings
from bench.run.parts import run_parts
from bench.run.rundir import check_adoptable, check_run_tree, with_added_keys
from bench.run.runner import run
from bench.run.sizing import plan_sample, render_plan
from bench.run.truth import run_truth
from models.checkpoints import default_checkpoint_path, default_tuned_path
from models.recipes import Recipe, TrainConfig, TuneConfig
from models.training import train_model
from models.tuning import tune_model

REGISTRIES: dict[str, Registry] = {
    "models": models.MODELS,
    "explainers": explainers.EXPLAINERS,
    "metrics": metrics.METRICS,
    "datasets": datasets.DATASETS,
}
LIST_BACKGROUND = 32  # the default config's data.background_size, for the pass counts `list` shows
LIST_SHAPE = (1, 28, 28)  # the default config's images, for pass counts that depend on the image size


# ----------------------------------------------------------------------------- the parser


class UsageError(BenchError):
    """A command line argparse refuses: one line, like every other error."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the usage and exits; this raises
    :class:`UsageError`, which :func:`main` prints as ``error: ...``) and a "did you mean" for a
    mistyped choice or command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments: "):  # a mistyped flag: the nearest flag of any command
            flag = next((a for a in message.split(": ", 1)[1].split() if a.startswith("--")), "")
            message += did_you_mean(flag.split("=")[0], self._flags()) if flag else ""
        raise UsageError(f"{self.prog}: {message}; see {self.prog} --help")

    def _flags(self) -> list[str]:
        """Every option string of this parser and its commands."""
        flags = []
        for action in self._actions:
            flags += [o for o in action.option_strings if o.startswith("--")]
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    flags += sub._flags() if isinstance(sub, Parser) else []
        return sorted(set(flags))

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{did_you_mean(value, action.choices)}; choose from {choices}"
            )


CONFIG_HELP = (
    f"a TOML config file, or a shipped profile's name: "
    f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.toml')))} (default: quick)"
)

RUN_EXAMPLES = """examples (as typed in bash):
  python -m bench run --config study --name study    # a shipped profile, by name
  python -m bench run --config my-profile.toml        # your own TOML file
  python -m bench run --set 'explain.names=["random", "edge"]' --set data.per_cell=2
  python -m bench run --set 'explain.params."shap.partition".max_evals=100'
"""


def _add_data_args(p: argparse.ArgumentParser, *, dataset: bool) -> None:
    g = p.add_argument_group("data (options of the dataset's loader: python -m bench list datasets)")
    if dataset:
        g.add_argument("--dataset", default="pneumoniamnist", help="registered dataset (default: %(default)s)")
        g.add_argument("--size", type=int, default=None, help="shortcut for --data-option size=N")
    g.add_argument(
        "--data-file",
        default=None,
        help="shortcut for --data-option data_file=PATH: a MedMNIST-style "
        ".npz (else env BENCH_DATA_FILE, else --data-root)",
    )
    g.add_argument(
        "--data-root",
        default=None,
        help="shortcut for --data-option data_root=DIR: a medmnist root "
        "folder (else env BENCH_DATA_ROOT, else medmnist's default)",
    )
    g.add_argument(
        "--data-option",
        dest="data_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the dataset's loader, as a TOML value (repeatable)",
    )


def _add_recipe_args(p: argparse.ArgumentParser, cls: type[Recipe]) -> None:
    """One flag per recipe field, from the dataclass: type, default, help and choices."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("from_data"):
            continue
        default = f.default
        kwargs: dict[str, Any] = {"default": default, "help": f"{f.metadata['help']} (default: %(default)s)"}
        if isinstance(default, tuple):
            kwargs["type"] = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())
            kwargs["default"] = ",".join(default)
        elif not isinstance(default, str):
            kwargs["type"] = type(default)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m bench",
        description="pneumobench: a quantitative benchmark of attribution methods on chest X-ray classifiers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser(
        "run",
        help="run a benchmark config: explainers x metrics -> leaderboards and figures",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--config", default=None, help=CONFIG_HELP)
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, a TOML value in single quotes for the shell, e.g. "
        "--set 'explain.names=[\"random\"]' (repeatable)",
    )
    r.add_argument("--name", default=None, help="run name: results/<name>/ (default: the config's name)")
    r.add_argument("--results", default=None, help="results folder (default: results)")
    _add_device(r)
    _add_data_args(r, dataset=False)
    r.add_argument(
        "--executor",
        default="local",
        choices=("local", "ray"),
        help="local: in this process (default); ray: one Ray task per unit of work",
    )
    r.add_argument(
        "--ray-address", default=None, help="Ray cluster address for --executor ray (default: start a local instance)"
    )
    r.add_argument(
        "--part",
        default=None,
        metavar="PART",
        help="a config with [parts.<part>] tables: run only this part (each an ordinary run in "
        "results/<name>/parts/<part>); without --part every unfinished part runs, then they are "
        "combined into results/<name>",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")

    lst = sub.add_parser("list", help="list registered models, explainers, metrics or datasets")
    lst.add_argument("kind", nargs="?", choices=tuple(REGISTRIES), help="what to list (default: everything)")

    tr = sub.add_parser("train", help="train a model from scratch; writes a checkpoint + JSON sidecar")
    _add_recipe_args(tr, TrainConfig)
    tr.add_argument(
        "--out",
        default=None,
        help="checkpoint path (default: <results>/checkpoints/<model>-<size>px-seed<seed>-<key>.pt)",
    )
    tr.add_argument("--results", default="results", help="results folder (default: %(default)s)")
    _add_device(tr)
    _add_data_args(tr, dataset=True)
    tr.add_argument("--no-progress", action="store_true")

    tu = sub.add_parser("tune", help="fine-tune a checkpoint with frozen blocks; writes the 'post' checkpoint")
    tu.add_argument("--from", dest="parent", required=True, help="the parent ('pre') checkpoint")
    _add_recipe_args(tu, TuneConfig)
    tu.add_argument("--out", default=None, help="checkpoint path (default: <parent>-post-<key>.pt)")
    _add_device(tu)
    _add_data_args(tu, dataset=True)
    tu.add_argument("--no-progress", action="store_true")

    rep = sub.add_parser("report", help="rebuild every table and figure of a run from its scores.csv")
    rep.add_argument("run_dir", help="results/<run-name>")

    pl = sub.add_parser("plan", help="n before the run: images per model-stage for the declared effects, and the cost")
    pl.add_argument("--config", default=None, help=CONFIG_HELP)
    pl.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (TOML), e.g. --set 'stats.effects={faithfulness = 0.03}'",
    )
    pl.add_argument(
        "--pilot",
        required=True,
        help="a finished run folder whose scores give the paired variances (e.g. results/published/card)",
    )
    pl.add_argument("--power", type=float, default=0.8, help="power to detect the smallest effect (default: 0.8)")
    tt = sub.add_parser(
        "truth",
        help="the model-truth test: one run per training condition of a marked data set, "
        "then which explainers follow what the model uses and which metrics agree",
    )
    tt.add_argument(
        "--config",
        default=None,
        help='TOML config with data.dataset = "marked", or a shipped profile\'s name (e.g. truth)',
    )
    tt.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='override a config value (TOML), e.g. --set \'truth.polarities=["bright", "dark"]\'',
    )
    tt.add_argument("--name", default=None, help="run name: results/<name>/ (default: the config's name)")
    tt.add_argument("--results", default=None, help="results folder (default: results)")
    _add_device(tt)
    tt.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")


# ----------------------------------------------------------------------------- list


def _fmt(v: Any) -> str:
    if callable(v) and not isinstance(v, type):
        return getattr(v, "__name__", type(v).__name__)
    return repr(v) if isinstance(v, str) else str(v)


def constraint_text(c: Any) -> str:
    """A declared constraint in words: ``>= 1``, ``in (0, 1]``, ``one of 'zero', 'mean'``, or a
    checking function's docstring (its name without one)."""
    if isinstance(c, Range):
        return str(c)
    if isinstance(c, tuple):
        return "one of " + ", ".join(map(_fmt, c))
    doc = (getattr(c, "__doc__", None) or "").strip().splitlines()
    return doc[0].rstrip(".").split(": ", 1)[-1] if doc else _fmt(c)


def _params_text(params: dict[str, Any], constraints: dict[str, Any]) -> str:
    constraints = {"seed": SEED_RANGE, **constraints}
    return ", ".join(
        f"{k}={_fmt(v)}" + (f" ({constraint_text(constraints[k])})" if k in constraints else "")
        for k, v in params.items()
    )


def describe(kind: str, width: int | None = None) -> str:
    """One block per registered name: purpose, metadata flags, parameters with their defaults and
    constraints and, for explainers and metrics, the model passes per image at the defaults;
    wrapped to ``width`` (default: the terminal's)."""
    width = max(60, width or shutil.get_terminal_size((100, 24)).columns)
    reg = REGISTRIES[kind]
    indent = " " * 33
    lines = [f"{kind} ({len(reg)}):"]

    def add(text: str, first: str = indent) -> None:
        lines.extend(
            textwrap.wrap(text, width, initial_indent=first, subsequent_indent=indent, break_on_hyphens=False)
            or [first.rstrip()]
        )

    for e in reg.entries():
        meta = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(e.meta.items()) if k not in ("passes", "constraints"))
        params = {"explainers": explainers.explainer_params, "metrics": metrics.metric_params}.get(
            kind, lambda n: reg.get(n).params()
        )(e.name)
        doc = (getattr(e.obj, "__doc__", None) or "").strip().splitlines()
        add(doc[0] if doc else "", f"  {e.name:<30} ")
        if meta:
            add(f"[{meta}]")
        if params:
            add(
                f"{'options' if kind == 'datasets' else 'params'}: "
                + _params_text(params, e.meta.get("constraints") or {})
            )
        if kind == "explainers":
            passes = format_passes(passes_per_image(e.name, background_size=LIST_BACKGROUND, shape=LIST_SHAPE))
            add(
                f"passes/image at the defaults, background {LIST_BACKGROUND}, {'x'.join(map(str, LIST_SHAPE))} "
                f"images: {passes}"
            )
        elif kind == "metrics":  # n/a: the count depends on the explainer (randomisation re-runs it)
            add(f"passes/image at the defaults: {format_passes(metric_passes_per_image(e.name))}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in args.data_options:
        if "=" not in item:
            raise BenchError(f"--data-option {item!r} is not KEY=VALUE; e.g. --data-option size=64")
        key, text = item.split("=", 1)
        options[key.strip()] = parse_value(text.strip())
    for flag, key in (("size", "size"), ("data_file", "data_file"), ("data_root", "data_root")):
        if getattr(args, flag, None) is not None:
            options[key] = getattr(args, flag)
    return options


def _recipe(cls: type[Recipe], args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if not f.metadata.get("from_data")})


def _splits(args: argparse.Namespace):
    options = _data_options(args)
    splits = [datasets.load_split(args.dataset, s, **options) for s in ("train", "val", "test")]
    datasets.check_splits(*splits)  # before any training
    return splits


def cmd_list(args: argparse.Namespace) -> int:
    print("\n\n".join(describe(kind) for kind in ([args.kind] if args.kind else REGISTRIES)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _recipe(TrainConfig, args)
    cfg.validate()
    train, val, test = _splits(args)
    cfg = dataclasses.replace(cfg, dataset=train.name, size=int(train.images.shape[-1]))
    out = (
        Path(args.out)
        if args.out
        else default_checkpoint_path(cfg, train.fingerprint, Path(args.results) / "checkpoints")
    )
    _check_out(out, given=bool(args.out))
    side = train_model(cfg, train, val, test, out=out, device=args.device, progress=not args.no_progress)
    _print_result(out, side)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    cfg = _recipe(TuneConfig, args)
    cfg.validate()
    if not Path(args.parent).is_file():
        raise BenchError(f"checkpoint {args.parent} not found; train one with `python -m bench train`")
    train, val, test = _splits(args)
    out = Path(args.out) if args.out else default_tuned_path(args.parent, cfg)
    _check_out(out, given=bool(args.out))
    side = tune_model(args.parent, cfg, train, val, test, out=out, device=args.device, progress=not args.no_progress)
    _print_result(out, side)
    c = side["comparison"]
    print(
        "vs parent: "
        + ", ".join(f"{k} {v:+.4f}" for k, v in c["delta"].items())
        + f"; McNemar p = {c['mcnemar']['p_value']:.4g}; {c['images_changed_cell']} test images changed cell"
    )
    return 0


def _check_out(out: Path, *, given: bool) -> None:
    """Before any training: the checkpoint's path names a file in a folder that can be written."""
    what = f"--out {out}" if given else f"checkpoint {out}"
    if out.is_dir():
        raise BenchError(f"{what} is a folder; name a file, e.g. --out {out / 'model.pt'}")
    ensure_folder(out.parent, what=what, follow=given, probe=True)


def _print_result(out: Path, side: dict) -> None:
    t = side["test"]
    # binary data: sensitivity and specificity; K > 2 classes: the recall of each class
    rates = (
        f"sensitivity {t['sensitivity']:.4f}, specificity {t['specificity']:.4f}"
        if "sensitivity" in t
        else "recall by class " + " ".join("n/a" if r is None else f"{r:.3f}" for r in t.get("recall", []))
    )
    print(
        f"wrote {out} (+ {out.name}.json): best epoch {side['best_epoch']} on val; test ACC {t['acc']:.4f}, "
        f"AUC {t['auc']:.4f}, {rates}; {side['train_seconds']:.0f} s"
    )


def cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in (
        ("name", "name"),
        ("results", "results_dir"),
        ("data_file", "data.options.data_file"),
        ("data_root", "data.options.data_root"),
    ):
        value = getattr(args, flag, None)
        if value is not None:  # an empty --name is refused by the config, not replaced
            overrides.append(f"{key}={json.dumps(str(value))}")
    for item in args.data_options:
        overrides.append(f"data.options.{item}")
    if args.device != "auto":
        overrides.append(f"device={json.dumps(args.device)}")
    cfg = load_config(args.config, overrides)
    if cfg.parts:
        if args.executor != "local":
            raise BenchError(
                "a config with [parts] runs with --executor local; run each part with --part and --executor ray instead"
            )
        run_dir = run_parts(cfg, only=args.part, progress=not args.no_progress)
    elif args.part is not None:
        raise BenchError(f"--part {args.part!r}: the config {cfg.source} has no [parts] tables; drop --part")
    else:
        run_dir = run(cfg, progress=not args.no_progress, executor=args.executor, ray_address=args.ray_address)
    print(
        f"results in {run_dir}: report.html (all on one page), leaderboard.md, prepost.md, reliability.md, "
        f"scores.csv, figures/, manifest.json"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    check_entry(run_dir, folder=True)
    check_adoptable(run_dir)  # a run's folder, with nothing in it that leads outside it
    manifest = read_manifest(run_dir) or {}
    if manifest.get("kind") == "truth":  # a set of runs with tables of its own: each run, then the set's tables
        written = _report_truth(run_dir, manifest)
    else:
        check_run_tree(run_dir)
        written = rebuild(run_dir)
    print(f"rebuilt {len(written)} files in {args.run_dir}")
    return 0


def _report_truth(parent: Path, manifest: dict[str, Any]) -> list[Path]:
    """``bench report`` of a ``bench truth`` folder: the sub-run folders checked, then the truth tables,
    which rebuild every sub-run (its reliability card with the ``truth`` column)."""
    values = manifest.get("config")
    if not isinstance(values, dict):
        raise BenchError(f"{parent / 'manifest.json'} records no config; re-run python -m bench truth")
    cfg = RunConfig.from_dict(with_added_keys(values))
    for record in manifest.get("runs") or []:
        sub = parent / str(record.get("run", ""))
        check_entry(sub, folder=True)
        check_run_tree(sub)
    return rebuild_truth(
        parent,
        name=cfg.name,
        options=cfg.data.options,
        stats=stats_settings(cfg),
        share_margin=cfg.truth.share_margin,
        bootstrap=cfg.truth.bootstrap,
    )


def cmd_plan(args: argparse.Namespace) -> int:
    if not 0 < args.power < 1:
        raise BenchError(f"--power must be in (0, 1), got {args.power}")
    cfg = load_config(args.config, args.overrides)
    table, cost = plan_sample(cfg, args.pilot, args.power)
    print(render_plan(cfg, table, cost, args.power))
    return 0


def cmd_truth(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    for flag, key in (("name", "name"), ("results", "results_dir")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(str(value))}")
    if args.device != "auto":
        overrides.append(f"device={json.dumps(args.device)}")
    out = run_truth(load_config(args.config, overrides), progress=not args.no_progress)
    print(
        f"results in {out}: truth.md, truth_models.csv, truth.csv, truth_agreement.csv, report.html; "
        f"one run per condition in {out / 'runs'}"
    )
    return 0


COMMANDS = {
    "run": cmd_run,
    "list": cmd_list,
    "train": cmd_train,
    "tune": cmd_tune,
    "report": cmd_report,
    "plan": cmd_plan,
    "truth": cmd_truth,
}


INTERRUPTED = "interrupted; finished work is kept and a re-run resumes"
TERMINATED = "terminated; finished work is kept and a re-run resumes"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt: a command stops the
    same way (locks released, nothing half-written) and says what was kept."""


def stop_now(signum: int, message: str) -> None:
    """End the process at once with ``message`` and status 128 + ``signum`` (no cleanup: what is on
    disk was written atomically)."""
    if message:
        os.write(2, (message + "\n").encode())
    os._exit(128 + signum)


@contextlib.contextmanager
def signals() -> Iterator[None]:
    """While a command runs: the first SIGINT or SIGTERM stops it (KeyboardInterrupt /
    :class:`Terminated`), a second one while it stops ends the process at once with its line. The
    previous handlers come back afterwards (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if stopping:
            stop_now(signum, TERMINATED if signum == signal.SIGTERM else INTERRUPTED)
        stopping.append(signum)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    with signals():
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                args = parser.parse_args(["run", *(argv or [])])
            tune_allocator()  # CPU: no page faults on every large activation (bench/perf/allocator.py)
            return COMMANDS[args.command](args)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # `python -m bench list | head`: the reader has gone; end quietly, as SIGPIPE would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        except OSError as exc:  # a place that cannot be read or written, met outside pneumobench's own writes
            print(f"error: {os_error(exc, doing='read or write')}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            print(TERMINATED if terminated else INTERRUPTED, file=sys.stderr)
            return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
