"""Evaluate a checkpoint on a validation split and print the results table with its protocol.

The checkpoint's own config (data set, tasks, model, protocol) is used; --set changes it, e.g. the split or the
evaluation resolution. Labels are compared at data.val_height x data.val_width (set them to the label files'
size, e.g. 1024x2048 for Cityscapes, to evaluate at full label resolution; predictions are upsampled to it).

--depth-by-class also splits the depth errors by ground-truth semantic class, next to the per-pixel prior's
(eval-<ckpt>-depth-by-class.md/json; needs semantic labels in the validation split).

--adabn N first re-estimates every BatchNorm layer's statistics on the first N images of the data set's training
split (AdaBN; labels unused): for a model trained on a source domain only, the adaptation baseline that needs no
training. Files eval-<ckpt>-adabnN.md/json, experiment name <name>_adabnN (aggregate them over seeds with
mtlda results --stem eval-last-adabnN RUNS); the checkpoint is not changed. --adabn-layers re-estimates only the
named layers, a comma-separated list of module names or their parents (e.g. encoder.bn1, the stem;
encoder.layer4,decoders) and keeps the others' statistics: where in the network the target's statistics act
(files eval-<ckpt>-adabnN-<layers, sorted, joined by +>).

examples:
  mtlda evaluate runs/toycity_sdn_mteb/s0/best.pt
  mtlda evaluate runs/toycity_sde_pretrain/s0/best.pt --depth-by-class
  mtlda evaluate ckpt.pt --set data.val_split=test --set data.val_height=1024 --set data.val_width=2048
  mtlda evaluate runs/uda_toycity_sd_mteb_source-only/s0/last.pt --adabn 60
  mtlda evaluate runs/uda_toycity_sd_mteb_source-only/s0/last.pt --adabn 240 --adabn-layers encoder.bn1
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mtlda.cli import print_config
from mtlda.scenarios.runner import checkpoint_config, evaluate_and_report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint written by a training command (last.pt, best.pt)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the checkpoint's config (repeatable)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--workdir", help="where the eval-<ckpt>*.md/json files go (default: the checkpoint's folder)")
    parser.add_argument("--depth-by-class", action="store_true",
                        help="also split the depth errors by ground-truth semantic class (and the pixel prior's)")
    parser.add_argument("--adabn", type=int, default=0, metavar="N",
                        help="re-estimate the BatchNorm statistics on the first N training-split images first (AdaBN)")
    parser.add_argument("--adabn-layers", default="", metavar="NAMES",
                        help="with --adabn: re-estimate only these BatchNorm layers (comma-separated module names or "
                             "parents, e.g. encoder.bn1)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    if args.adabn < 0 or args.adabn == 1:
        parser.error(f"--adabn: the number of images must be >= 2 (or 0: off), got {args.adabn}")
    layers = sorted({name.strip() for name in args.adabn_layers.split(",") if name.strip()})
    if layers and not args.adabn:
        parser.error("--adabn-layers names the layers that --adabn N re-estimates: add --adabn N")
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    cfg = checkpoint_config(args.checkpoint, overrides, args.workdir)
    if args.print_config:
        print_config(cfg)
        return 0
    evaluate_and_report(cfg, args.checkpoint, depth_by_class=args.depth_by_class, adabn_images=args.adabn,
                        adabn_layers=layers)
    return 0
