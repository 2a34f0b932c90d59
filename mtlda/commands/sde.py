"""Segmentation with self-supervised monocular depth (DenseMTL, paper section 4.4 and appendix B.2.2).

Two stages: "pretrain" trains a single-branch self-supervised depth model (encoder + disparity decoder + pose net,
Monodepth2 photometric loss on frames -1, 0, +1); "multitask" trains segmentation + self-supervised depth with an
exchange block (--block mteb | padnet | none), initialised from the pretrain checkpoint (--init-from).

With no arguments both stages run on the built-in toycity sequences in a few minutes on the CPU: the pretraining
into runs/toycity_sde_pretrain/s<seed>, then the mTEB model from its last.pt into runs/toycity_sde_sd_mteb/s<seed>.
Each stage prints a results table (next to trivial baselines): depth after pretraining vs at initialisation, then
segmentation + depth after the multi-task stage vs at its initialisation. --dataset/--stage/--block pick an
experiment in experiments/sde/<dataset>/ (pretrain.yaml, sd_<block>.yaml, s_stl.yaml for segmentation alone);
--config FILE runs any experiment file.

In the two-stage run, --workdir DIR puts the stages in DIR/pretrain and DIR/sd_<block>, and --resume continues
every stage that has a last.pt (and starts the others).

examples:
  mtlda sde                                   # the demo: both stages on toycity
  mtlda sde --stage pretrain                  # only the pretraining
  mtlda sde --stage multitask --block padnet --init-from runs/toycity_sde_pretrain/s0/last.pt
  mtlda sde --dataset cityscapes --stage pretrain     # paper setting (GPU; CITYSCAPES_DIR set)
  mtlda sde --evaluate runs/toycity_sde_sd_mteb/s0/best.pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mtlda.cli import (
    block_choices,
    evaluation_config,
    experiment_file,
    experiment_parser,
    print_config,
    resolve_config,
)
from mtlda.data.catalog import dataset_names
from mtlda.distributed import shutdown_distributed
from mtlda.errors import UserInputError
from mtlda.scenarios.checkpoint import isolated_rng
from mtlda.scenarios.runner import build_scenario, evaluate_and_report, report, train
from mtlda.scenarios.sde import STAGES, load_pretrained_depth
from mtlda.schema import ExperimentConfig

Results = dict[str, dict[str, float]]


def parser() -> argparse.ArgumentParser:
    p = experiment_parser(__doc__)
    p.add_argument("--stage", choices=STAGES, help="run one stage (default: both, pretrain then multitask)")
    p.add_argument("--block", choices=block_choices(), help="exchange block of the multi-task stage (default: mteb)")
    p.add_argument("--init-from", metavar="CKPT",
                   help="pretrain checkpoint the multi-task stage starts from (default: the experiment's "
                        "sde.init_from, the pretrain run of the same seed)")
    p.add_argument("--dataset", choices=dataset_names(toycity=True, sequences=True),
                   help="data set with sequences (default: toycity, built in)")
    return p


def stage_config(args: argparse.Namespace, stage: str | None, workdir: str | None = None,
                 init_from: str | None = None) -> ExperimentConfig:
    """The config of one stage: the chosen experiment (or --config) with the flags and --set applied."""
    overrides = [f"sde.init_from={init_from}"] if init_from else []
    if args.config is None:
        stage = stage or ("multitask" if args.block else "pretrain")
        stem = "pretrain" if stage == "pretrain" else f"sd_{args.block or 'mteb'}"
        config = experiment_file("sde", args.dataset or "toycity", stem)
    else:
        if args.dataset or args.block:
            raise UserInputError("--dataset/--block select an experiment file, but --config names one already: "
                                 "drop them, or change the experiment with --set")
        config = args.config
        overrides += [f"sde.stage={stage}"] if stage else []
    stage_args = argparse.Namespace(**{**vars(args), "workdir": workdir or args.workdir})
    return resolve_config(stage_args, config, overrides)


def initial_results(cfg: ExperimentConfig) -> Results:
    """Validation metrics of the stage's model before training (the same seeded initialisation as the run; every
    rank takes part in the evaluation)."""
    with isolated_rng():
        engine, scenario = build_scenario(cfg, train=False, show_progress=False)
        if cfg.sde.stage == "multitask":
            load_pretrained_depth(scenario.inference_model(), scenario.extra.get("pose"), cfg.sde.init_from,
                                  engine.device)
        return scenario.evaluate_tasks(engine)


def run_stage(cfg: ExperimentConfig, args: argparse.Namespace, resume: bool) -> None:
    """Train one stage and print its table: trivial baselines, the model at initialisation, the final model."""
    engine, scenario, _ = train(cfg, resume=resume, allow_changed=args.allow_changed)
    final = dict(scenario.last_results)
    initial = initial_results(cfg)
    if engine.is_main:
        start = "at initialisation" + (" (from the pretrain checkpoint)" if cfg.sde.stage == "multitask" else "")
        sde = cfg.sde
        note = (f"disp: depth = 1 / (1/{sde.max_depth:g} + (1/{sde.min_depth:g} - 1/{sde.max_depth:g}) * disparity) "
                "of the scale-0 sigmoid disparity, scored by the depth protocol above; the trivial depth predictions "
                "(mean training depth, global or per pixel) are median-scaled the same way")
        report(cfg, scenario, final, f"{cfg.name} (sde {sde.stage}, final, iteration {engine.iteration})",
               extra_rows={start: initial}, notes=[note])


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.evaluate:
        stated = args.config or args.dataset or args.stage or args.block
        cfg = stage_config(args, args.stage) if stated else evaluation_config(args)
        if args.print_config:
            print_config(cfg)
        else:
            evaluate_and_report(cfg, args.evaluate)
        return 0
    if args.stage or args.config:
        cfg = stage_config(args, args.stage, init_from=args.init_from)
        if args.print_config:
            print_config(cfg)
        else:
            run_stage(cfg, args, args.resume)
            shutdown_distributed()
        return 0
    if args.init_from:
        raise UserInputError("--init-from starts the multi-task stage from an existing pretrain checkpoint: use it "
                             "with --stage multitask")
    block = args.block or "mteb"
    root = Path(args.workdir) if args.workdir else None
    pretrain = stage_config(args, "pretrain", workdir=str(root / "pretrain") if root else None)
    checkpoint = str(Path(pretrain.workdir) / "last.pt")
    multitask = stage_config(args, "multitask", workdir=str(root / f"sd_{block}") if root else None,
                             init_from=checkpoint)
    if args.print_config:
        print_config(pretrain)
        print("---")
        print_config(multitask)
        return 0
    for cfg in (pretrain, multitask):
        resume = args.resume and (Path(cfg.workdir) / "last.pt").is_file()
        if args.resume and not resume:
            print(f"{cfg.name}: no {Path(cfg.workdir) / 'last.pt'} yet, starting this stage", file=sys.stderr)
        run_stage(cfg, args, resume)
    shutdown_distributed()
    return 0
