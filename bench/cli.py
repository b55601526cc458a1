"""The command line: ``python -m bench run | list | train | tune | report``.

Bad input (unknown names, bad values, missing or corrupt files) ends with one line
``error: <problem and fix>`` on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from bench.errors import BenchError

LIST_KINDS = ("models", "explainers", "metrics", "datasets")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="pneumoniamnist", help="registered dataset (default: %(default)s)")
    g.add_argument("--size", type=int, default=28, help="image size: 28, 64, 128 or 224 (default: %(default)s)")
    g.add_argument("--data-file", default=None,
                   help="a MedMNIST-style .npz (else env BENCH_DATA_FILE, else --data-root)")
    g.add_argument("--data-root", default=None,
                   help="medmnist root folder (else env BENCH_DATA_ROOT, else medmnist's default); "
                        "the file is downloaded there by medmnist when missing")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    from models.training import TrainConfig, TuneConfig

    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="pneumobench: a quantitative benchmark of attribution methods on chest X-ray classifiers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a benchmark config: explainers x metrics -> leaderboards and figures")
    run.add_argument("--config", default=None, help="TOML config (default: configs/quick.toml)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set explainers.names=[\"random\"] (repeatable)")
    run.add_argument("--name", default=None, help="run name: results/<name>/ (default: the config's name)")
    run.add_argument("--results", default=None, help="results folder (default: results)")
    _add_device(run)
    run.add_argument("--data-file", default=None, help="a MedMNIST-style .npz (overrides the config)")
    run.add_argument("--data-root", default=None, help="medmnist root folder (overrides the config)")
    run.add_argument("--executor", default="local", choices=("local", "ray"),
                     help="local: in this process (default); ray: one Ray task per unit of work")
    run.add_argument("--ray-address", default=None,
                     help="Ray cluster address for --executor ray (default: start a local instance)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    lst = sub.add_parser("list", help="list registered models, explainers, metrics or datasets")
    lst.add_argument("kind", nargs="?", choices=LIST_KINDS, help="what to list (default: everything)")

    d = TrainConfig()
    tr = sub.add_parser("train", help="train a model from scratch; writes a checkpoint + JSON sidecar")
    tr.add_argument("--model", default=d.model, help="registered model (default: %(default)s)")
    tr.add_argument("--epochs", type=int, default=d.epochs, help="(default: %(default)s)")
    tr.add_argument("--lr", type=float, default=d.lr, help="(default: %(default)s)")
    tr.add_argument("--optimizer", default=d.optimizer, help="adam | sgd (default: %(default)s)")
    tr.add_argument("--momentum", type=float, default=d.momentum,
                    help="SGD momentum, or Adam's beta1 (default: %(default)s)")
    tr.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    tr.add_argument("--batch-size", type=int, default=d.batch_size, help="(default: %(default)s)")
    tr.add_argument("--shift", type=int, default=d.shift, help="max random shift in px (default: %(default)s)")
    tr.add_argument("--class-weighting", default=d.class_weighting, help="balanced | none (default: %(default)s)")
    tr.add_argument("--select-on", default=d.select_on, help="val_loss | val_auc | val_acc (default: %(default)s)")
    tr.add_argument("--seed", type=int, default=d.seed, help="(default: %(default)s)")
    tr.add_argument("--out", default=None, help="checkpoint path (default: results/checkpoints/<model>-<size>px-seed<seed>-<key>.pt)")
    _add_device(tr)
    _add_data_args(tr)
    tr.add_argument("--no-progress", action="store_true")

    t = TuneConfig()
    tu = sub.add_parser("tune", help="fine-tune a checkpoint with frozen blocks; writes the 'post' checkpoint")
    tu.add_argument("--from", dest="parent", required=True, help="the parent ('pre') checkpoint")
    tu.add_argument("--unfreeze", default=",".join(t.unfreeze),
                    help="comma-separated top-level modules to train (default: %(default)s)")
    tu.add_argument("--epochs", type=int, default=t.epochs, help="(default: %(default)s)")
    tu.add_argument("--lr", type=float, default=t.lr, help="(default: %(default)s)")
    tu.add_argument("--optimizer", default=t.optimizer, help="adam | sgd (default: %(default)s)")
    tu.add_argument("--momentum", type=float, default=t.momentum, help="(default: %(default)s)")
    tu.add_argument("--weight-decay", type=float, default=t.weight_decay, help="(default: %(default)s)")
    tu.add_argument("--batch-size", type=int, default=t.batch_size, help="(default: %(default)s)")
    tu.add_argument("--shift", type=int, default=t.shift, help="(default: %(default)s)")
    tu.add_argument("--class-weighting", default=t.class_weighting, help="(default: %(default)s)")
    tu.add_argument("--select-on", default=t.select_on, help="(default: %(default)s)")
    tu.add_argument("--seed", type=int, default=t.seed, help="(default: %(default)s)")
    tu.add_argument("--out", default=None, help="checkpoint path (default: <parent>-post-<key>.pt)")
    _add_device(tu)
    _add_data_args(tu)
    tu.add_argument("--no-progress", action="store_true")

    rep = sub.add_parser("report", help="rebuild every table and figure of a run from its scores.csv")
    rep.add_argument("run_dir", help="results/<run-name>")
    return parser


def load_data(dataset: str, size: int, data_file: str | None, data_root: str | None, splits=("train", "val", "test")):
    """Load the named splits; the pneumoniamnist loader takes the file/root options."""
    from datasets import load_split

    options = {"size": size}
    if dataset == "pneumoniamnist":
        options.update(data_file=data_file, data_root=data_root)
    elif data_file or data_root:
        raise BenchError(f"--data-file/--data-root apply to pneumoniamnist, not {dataset!r}; drop them")
    return [load_split(dataset, s, **options) for s in splits]


def cmd_list(args: argparse.Namespace) -> int:
    from bench import catalog

    kinds = [args.kind] if args.kind else list(LIST_KINDS)
    for i, kind in enumerate(kinds):
        if i:
            print()
        print(catalog.describe(kind))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from models.training import TrainConfig, default_checkpoint_path, train_model

    cfg = TrainConfig(model=args.model, dataset=args.dataset, size=args.size, epochs=args.epochs, lr=args.lr,
                      optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
                      batch_size=args.batch_size, shift=args.shift, class_weighting=args.class_weighting,
                      select_on=args.select_on, seed=args.seed)
    cfg.validate()
    train, val, test = load_data(args.dataset, args.size, args.data_file, args.data_root)
    out = Path(args.out) if args.out else default_checkpoint_path(cfg, train.fingerprint)
    side = train_model(cfg, train, val, test, out=out, device=args.device, progress=not args.no_progress)
    _print_result(out, side)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from models.training import TuneConfig, default_tuned_path, tune_model

    cfg = TuneConfig(unfreeze=tuple(s.strip() for s in args.unfreeze.split(",") if s.strip()), epochs=args.epochs,
                     lr=args.lr, optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
                     batch_size=args.batch_size, shift=args.shift, class_weighting=args.class_weighting,
                     select_on=args.select_on, seed=args.seed)
    cfg.validate()
    if not Path(args.parent).is_file():
        raise BenchError(f"checkpoint {args.parent} not found; train one with `python -m bench train`")
    train, val, test = load_data(args.dataset, args.size, args.data_file, args.data_root)
    out = Path(args.out) if args.out else default_tuned_path(args.parent, cfg)
    side = tune_model(args.parent, cfg, train, val, test, out=out, device=args.device, progress=not args.no_progress)
    _print_result(out, side)
    c = side["comparison"]
    print("vs parent: " + ", ".join(f"{k} {v:+.4f}" for k, v in c["delta"].items())
          + f"; McNemar p = {c['mcnemar']['p_value']:.4g}; {c['images_changed_cell']} test images changed cell")
    return 0


def _print_result(out: Path, side: dict) -> None:
    t = side["test"]
    print(f"wrote {out} (+ {out.name}.json): best epoch {side['best_epoch']} on val; test ACC {t['acc']:.4f}, "
          f"AUC {t['auc']:.4f}, sensitivity {t['sensitivity']:.4f}, specificity {t['specificity']:.4f}; "
          f"{side['train_seconds']:.0f} s")


def cmd_run(args: argparse.Namespace) -> int:
    from bench import runner

    return runner.main(args)


def cmd_report(args: argparse.Namespace) -> int:
    from bench import report

    return report.main(args)


COMMANDS = {"run": cmd_run, "list": cmd_list, "train": cmd_train, "tune": cmd_tune, "report": cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or [])])
    try:
        from bench.allocator import tune_allocator

        tune_allocator()  # CPU: no page faults on every large activation (bench/allocator.py)
        return COMMANDS[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
