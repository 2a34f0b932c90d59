#!/usr/bin/env python
"""Multi-task unsupervised domain adaptation (DenseMTL, paper section 4.5).

Trains on a labelled source domain and an unlabelled target domain with one patch discriminator per task and
per supervised scale (entropy maps for segmentation, source-normalised inverse depth for depth), lambda_adv =
5e-3, and reports target-domain results (mIoU, depth with per-image median scaling, delta vs STL-UDA).

With no arguments: toycity flat -> toycity textured (S-D, ResNet-18, 128x256) in a few minutes on the CPU.
--src/--tgt/--tasks/--block pick an experiment in experiments/uda/<src>2<tgt>/; --no-adapt trains the
source-only baseline with the same data and schedule; --config FILE runs any experiment file (the *_oracle
files train on the labelled target, as the upper bound).

examples:
  python scripts/uda.py                                        # toycity demo
  python scripts/uda.py --no-adapt                             # its source-only baseline
  python scripts/uda.py --src synthia --tgt cityscapes         # paper (GPU; SYNTHIA_DIR, CITYSCAPES_DIR)
  python scripts/uda.py --src vkitti2 --tgt cityscapes --tasks S   # STL-UDA reference for the delta
"""

from __future__ import annotations

from mtlda.cli import experiment_parser, print_config, resolve_config, run_main
from mtlda.scenarios import scenario_class
from mtlda.scenarios.runner import (
    checkpoint_config,
    evaluate_and_report,
    experiment_file,
    experiment_stem,
    train_and_report,
)

PAIRS = {("toycity", "toycity"): "toycity", ("synthia", "cityscapes"): "synthia2cityscapes",
         ("vkitti2", "cityscapes"): "vkitti2cityscapes"}


def main() -> int:
    parser = experiment_parser(__doc__, default_config=None)
    parser.add_argument("--src", choices=("toycity", "synthia", "vkitti2"), default="toycity",
                        help="source domain (default: toycity flat style)")
    parser.add_argument("--tgt", choices=("toycity", "cityscapes"), default=None,
                        help="target domain (default: cityscapes for real sources, toycity textured for toycity)")
    parser.add_argument("--tasks", default="S,D", help="task codes (default: S,D; one task: STL-UDA)")
    parser.add_argument("--block", choices=("mteb", "padnet", "none"), default="mteb", help="exchange block")
    parser.add_argument("--no-adapt", action="store_true", help="source-only baseline (no discriminators)")
    args = parser.parse_args()
    if args.evaluate and args.config is None:
        cfg = checkpoint_config(args.evaluate, args.overrides)
    else:
        if args.config is None:
            tgt = args.tgt or ("toycity" if args.src == "toycity" else "cityscapes")
            if (args.src, tgt) not in PAIRS:
                raise ValueError(f"no experiments for {args.src} -> {tgt}; pairs: "
                                 + ", ".join(f"{s} -> {t}" for s, t in PAIRS))
            stem = experiment_stem(args.tasks, args.block, "_source-only" if args.no_adapt else "")
            args.config = str(experiment_file("uda", PAIRS[(args.src, tgt)], stem))
        cfg = resolve_config(args)
    if args.print_config:
        print_config(cfg)
        return 0
    factory = scenario_class(cfg.scenario)
    if args.evaluate:
        evaluate_and_report(cfg, factory, args.evaluate)
    else:
        train_and_report(cfg, factory, resume=args.resume, split_name="target val")
    return 0


if __name__ == "__main__":
    run_main(main)
