#!/usr/bin/env python
"""Check a data set folder before training: folders, file counts per split, readable samples, label values,
depth ranges. Prints what is missing and where to get it.

Exit code 0 when the folder is usable (notes, e.g. counts that differ from the official release, are printed
but do not fail), 2 with one line per problem on stderr otherwise.

examples:
  python scripts/check_data.py --dataset cityscapes --root $CITYSCAPES_DIR
  python scripts/check_data.py --dataset vkitti2 --root /data/vkitti2 --variation 15-deg-left
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from mtlda.cli import run_main
from mtlda.data import cityscapes, nyudv2, synthia, vkitti2
from mtlda.data.io import DatasetError, read_png_unchanged, read_single_channel
from mtlda.data.labels import CITYSCAPES_LABELS, NYU40_CLASSES, SYNTHIA_CLASSES, decode_vkitti2_colors
from mtlda.data.registry import DEPTH_CAPS, LOADERS
from mtlda.data.toycity_export import METADATA_FILE

CHECK_SIZE = (128, 256)  # samples are read at this size (enough to exercise every reader)
SAMPLES_PER_SPLIT = 3
OFFICIAL_COUNTS = {
    "cityscapes": {"train": 2975, "val": 500},
    "synthia": {"train": 7520, "val": 1880},
    "vkitti2": {"Scene01": 447, "Scene02": 233, "Scene06": 270, "Scene18": 339, "Scene20": 837},
    "nyudv2": {"train": 795, "val": 654},
}
ERRORS = (DatasetError, FileNotFoundError, ValueError)


class Report:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def note(self, message: str) -> None:
        print(message)

    def problem(self, message: str) -> None:
        self.problems.append(message)


def _count_note(report: Report, dataset: str, what: str, found: int) -> None:
    expected = OFFICIAL_COUNTS[dataset].get(what)
    suffix = "" if expected in (None, found) else f" (the official release has {expected})"
    report.note(f"{dataset} {what}: {found} samples{suffix}")


def _check_samples(report: Report, dataset: Dataset, raw_label_problem: Callable[[int], str | None] | None) -> None:
    """Read a few samples of ``dataset``; report unreadable files, label ids outside the table, empty depth."""
    indices = sorted({0, len(dataset) // 2, len(dataset) - 1})[:SAMPLES_PER_SPLIT]
    for index in indices:
        try:
            sample = dataset[index]
        except ERRORS as err:
            report.problem(str(err))
            continue
        if raw_label_problem is not None:
            message = raw_label_problem(index)
            if message:
                report.problem(message)
        if "depth" in sample.targets:
            mask = sample.masks["depth"]
            if not mask.any():
                report.problem(f"{sample.id}: no valid depth pixel")
            else:
                depth = sample.targets["depth"][mask]
                report.note(f"{sample.id}: depth {float(depth.min()):.2f}..{float(depth.max()):.2f} m, "
                            f"{float(mask.float().mean()) * 100:.0f} % valid")


def _build(report: Report, name: str, root: Path, split: str, tasks: list[str], **options) -> Dataset | None:
    try:
        return LOADERS[name](root, split, tasks, CHECK_SIZE, depth_cap=DEPTH_CAPS[name], **options)
    except ERRORS as err:
        report.problem(str(err))
        return None


def _max_id_problem(path: Path, values: np.ndarray, largest: int, what: str) -> str | None:
    bad = np.unique(values[values > largest])
    return f"{path}: {what} ids {bad[:10].tolist()} are not in the label table (0..{largest})" if bad.size else None


def check_cityscapes(root: Path, report: Report, **_) -> None:
    for split in ("train", "val"):
        missing_folder = False
        for kind in ("leftImg8bit", "gtFine", "disparity", "camera"):
            if not (root / kind / split).is_dir():
                report.problem(f"missing {root / kind / split}; {cityscapes.DOWNLOAD_HINT}")
                missing_folder = True
        if missing_folder:
            continue
        stems = cityscapes.sample_stems(root, split)
        _count_note(report, "cityscapes", split, len(stems))
        for kind in ("gtFine", "disparity", "camera"):
            absent = [cityscapes.sample_path(root, kind, split, c, s) for c, s in stems
                      if not cityscapes.sample_path(root, kind, split, c, s).is_file()]
            if absent:
                report.problem(f"{len(absent)} of {len(stems)} {split} images have no {kind} file (first: "
                               f"{absent[0]}); {cityscapes.DOWNLOAD_HINT}")
        dataset = _build(report, "cityscapes", root, split, ["semseg", "depth"])
        if dataset is not None:
            largest = max(label_id for _, label_id, _, _, _ in CITYSCAPES_LABELS)

            def raw_problem(index: int, ds=dataset, split=split) -> str | None:
                path = cityscapes.sample_path(root, "gtFine", split, *ds.items[index])
                return _max_id_problem(path, read_single_channel(path, "label map"), largest, "label")

            _check_samples(report, dataset, raw_problem)
    if not (root / "leftImg8bit_sequence").is_dir():
        report.note("note: leftImg8bit_sequence is absent; it is needed only for data.frames (self-supervised depth): "
                    "leftImg8bit_sequence_trainvaltest.zip from https://www.cityscapes-dataset.com/downloads/")


def check_synthia(root: Path, report: Report, **_) -> None:
    for kind in ("rgb", "labels", "depth"):
        if not synthia.folder(root, kind).is_dir():
            report.problem(f"missing {synthia.folder(root, kind)}; {synthia.DOWNLOAD_HINT}")
    if report.problems:
        return
    toycity_copy = (root / METADATA_FILE).is_file()
    on_disk = {p.stem for p in synthia.folder(root, "rgb").glob("*.png")}
    for split in ("train", "val"):
        listed = synthia.split_names(split)
        found = sum(name in on_disk for name in listed)
        _count_note(report, "synthia", split, found)
        if found < len(listed) and not toycity_copy and found > 0:
            report.problem(f"only {found} of the {len(listed)} Synthia {split} images are present; "
                           f"{synthia.DOWNLOAD_HINT}")
        dataset = _build(report, "synthia", root, split, ["semseg", "depth"], allow_missing=toycity_copy)
        if dataset is not None:

            def raw_problem(index: int, ds=dataset) -> str | None:
                path = synthia.sample_path(root, "labels", ds.items[index])
                labels = read_single_channel(path, "Synthia label map", channel=0)
                return _max_id_problem(path, labels, len(SYNTHIA_CLASSES) - 1, "class")

            _check_samples(report, dataset, raw_problem)


def check_vkitti2(root: Path, report: Report, variation: str = "clone") -> None:
    scenes = {s: sum(1 for _ in vkitti2.frame_folder(root, s, variation, "rgb").glob("rgb_*.jpg"))
              for s in OFFICIAL_COUNTS["vkitti2"]}
    toycity_copy = (root / METADATA_FILE).is_file()
    for scene, count in scenes.items():
        if count:
            _count_note(report, "vkitti2", scene, count)
            if not (root / scene / variation / "intrinsic.txt").is_file():
                report.note(f"note: {root / scene / variation / 'intrinsic.txt'} is absent; the release's constant "
                            "camera is used (vkitti_2.0.3_textgt.tar.gz has the per-frame intrinsics)")
        elif not toycity_copy:
            report.problem(f"{vkitti2.frame_folder(root, scene, variation, 'rgb')} has no rgb_*.jpg; "
                           f"{vkitti2.DOWNLOAD_HINT}")
    for split in ("train", "val"):
        dataset = _build(report, "vkitti2", root, split, ["semseg", "depth"], variation=variation,
                         allow_missing=toycity_copy)
        if dataset is not None:

            def raw_problem(index: int, ds=dataset) -> str | None:
                scene, frame = ds.items[index]
                path = vkitti2.frame_path(root, scene, variation, "labels", frame)
                unknown = float((decode_vkitti2_colors(read_png_unchanged(path, "class map")) == 255).mean())
                return f"{path}: {unknown * 100:.1f} % of pixels have colours outside the palette" if unknown > 0.01 \
                    else None

            _check_samples(report, dataset, raw_problem)


def check_nyudv2(root: Path, report: Report, **_) -> None:
    for kind in ("gt_sets", "images", "segmentation", "depth", "normals", "edge"):
        if not (root / kind).is_dir():
            report.problem(f"missing {root / kind}; {nyudv2.DOWNLOAD_HINT}")
    if report.problems:
        return
    for split in ("train", "val"):
        dataset = _build(report, "nyudv2", root, split, ["semseg", "depth", "normals", "edges"])
        if dataset is None:
            continue
        _count_note(report, "nyudv2", split, len(dataset))

        def raw_problem(index: int, ds=dataset) -> str | None:
            path = nyudv2.sample_file(root, "segmentation", ds.items[index])
            return _max_id_problem(path, read_single_channel(path, "label map"), len(NYU40_CLASSES), "label")

        _check_samples(report, dataset, raw_problem)


CHECKS = {"cityscapes": check_cityscapes, "synthia": check_synthia, "vkitti2": check_vkitti2,
          "nyudv2": check_nyudv2}


def check_data(dataset: str, root: Path, variation: str = "clone") -> list[str]:
    """Check ``root`` as a ``dataset`` folder; prints notes and returns the problems (empty when usable)."""
    if dataset not in CHECKS:
        raise ValueError(f"unknown --dataset {dataset!r}; choose one of {', '.join(CHECKS)}")
    if not root.is_dir():
        return [f"{root} is not a folder; point --root at the extracted {dataset} data set"]
    report = Report()
    CHECKS[dataset](root, report, variation=variation)
    return report.problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(CHECKS), help="data set format of --root")
    parser.add_argument("--root", required=True, type=Path, help="the data set folder")
    parser.add_argument("--variation", default="clone", help="Virtual KITTI 2 variation (default clone)")
    args = parser.parse_args(argv)
    problems = check_data(args.dataset, args.root.expanduser(), args.variation)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.dataset} at {args.root}: ok")
    return 0


if __name__ == "__main__":
    run_main(main)
