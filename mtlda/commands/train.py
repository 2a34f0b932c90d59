"""Supervised multi-task learning (DenseMTL, paper section 4.2).

With no arguments: trains the mTEB model (S-D-N, ResNet-18, 128x256) on the built-in toycity data for a few
minutes on the CPU, evaluates it and prints a results table next to trivial baselines (and the multi-task delta
when single-task references are recorded). --dataset/--tasks/--block pick an experiment in
experiments/supervised/<dataset>/ (<codes>_<block>.yaml, <code>_stl.yaml for one task); --config FILE runs any
experiment file (e.g. the paper's survey-decoder baselines sd_mtl.yaml, sdn_padnet-original.yaml).

examples:
  mtlda train                                                    # the demo
  mtlda train --tasks S --record-reference                       # single-task reference (recorded for the delta)
  mtlda train --dataset cityscapes --tasks S,D                   # paper setting (GPU; CITYSCAPES_DIR set)
  torchrun --nproc_per_node 4 -m mtlda train --dataset nyudv2 --tasks S,D,N,E
  mtlda train --resume --workdir runs/toycity_sdn_mteb/s0
  mtlda train --evaluate runs/toycity_sdn_mteb/s0/best.pt
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mtlda.cli import (
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
from mtlda.data.catalog import dataset_names
from mtlda.schema import ExperimentConfig


def parser() -> argparse.ArgumentParser:
    p = experiment_parser(__doc__)
    p.add_argument("--dataset", choices=dataset_names(toycity=True), help="data set (default: toycity, built in)")
    p.add_argument("--tasks", help="task codes among S,D,N,E, e.g. S,D (default: S,D,N)")
    p.add_argument("--block", choices=block_choices(),
                   help="exchange block of the 3-ways decoders (default: mteb; one task: the single-task baseline)")
    return p


def config_of(args: argparse.Namespace) -> ExperimentConfig:
    refuse_selection_with_config(args, ("dataset", "tasks", "block"))
    if args.evaluate and not args.config and not (args.dataset or args.tasks or args.block):
        return evaluation_config(args)
    config = args.config
    if config is None:
        codes = parse_task_codes("S,D,N" if args.tasks is None else args.tasks)
        config = experiment_file("supervised", args.dataset or "toycity", experiment_stem(codes, args.block or "mteb"))
    return resolve_config(args, config)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_experiment(args, config_of(args))
