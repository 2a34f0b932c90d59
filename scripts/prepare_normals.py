#!/usr/bin/env python
"""Precompute surface normals from a data set's depth, once, so that training does not derive them per step.

For every depth source of the data set (Cityscapes: disparity/*/*/*_disparity.png with the camera JSON; Synthia:
Depth/Depth/*.png; Virtual KITTI 2: Scene*/*/frames/depth/Camera_0/depth_*.png) the normals are computed at the
file's resolution with mtlda.geometry.normals_from_depth and written to <root>/normals_mtlda/<same relative
path>.png (16-bit, invalid pixels 0; see mtlda/data/normals_io.py). The loaders use these files when present.

Files already written are skipped, so an interrupted run resumes; every file is written under a temporary name
and renamed when complete. NYUDv2 ships ground-truth normals and needs nothing.

examples:
  python scripts/prepare_normals.py --dataset cityscapes --root $CITYSCAPES_DIR
  python scripts/prepare_normals.py --dataset vkitti2 --root /data/vkitti2 --device cuda --batch-size 16
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mtlda.cli import run_main
from mtlda.data import cityscapes, synthia, vkitti2
from mtlda.data.io import DatasetError
from mtlda.data.normals_io import normals_path, write_normals
from mtlda.data.registry import DEPTH_CAPS
from mtlda.geometry import normals_from_depth

SOURCES: dict[str, ModuleType] = {"cityscapes": cityscapes, "synthia": synthia, "vkitti2": vkitti2}


class _DepthFiles(Dataset):
    """(path, depth (1, H, W), mask (1, H, W), K (3, 3)) per depth file, read in loader workers."""

    def __init__(self, module: ModuleType, root: Path, files: list[Path], depth_cap: float) -> None:
        self.module, self.root, self.files, self.depth_cap = module, root, files, depth_cap

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Path, torch.Tensor, torch.Tensor, torch.Tensor]:
        path = self.files[index]
        depth, valid, K = self.module.depth_for_normals(self.root, path)
        depth_t = torch.from_numpy(depth)[None]
        mask = torch.from_numpy(valid)[None] & (depth_t > 0) & (depth_t <= self.depth_cap)
        return path, depth_t, mask, K


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for a GPU but none is available; use --device cpu")
    return torch.device(name)


def prepare_normals(dataset: str, root: Path, device: str = "auto", batch_size: int = 8, workers: int = 0,
                    progress: bool = True) -> tuple[int, int]:
    """Write the missing normal maps of ``dataset`` under ``root``; returns (written, skipped)."""
    if dataset == "nyudv2":
        raise ValueError("nyudv2 ships ground-truth normals (normals/<n>.png); there is nothing to prepare")
    if dataset not in SOURCES:
        raise ValueError(f"unknown --dataset {dataset!r}; choose one of {', '.join(SOURCES)}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if not root.is_dir():
        raise DatasetError(f"--root {root} is not a folder")
    module = SOURCES[dataset]
    files = module.depth_files(root)
    if not files:
        raise DatasetError(f"no depth files of {dataset} under {root}; {module.DOWNLOAD_HINT}")
    todo = [f for f in files if not normals_path(root, f).is_file()]
    target = _pick_device(device)
    loader = DataLoader(_DepthFiles(module, root, todo, DEPTH_CAPS[dataset]), batch_size=batch_size,
                        num_workers=workers, collate_fn=list)
    with tqdm(total=len(todo), desc=f"normals {dataset}", unit="map", disable=not progress) as bar:
        for items in loader:
            by_size = defaultdict(list)
            for item in items:
                by_size[tuple(item[1].shape)].append(item)
            for group in by_size.values():
                depth = torch.stack([g[1] for g in group]).to(target)
                mask = torch.stack([g[2] for g in group]).to(target)
                K = torch.stack([g[3] for g in group]).to(target)
                normals, valid = normals_from_depth(depth, K, mask)
                normals = normals.permute(0, 2, 3, 1).cpu().numpy()
                valid = valid[:, 0].cpu().numpy()
                for (path, *_), n, v in zip(group, normals, valid):
                    write_normals(normals_path(root, path), n, v)
            bar.update(len(items))
    return len(todo), len(files) - len(todo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted([*SOURCES, "nyudv2"]),
                        help="data set format of --root")
    parser.add_argument("--root", required=True, type=Path, help="the data set folder")
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="depth maps per batch (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="file-reading worker processes (default 2)")
    args = parser.parse_args(argv)
    written, skipped = prepare_normals(args.dataset, args.root.expanduser(), args.device, args.batch_size,
                                       args.workers)
    print(f"normals: {written} written, {skipped} already present, under {args.root / 'normals_mtlda'}")
    return 0


if __name__ == "__main__":
    run_main(main)
