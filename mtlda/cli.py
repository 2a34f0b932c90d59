"""The command line: options every training command shares, experiment selection and config resolution (the
error conventions and exit codes are :mod:`mtlda.running`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mtlda.config import ConfigError, dump_config, load_config
from mtlda.errors import UserInputError
from mtlda.models.blocks import EXCHANGE_BLOCKS
from mtlda.scenarios.runner import checkpoint_config, evaluate_and_report, train_and_report
from mtlda.schema import ExperimentConfig
from mtlda.tasks import check_codes

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
# UDA experiment folders by (source, target) data set.
UDA_PAIRS = {("toycity", "toycity"): "toycity", ("synthia", "cityscapes"): "synthia2cityscapes",
             ("vkitti2", "cityscapes"): "vkitti2cityscapes"}


def find_config(path: str) -> Path:
    """An experiment file: the path as given, or relative to the packaged experiments (``experiments/...``)."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    parts = given.parts
    packaged = EXPERIMENTS.joinpath(*parts[1:]) if parts and parts[0] == "experiments" else EXPERIMENTS / given
    if packaged.is_file():
        return packaged
    if given.is_dir():
        raise ConfigError(f"{path} is a folder: pass one experiment file in it (see the experiments folder "
                          f"{EXPERIMENTS})")
    raise ConfigError(f"config file not found: {path} (see the experiments folder {EXPERIMENTS})")


def experiment_file(scenario: str, folder: str, stem: str) -> Path:
    """``experiments/<scenario>/<folder>/<stem>.yaml``, or an error listing the ones that exist."""
    path = EXPERIMENTS / scenario / folder / f"{stem}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise UserInputError(f"no experiment {scenario}/{folder}/{stem}.yaml; available for {folder}: "
                             f"{', '.join(have) or 'none'} (or pass --config FILE)")
    return path


def block_choices() -> tuple[str, ...]:
    """The registered exchange blocks (``--block`` choices)."""
    return EXCHANGE_BLOCKS.names()


def parse_task_codes(text: str) -> list[str]:
    """``"S,D"`` or ``"SD"`` -> ``["S", "D"]``; empty or unknown codes are an error (checked by the registry)."""
    codes = [c for c in text.replace(",", "").replace(" ", "")]
    check_codes(codes)
    return codes


def experiment_stem(codes: Sequence[str], block: str, suffix: str = "") -> str:
    """``<codes>_<block><suffix>`` (``<code>_stl<suffix>`` for one task), e.g. ``sdn_mteb``, ``s_stl``."""
    letters = "".join(codes).lower()
    return (f"{letters}_stl" if len(codes) == 1 else f"{letters}_{block}") + suffix


def experiment_parser(description: str) -> argparse.ArgumentParser:
    """The options every training script takes (``--config``, ``--set``, ``--workdir``, ...)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="experiment YAML file (instead of the selection options)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr.backbone=1e-4 (repeatable)")
    parser.add_argument("--workdir", help="run folder (default: the config's workdir, runs/<name>/s<seed>)")
    parser.add_argument("--seed", type=int, help="random seed (default: the config's seed)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last.pt")
    parser.add_argument("--allow-changed", nargs="+", default=[], metavar="KEY",
                        help="with --resume: config keys allowed to differ from the checkpoint's (e.g. optim.lr)")
    parser.add_argument("--evaluate", metavar="CKPT", help="only evaluate this checkpoint on the validation split")
    parser.add_argument("--record-reference", action="store_true",
                        help="store this single-task reference experiment's result (this seed) in the references "
                             "file (references.file; default: the packaged one)")
    parser.add_argument("--amp", nargs="?", const="bf16", choices=("bf16", "fp16"),
                        help="mixed precision (bf16 by default; fp16 with loss scaling on CUDA only)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's device, auto)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def common_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` assignments of the common options (--seed, --amp, --device, then every --set)."""
    overrides = []
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.amp:
        overrides += ["train.amp=true", f"train.amp_dtype={args.amp}"]
    if args.device:
        overrides.append(f"device={args.device}")
    return overrides + list(args.overrides)


def resolve_config(args: argparse.Namespace, config: str | Path | None,
                   extra_overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The config from ``config``, scenario flags (``extra_overrides``) and the common options (``--set`` last)."""
    overrides = [*extra_overrides, *common_overrides(args)]
    if args.workdir:
        overrides.append(f"workdir={args.workdir}")
    return load_config(find_config(str(config)) if config is not None else None, overrides)


def evaluation_config(args: argparse.Namespace) -> ExperimentConfig:
    """``--evaluate CKPT`` without an experiment: the checkpoint's own config with the common options; the
    eval-* files go to --workdir, by default the checkpoint's folder (as ``mtlda evaluate``)."""
    return checkpoint_config(args.evaluate, common_overrides(args), args.workdir)


def refuse_selection_with_config(args: argparse.Namespace, flags: Sequence[str]) -> None:
    """``--config`` names the experiment: selection flags next to it would be ignored, so they are an error."""
    given = [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f, None) not in (None, False)]
    if args.config and given:
        raise UserInputError(f"{', '.join(given)} select an experiment file, but --config names one already: drop "
                             "them, or change the experiment with --set (e.g. --set tasks.names=[S,D])")


def print_config(cfg: ExperimentConfig) -> None:
    sys.stdout.write(dump_config(cfg))


def run_experiment(args: argparse.Namespace, cfg: ExperimentConfig, split_name: str = "val") -> int:
    """What a training command does with its config: print it (--print-config), evaluate a checkpoint
    (--evaluate) or train, with its resume and reference options, and report."""
    if args.print_config:
        print_config(cfg)
    elif args.evaluate:
        evaluate_and_report(cfg, args.evaluate)
    else:
        train_and_report(cfg, resume=args.resume, allow_changed=args.allow_changed,
                         record_reference=args.record_reference, split_name=split_name)
    return 0
