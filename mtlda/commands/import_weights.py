"""Import published weights into an mtlda checkpoint (evaluate, predict, export, or sde.init_from).

--from densemtl: an official DenseMTL state dict ({sy,vk,cs}_densemtl_{SD,SDN}.pkl) with the experiment that mirrors
it (supervised/<data set>/sd_mteb.yaml or sdn_mteb.yaml). The checkpoint's config gets model.input_norm=monodepth,
tasks.depth_inv_scale=655.36 and tasks.depth_inv_offset=0.01 (the official input and depth conventions). S-D-N
files do not record the order their fusion convs were trained with: --list-fusion-orders shows the candidates,
--fusion-order picks one (default: sorted), --calibrate-on DIR scores all of them on the first --images N
validation images of the experiment's data set in the folder DIR and imports the best (the scores go into the
checkpoint's provenance).

--from threeways: the self-supervised depth model of Hoyer et al. (the unzipped folder holding encoder.pth, depth.pth,
pose_encoder.pth, pose.pth, or the zip) with experiments/sde/cityscapes/pretrain.yaml; the result is an SDE pretrain
checkpoint for sde.init_from.

examples:
  python scripts/import_weights.py cs_densemtl_SDN.pkl --from densemtl \\
      --config experiments/supervised/cityscapes/sdn_mteb.yaml --out cs_sdn.pt
  python scripts/import_weights.py cs_densemtl_SDN.pkl --from densemtl --calibrate-on $CITYSCAPES_DIR --images 20 \\
      --config experiments/supervised/cityscapes/sdn_mteb.yaml --out cs_sdn.pt
  python scripts/import_weights.py --list-fusion-orders --config experiments/supervised/cityscapes/sdn_mteb.yaml
  python scripts/import_weights.py mono_cityscapes_1024x512_r101dil_aspp_dec6_lr5_fd2_crop512x512bs4/ \\
      --from threeways --config experiments/sde/cityscapes/pretrain.yaml --out sde_pretrain.pt
"""

from __future__ import annotations

import argparse
import json

from mtlda.cli import find_config
from mtlda.errors import UserInputError
from mtlda.weights import FORMATS, default_fusion_order, fusion_orders, import_weights
from mtlda.weights.importer import import_config
from mtlda.weights.targets import experiment_heads

CALIBRATION_IMAGES = 20


def parse_side_order(text: str) -> list[int]:
    """"1,0" -> [1, 0]; UserInputError for anything else."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserInputError(f"--side-order {text!r}: give the scales as comma-separated integers, e.g. 1,0") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", help="the weight file (.pkl) or 3-ways model folder / zip")
    parser.add_argument("--from", dest="kind", choices=FORMATS, default="densemtl", help="format of the source")
    parser.add_argument("--config", required=True, help="the experiment that mirrors the source model")
    parser.add_argument("--out", help="the mtlda checkpoint to write")
    parser.add_argument("--fusion-order", help="S-D-N fusion order name (see --list-fusion-orders; default sorted)")
    parser.add_argument("--calibrate-on", metavar="DIR",
                        help="choose the S-D-N fusion order on validation images of the experiment's data set in DIR "
                             "(instead of --fusion-order)")
    parser.add_argument("--images", type=int, default=CALIBRATION_IMAGES, metavar="N",
                        help=f"validation images --calibrate-on scores (default {CALIBRATION_IMAGES})")
    parser.add_argument("--side-order", help="official active_scales, e.g. 1,0 for DA models (default: detected)")
    parser.add_argument("--list-fusion-orders", action="store_true", help="print the candidate fusion orders and exit")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the experiment (repeatable)")
    args = parser.parse_args(argv)
    args.config = str(find_config(args.config))  # experiments/... also from outside the repository
    if args.list_fusion_orders:
        tasks = sorted(experiment_heads(import_config(args.kind, args.config, args.overrides)))
        default = default_fusion_order(tasks)
        for name in fusion_orders(tasks):
            print(name + ("  (default: mtlda's sorted order)" if name == default else ""))
        return 0
    if not args.source or not args.out:
        raise UserInputError("give the source weights and --out FILE (or --list-fusion-orders)")
    side_order = parse_side_order(args.side_order) if args.side_order else None
    overrides, calibrate = list(args.overrides), None
    if args.calibrate_on:
        overrides.append(f"data.root={args.calibrate_on}")
        calibrate = args.images
    provenance = import_weights(args.source, args.kind, args.config, args.out, args.fusion_order, side_order,
                                overrides, calibrate)
    summary = {k: v for k, v in provenance.items() if k not in ("conversions", "metadata")}
    print(f"wrote {args.out}\n{json.dumps(summary, indent=2)}")
    return 0

