"""Precompute surface normals from a data set's depth, once, so that training does not derive them per step.

For every depth source of the data set (its loader's depth_files: Cityscapes disparity maps with their camera
JSON, Synthia Depth/Depth/*.png, Virtual KITTI 2 Scene*/*/frames/depth/Camera_0/depth_*.png) the normals are
computed at the file's resolution with mtlda.geometry.normals_from_depth and written to
<out>/normals_mtlda/<path relative to the root>.png (16-bit, invalid pixels 0; see mtlda/data/normals_io.py).
<out> is the data set root unless --out names another folder (for a read-only data set); training reads the
files from data.normals_root (default: the data set root), so train with --set data.normals_root=<out>.

Files already written are skipped, so an interrupted run resumes; every file is written under a temporary name
and renamed when complete. Data sets with ground-truth normals (NYUDv2) need nothing. Without --root the data
set's environment variable names the folder.

examples:
  python scripts/prepare_normals.py --dataset cityscapes --root $CITYSCAPES_DIR
  python scripts/prepare_normals.py --dataset vkitti2 --root /data/vkitti2 --device cuda --batch-size 16
  python scripts/prepare_normals.py --dataset synthia --root /readonly/synthia --out ~/synthia-normals
"""

from __future__ import annotations

import argparse
import errno
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mtlda.data.base import DenseDataset
from mtlda.data.catalog import dataset_class, dataset_names, describe_datasets
from mtlda.data.io import DatasetError
from mtlda.data.normals_io import NORMALS_DIR, normals_path, write_normals
from mtlda.data.sampling import own_process_group
from mtlda.errors import UserInputError
from mtlda.files import WriteError
from mtlda.geometry import normals_from_depth


class _DepthFiles(Dataset):
    """(path, depth (1, H, W), mask (1, H, W), K (3, 3)) per depth file, read in loader workers."""

    def __init__(self, loader: type[DenseDataset], root: Path, files: list[Path]) -> None:
        self.loader, self.root, self.files = loader, root, files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Path, torch.Tensor, torch.Tensor, torch.Tensor]:
        path = self.files[index]
        depth, valid, K = self.loader.depth_for_normals(self.root, path)
        depth_t = torch.from_numpy(depth)[None]
        mask = torch.from_numpy(valid)[None] & (depth_t > 0) & (depth_t <= self.loader.max_depth)
        return path, depth_t, mask, K


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {name} asked for a GPU but none is available; use --device cpu")
    return torch.device(name)


def _write(path: Path, normals: np.ndarray, valid: np.ndarray, root: Path, out: Path | None) -> None:
    """Write one normal map; a data set that refuses it (read-only) is an error naming ``--out``."""
    try:
        write_normals(path, normals, valid)
    except WriteError as err:
        cause = err.__cause__
        if out is not None or getattr(cause, "errno", None) not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise WriteError(f"cannot write the normals into the data set {root} ({cause.strerror}): pass --out DIR to "
                         "write them elsewhere (and train with --set data.normals_root=DIR)") from None


def prepare_normals(dataset: str, root: Path, device: str = "auto", batch_size: int = 8, workers: int = 0,
                    progress: bool = True, out: Path | None = None) -> tuple[int, int]:
    """Write the missing normal maps of ``dataset`` under ``out`` (None: ``root``); returns (written, skipped)."""
    loader = dataset_class(dataset)
    if loader.has_normals_gt:
        raise UserInputError(f"{dataset} ships ground-truth normals; there is nothing to prepare")
    if batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")
    if workers < 0:
        raise UserInputError(f"--workers must be 0 (read in the main process) or more, got {workers}")
    if not root.is_dir():
        raise DatasetError(f"--root {root} is not a folder; point it at the extracted {dataset} data set")
    files = loader.depth_files(root)
    if not files:
        raise DatasetError(f"no depth files of {dataset} under {root}; {loader.download_hint(loader.depth_kind, root)}")
    todo = [f for f in files if not normals_path(root, f, out).is_file()]
    target = _pick_device(device)
    batches = DataLoader(_DepthFiles(loader, root, todo), batch_size=batch_size, num_workers=workers,
                         collate_fn=list, worker_init_fn=own_process_group)
    with tqdm(total=len(todo), desc=f"normals {dataset}", unit="map", disable=not progress) as bar:
        for items in batches:
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
                    _write(normals_path(root, path, out), n, v, root, out)
            bar.update(len(items))
    return len(todo), len(files) - len(todo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="data sets:\n" + describe_datasets())
    parser.add_argument("--dataset", required=True, choices=dataset_names(), help="data set format of --root")
    parser.add_argument("--root", type=Path, help="the data set folder (default: the data set's environment variable)")
    parser.add_argument("--out", type=Path,
                        help=f"write {NORMALS_DIR}/ under this folder instead of the root (read-only data sets)")
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="depth maps per batch (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="file-reading worker processes (default 2)")
    args = parser.parse_args(argv)
    loader = dataset_class(args.dataset)
    root = args.root.expanduser() if args.root is not None else loader.root_from_environment()
    out = args.out.expanduser() if args.out is not None else None
    written, skipped = prepare_normals(args.dataset, root, args.device, args.batch_size, args.workers, out=out)
    print(f"normals: {written} written, {skipped} already present, under {(out or root) / NORMALS_DIR}")
    if out is not None:
        print(f"the loaders read them with normals_root={out}")
    return 0

