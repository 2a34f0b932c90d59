"""Check a data set folder before training: folders (each missing one with the archive that provides it), file
counts per split, and decoded samples: unreadable or corrupt files, label values outside the data set's label
table, files of one sample with different sizes, depth ranges.

By default a spot check decodes 8 samples of every split (--samples N), spread evenly from the first to the last;
--full decodes every file of every split, with a progress bar. Without --root the data set's environment variable
(CITYSCAPES_DIR, SYNTHIA_DIR, VKITTI2_DIR, NYUDV2_DIR) names the folder.

Exit code 0 when the folder is usable (notes, e.g. counts that differ from the official release, are printed
but do not fail), 2 with one line per problem on stderr otherwise.

examples:
  python scripts/check_data.py --dataset cityscapes --root $CITYSCAPES_DIR
  python scripts/check_data.py --dataset synthia --full
  python scripts/check_data.py --dataset vkitti2 --root /data/vkitti2 --variation 15-deg-left
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mtlda.data.catalog import dataset_class, dataset_names, describe_datasets
from mtlda.data.checks import SPOT_CHECK_SAMPLES, CheckSettings, Report
from mtlda.data.errors import DatasetError
from mtlda.errors import UserInputError


def check_data(dataset: str, root: Path, settings: CheckSettings = CheckSettings(), root_source: str = "--root",
               report: Report | None = None) -> list[str]:
    """Check ``root`` as a ``dataset`` folder; prints notes and returns the problems (empty when usable).

    ``root_source`` names where ``root`` came from (``--root`` or an environment variable) in messages.
    """
    loader = dataset_class(dataset)
    if not root.is_dir():
        return [f"{root} is not a folder; point {root_source} at the extracted {dataset} data set"]
    report = report or Report()
    loader.check(root, report, settings)
    return report.problems


def _loader_options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Add one option per loader option of the registered data sets (e.g. --variation); returns the data sets that
    accept each."""
    accepted: dict[str, set[str]] = {}
    for name in dataset_names():
        for key, help_text in dataset_class(name).config_options.items():
            if key not in accepted:
                parser.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None, help=help_text)
            accepted.setdefault(key, set()).add(name)
    return accepted


def _given_options(args: argparse.Namespace, accepted: dict[str, set[str]]) -> dict[str, Any]:
    options = {key: getattr(args, key) for key in accepted if getattr(args, key) is not None}
    for key in options:
        if args.dataset not in accepted[key]:
            raise UserInputError(f"--{key.replace('_', '-')} applies to {', '.join(sorted(accepted[key]))} only; "
                                 f"drop it for {args.dataset}")
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="data sets:\n" + describe_datasets())
    parser.add_argument("--dataset", required=True, choices=dataset_names(), help="data set format of the folder")
    parser.add_argument("--root", type=Path, help="the data set folder (default: the data set's environment variable)")
    parser.add_argument("--full", action="store_true", help="decode every sample of every split (slow)")
    parser.add_argument("--samples", type=int, default=SPOT_CHECK_SAMPLES,
                        help=f"samples decoded per split by the spot check (default {SPOT_CHECK_SAMPLES})")
    parser.add_argument("--normals-root", type=Path,
                        help="folder holding normals_mtlda when prepare_normals.py wrote it elsewhere (--out)")
    accepted = _loader_options(parser)
    args = parser.parse_args(argv)
    if args.samples < 1:
        raise UserInputError(f"--samples must be at least 1, got {args.samples}")
    loader = dataset_class(args.dataset)
    if args.root is not None:
        root, source = args.root.expanduser(), "--root"
    else:
        try:
            root, source = loader.root_from_environment(), loader.root_variable
        except DatasetError as err:
            raise DatasetError(f"no --root given and {err}") from None
        print(f"--root not given: using {loader.root_variable}={root}")
    settings = CheckSettings(full=args.full, samples=args.samples, progress=args.full,
                             options=_given_options(args, accepted),
                             normals_root=args.normals_root.expanduser() if args.normals_root else None)
    report = Report()
    problems = check_data(args.dataset, root, settings, source, report)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if root.is_dir():
        scope = "every sample" if args.full else f"spot check, up to {args.samples} per split"
        print(f"decoded {report.decoded} of {report.checked} checked samples ({scope})")
    if problems:
        return 2
    if report.checked < report.samples:
        print(f"{args.dataset} at {root}: no problem in the {report.checked} of {report.samples} samples checked; "
              "--full decodes every file")
    else:
        print(f"{args.dataset} at {root}: ok")
    return 0

