#!/usr/bin/env python
"""Predict every task of a trained model on arbitrary images and write colour-coded results.

Images of any size are padded (reflection) to a size the network accepts and the outputs cropped back, so every
output has the input's size. For each image IMG it writes, into --out: IMG_semseg.png (palette colours),
IMG_semseg_ids.png (class ids), IMG_depth.png (colour map) and IMG_depth.npy (metres), IMG_normals.png
((n+1)/2 as RGB), IMG_edges.png (probability as grey), and IMG_disp.png (the depth of the disparity head, up to
scale, as a colour map) for self-supervised depth models.

examples:
  python scripts/predict.py runs/toycity_sdn_mteb/s0/best.pt street.png --out predictions/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mtlda.cli import run_main
from mtlda.data.io import read_rgb
from mtlda.data.registry import dataset_info
from mtlda.scenarios.checkpoint import load_checkpoint
from mtlda.scenarios.common import build_model, build_task_objects
from mtlda.scenarios.runner import checkpoint_config, set_up
from mtlda.scenarios.sde import sde_heads, sde_tasks


def pad_multiple(model, limit: int = 256) -> int:
    """The smallest power-of-two multiple that every padded size must have for this network."""
    m = 16
    while m <= limit:
        try:
            model.valid_input_size(m, m)
            model.valid_input_size(2 * m, 3 * m)
            return m
        except ValueError:
            m *= 2
    raise ValueError("could not find an input size this network accepts")


def to_bgr_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] RGB -> (H, W, 3) uint8 BGR for cv2.imwrite."""
    array = (image.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(array[:, :, ::-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint of a trained model")
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args()
    cfg = checkpoint_config(args.checkpoint, [f"device={args.device}"] if args.device else [])
    _, device = set_up(cfg)
    info = dataset_info(cfg.data)
    if cfg.scenario == "sde":
        tasks = sde_tasks(cfg, info)
        model = build_model(cfg, {}, device, extra_heads=sde_heads(cfg, info.num_classes))
    else:
        tasks = build_task_objects(cfg, info)
        model = build_model(cfg, tasks, device)
    model.load_state_dict(load_checkpoint(args.checkpoint, device)["modules"]["model"])
    model.eval()
    multiple = pad_multiple(model)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = torch.from_numpy(read_rgb(path)).permute(2, 0, 1).float().div(255).to(device)
        h, w = image.shape[-2:]
        ph, pw = -h % multiple, -w % multiple
        padded = F.pad(image[None], (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        with torch.no_grad():
            preds = model(padded)
        stem = args.out / path.stem
        for name, task in tasks.items():
            raw = F.interpolate(preds[(name, 0)].float(), size=padded.shape[-2:], mode="bilinear",
                                align_corners=False)[..., :h, :w]
            decoded = task.decode(raw)
            cv2.imwrite(f"{stem}_{name}.png", to_bgr_uint8(task.visualise(decoded)[0]))
            if name == "semseg":
                cv2.imwrite(f"{stem}_semseg_ids.png", decoded.argmax(1)[0].byte().cpu().numpy())
            if name == "depth":
                np.save(f"{stem}_depth.npy", decoded[0, 0].cpu().numpy().astype(np.float32))
        print(f"{path} -> {stem}_*.png")
    return 0


if __name__ == "__main__":
    run_main(main)
