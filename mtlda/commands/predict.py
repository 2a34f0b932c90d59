"""Predict every task of a trained model on arbitrary images and write colour-coded results and arrays.

Each image is resized to the model's training resolution (--size H W to choose another: metric depth depends on
it), predicted, and the outputs resized back to the image's size. For each image IMG and task T it writes, into
--out: IMG_T.png (colour-coded) and IMG_T.npy (the decoded map: class ids, metres, unit normals (3, H, W), edge
probabilities; disp: metres up to scale).

examples:
  mtlda predict runs/toycity_sdn_mteb/s0/best.pt street.png --out predictions/
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mtlda.api import image_file, load_model
from mtlda.data.io import write_npy
from mtlda.errors import UserInputError
from mtlda.panel_layout import write_picture


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint of a trained model")
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                        help="network input size (default: the model's training resolution)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    for path in args.images:
        image_file(path)
    stems: dict[str, Path] = {}
    for path in args.images:
        if path.stem in stems:
            raise UserInputError(f"{stems[path.stem]} and {path} would write the same {path.stem}_* files: predict "
                                 "them in separate runs with different --out folders (or rename one)")
        stems[path.stem] = path
    model = load_model(args.checkpoint, args.device)
    size = tuple(args.size) if args.size else None
    if args.out.exists() and not args.out.is_dir():
        raise UserInputError(f"--out {args.out} is a file: give a folder")
    for path in args.images:
        out = model.predict(path, size=size)
        stem = args.out / path.stem
        for name, task in model.tasks.items():
            write_picture(stem.with_name(f"{stem.name}_{name}.png"), task.visualise(out.raw[name])[0])
            write_npy(stem.with_name(f"{stem.name}_{name}.npy"), out.maps[name].cpu().numpy())
        print(f"{path} -> {stem}_*.png")
    return 0
