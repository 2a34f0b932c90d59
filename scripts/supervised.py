#!/usr/bin/env python
"""Supervised multi-task learning (DenseMTL, paper section 4.2).

With no arguments: trains the mTEB model (S-D-N, ResNet-18, 128x256) on the built-in toycity data for a few
minutes on the CPU, evaluates it and prints a results table next to trivial baselines (and the multi-task delta
when single-task references are recorded). --dataset/--tasks/--block pick an experiment in
experiments/supervised/<dataset>/; --config FILE runs any experiment file.

examples:
  python scripts/supervised.py                                   # the demo
  python scripts/supervised.py --tasks S                         # single-task reference (recorded for the delta)
  python scripts/supervised.py --dataset cityscapes --tasks S,D  # paper setting (GPU; CITYSCAPES_DIR set)
  torchrun --nproc_per_node 4 scripts/supervised.py --dataset nyudv2 --tasks S,D,N,E
  python scripts/supervised.py --resume --workdir runs/toycity_sdn_mteb/s0
  python scripts/supervised.py --evaluate runs/toycity_sdn_mteb/s0/best.pt
"""

from __future__ import annotations

from mtlda.cli import experiment_parser, print_config, run_main
from mtlda.scenarios.runner import (
    add_selection_options,
    checkpoint_config,
    config_from_args,
    evaluate_and_report,
    train_and_report,
)
from mtlda.scenarios.supervised import SupervisedScenario


def main() -> int:
    parser = experiment_parser(__doc__, default_config=None)
    add_selection_options(parser, default_codes="S,D,N", default_block="mteb")
    args = parser.parse_args()
    if args.evaluate and args.config is None and not (args.dataset or args.tasks or args.block):
        cfg = checkpoint_config(args.evaluate, args.overrides)
    else:
        cfg = config_from_args(args, "supervised", "S,D,N", "mteb")
    if args.print_config:
        print_config(cfg)
        return 0
    if args.evaluate:
        evaluate_and_report(cfg, SupervisedScenario, args.evaluate)
    else:
        train_and_report(cfg, SupervisedScenario, resume=args.resume)
    return 0


if __name__ == "__main__":
    run_main(main)
