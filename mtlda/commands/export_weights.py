"""Write a weights-only file of a checkpoint: the model weights, the config and the metadata, without optimiser,
scheduler, scaler and RNG states (and without the discriminators and pose net only training needs).

The file is a fraction of last.pt's size (about a third with Adam) and is accepted wherever a trained model is:
``mtlda.load_model``, ``mtlda predict``, ``mtlda evaluate``, ``mtlda export``. It cannot resume training. It is
written atomically, keeping the checkpoint's provenance (mtlda version, git commit, time written).

examples:
  mtlda export-weights runs/toycity_sdn_mteb/s0/best.pt --out toycity_sdn_mteb.pt
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mtlda.files import refuse_overwriting_source
from mtlda.scenarios.checkpoint import load_checkpoint, save_checkpoint, weights_only


def export_weights(checkpoint: Path, out: Path) -> None:
    """Write the inference part of ``checkpoint`` (see :func:`weights_only`) to ``out``, atomically."""
    refuse_overwriting_source(out, checkpoint)
    ckpt = load_checkpoint(checkpoint)
    save_checkpoint({**weights_only(ckpt), "exported_from": checkpoint.name}, out)


def megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint (last.pt, best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the weights file to write (e.g. model.pt)")
    args = parser.parse_args(argv)
    export_weights(args.checkpoint, args.out)
    print(f"{args.out}: {megabytes(args.out)} (from {args.checkpoint}: {megabytes(args.checkpoint)})")
    return 0
