"""Export a trained mtlda model for inference without the training code: TorchScript or ONNX.

The exported model takes `image` (B, 3, H, W) float32 RGB in [0, 1] and returns the raw full-resolution outputs,
one per task in sorted task-name order (e.g. depth, normals, semseg). FILE.json, written beside it, lists the
outputs with their shapes and how to decode each (e.g. depth in metres = s / max(y, 1e-6) - c). H and W are fixed
at export (default: the checkpoint's evaluation size); the batch size is free. ONNX export needs the onnxscript
package (pip install "mtlda[onnx]", which also installs onnxruntime to run the result).

examples:
  python scripts/export.py runs/toycity_sdn_mteb/s0/best.pt --format onnx --out model.onnx
  python scripts/export.py cs_sdn.pt --format torchscript --out model.ts --height 512 --width 1024
"""

from __future__ import annotations

import argparse
import json

from mtlda.export import EXPORT_FORMATS, export_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="an mtlda checkpoint (training run or scripts/import_weights.py)")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--out", required=True, help="the file to write (its description goes to FILE.json)")
    parser.add_argument("--height", type=int, help="input height (default: the checkpoint's evaluation height)")
    parser.add_argument("--width", type=int, help="input width (default: the checkpoint's evaluation width)")
    args = parser.parse_args(argv)
    description = export_model(args.checkpoint, args.format, args.out, args.height, args.width)
    print(f"wrote {args.out}\n{json.dumps(description['outputs'], indent=2)}")
    return 0

