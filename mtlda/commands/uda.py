"""Multi-task unsupervised domain adaptation (DenseMTL, paper section 4.5).

Trains on a labelled source domain and an unlabelled target domain with one patch discriminator per task and
per supervised scale (entropy maps for segmentation, source-normalised inverse depth for depth), the adversarial
terms summed over tasks (Eq. 9) with weight uda.lambda_adv (the paper's 5e-3 in the paper's experiments), and
reports target-domain results (mIoU, depth with per-image median scaling, delta vs STL-UDA).

With no arguments: toycity synthetic -> toycity textured (S-D, ResNet-18, lambda_adv 0.05) in a few minutes on
the CPU.
--src/--tgt/--tasks/--block pick an experiment in experiments/uda/<src>2<tgt>/; --no-adapt trains the
source-only baseline with the same data and schedule; --config FILE runs any experiment file (the *_oracle
files train on the labelled target, the upper bound).

examples:
  mtlda uda                                                    # toycity demo
  mtlda uda --no-adapt                                         # its source-only baseline
  mtlda uda --tasks S --record-reference                       # STL-UDA reference for the delta
  mtlda uda --src synthia --tgt cityscapes                     # paper (GPU; SYNTHIA_DIR, CITYSCAPES_DIR)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mtlda.cli import (
    UDA_PAIRS,
    block_choices,
    evaluation_config,
    experiment_file,
    experiment_parser,
    experiment_stem,
    parse_task_codes,
    refuse_selection_with_config,
    resolve_config,
    run_experiment,
)
from mtlda.errors import UserInputError
from mtlda.schema import ExperimentConfig

SOURCES = sorted({s for s, _ in UDA_PAIRS})
TARGETS = sorted({t for _, t in UDA_PAIRS})


def parser() -> argparse.ArgumentParser:
    p = experiment_parser(__doc__)
    p.add_argument("--src", choices=SOURCES, help="source domain (default: toycity synthetic style)")
    p.add_argument("--tgt", choices=TARGETS,
                   help="target domain (default: cityscapes for real sources, toycity textured for toycity)")
    p.add_argument("--tasks", help="task codes (default: S,D; one task: STL-UDA)")
    p.add_argument("--block", choices=block_choices(), help="exchange block (default: mteb)")
    p.add_argument("--no-adapt", action="store_true", help="source-only baseline (no discriminators)")
    return p


def config_of(args: argparse.Namespace) -> ExperimentConfig:
    refuse_selection_with_config(args, ("src", "tgt", "tasks", "block", "no_adapt"))
    if args.evaluate and not args.config and not (args.src or args.tgt or args.tasks or args.block):
        return evaluation_config(args)
    config = args.config
    if config is None:
        src = args.src or "toycity"
        tgt = args.tgt or ("toycity" if src == "toycity" else "cityscapes")
        if (src, tgt) not in UDA_PAIRS:
            raise UserInputError(f"no experiments for {src} -> {tgt}; pairs: "
                                 + ", ".join(f"{s} -> {t}" for s, t in UDA_PAIRS))
        stem = experiment_stem(parse_task_codes("S,D" if args.tasks is None else args.tasks), args.block or "mteb",
                               "_source-only" if args.no_adapt else "")
        config = experiment_file("uda", UDA_PAIRS[(src, tgt)], stem)
    return resolve_config(args, config)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_experiment(args, config_of(args), "target val")
