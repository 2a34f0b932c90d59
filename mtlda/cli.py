"""Command-line conventions shared by every script: options, config loading, errors and exit codes.

Bad input (a missing file, an unknown config key, an unset data set variable, a NaN loss) prints one line on
stderr naming the problem and its fix and exits with code 2, without a traceback (set ``MTLDA_DEBUG=1`` to see
one). Ctrl-C exits with 130 after the engine has saved ``last.pt``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mtlda.config import ConfigError, dump_config, load_config
from mtlda.schema import ExperimentConfig

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


def experiment_parser(description: str, default_config: str | None) -> argparse.ArgumentParser:
    """The options every training script takes (``--config``, ``--set``, ``--workdir``, ...)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config,
                        help=f"experiment YAML file (default: {default_config})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr.backbone=1e-4 (repeatable)")
    parser.add_argument("--workdir", help="run folder (default: the config's workdir, runs/<name>/s<seed>)")
    parser.add_argument("--seed", type=int, help="random seed (default: the config's seed)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last.pt")
    parser.add_argument("--evaluate", metavar="CKPT", help="only evaluate this checkpoint on the validation split")
    parser.add_argument("--amp", action="store_true", help="mixed precision (train.amp_dtype, bf16 by default)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's device, auto)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def resolve_config(args: argparse.Namespace, extra_overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The config from ``--config``, scenario flags (``extra_overrides``) and ``--set`` (which win)."""
    overrides = list(extra_overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.amp:
        overrides.append("train.amp=true")
    if args.device:
        overrides.append(f"device={args.device}")
    overrides += args.overrides
    if args.workdir:
        overrides.append(f"workdir={args.workdir}")
    if args.config is not None and not Path(args.config).is_file():
        raise ConfigError(f"config file not found: {args.config} (see the experiments/ folder)")
    return load_config(args.config, overrides)


def print_config(cfg: ExperimentConfig) -> None:
    sys.stdout.write(dump_config(cfg))


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's ``main`` with the error conventions above and exit with its code."""
    try:
        code = main() or 0
    except KeyboardInterrupt as stop:
        print(f"interrupted: {stop}" if str(stop) else "interrupted", file=sys.stderr)
        code = 130
    except USER_ERRORS as err:
        if os.environ.get("MTLDA_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        code = 2
    except RuntimeError as err:
        from mtlda.scenarios.engine import TrainingError

        if not isinstance(err, TrainingError) or os.environ.get("MTLDA_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)
