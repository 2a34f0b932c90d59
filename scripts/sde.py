#!/usr/bin/env python
"""Segmentation with self-supervised monocular depth (DenseMTL, paper section 4.4 and appendix B.2.2).

Two stages: "pretrain" trains a single-branch self-supervised depth model (encoder + disparity decoder + pose net,
Monodepth2 photometric loss on frames -1, 0, +1); "multitask" trains segmentation + self-supervised depth with an
exchange block (--block mteb | padnet | none), initialised from the pretrain checkpoint (--init-from).

With no arguments both stages run on the built-in toycity sequences in a few minutes on the CPU: the pretraining
into runs/toycity_sde_pretrain/s0, then the mTEB model from its last.pt into runs/toycity_sde_sd_mteb/s0. Each
stage prints a results table (next to trivial baselines): depth after pretraining vs at initialisation, then
segmentation + depth after the multi-task stage vs at its initialisation. --dataset/--stage/--block pick an
experiment in experiments/sde/<dataset>/ (pretrain.yaml, sd_<block>.yaml); --config FILE runs any experiment file.

In the two-stage run, --workdir DIR puts the stages in DIR/pretrain and DIR/sd_<block>, and --resume continues
every stage that has a last.pt (and starts the others).

examples:
  python scripts/sde.py                                   # the demo: both stages on toycity
  python scripts/sde.py --stage pretrain                  # only the pretraining
  python scripts/sde.py --stage multitask --block padnet --init-from runs/toycity_sde_pretrain/s0/last.pt
  python scripts/sde.py --dataset cityscapes --stage pretrain     # paper setting (GPU; CITYSCAPES_DIR set)
  python scripts/sde.py --dataset cityscapes --stage multitask --block mteb
  python scripts/sde.py --resume                          # continue the demo where it stopped
  python scripts/sde.py --evaluate runs/toycity_sde_sd_mteb/s0/best.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtlda.cli import experiment_parser, print_config, resolve_config, run_main
from mtlda.scenarios.engine import Engine
from mtlda.scenarios.runner import EXPERIMENTS, checkpoint_config, evaluate_and_report, report, train
from mtlda.scenarios.sde import STAGES, SDEScenario, load_pretrained_depth
from mtlda.schema import ExperimentConfig

DATASETS = ("toycity", "cityscapes")
BLOCKS = ("mteb", "padnet", "none")
Results = dict[str, dict[str, float]]


def parse_args() -> argparse.Namespace:
    parser = experiment_parser(__doc__, default_config=None)
    parser.add_argument("--stage", choices=STAGES, help="run one stage (default: both, pretrain then multitask)")
    parser.add_argument("--block", choices=BLOCKS, help="exchange block of the multi-task stage (default: mteb)")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="pretrain checkpoint the multi-task stage starts from (default: the experiment's "
                             "sde.init_from, the pretrain run of the same seed)")
    parser.add_argument("--dataset", choices=DATASETS, help="data set with sequences (default: toycity, built in)")
    return parser.parse_args()


def experiment_path(dataset: str, stage: str, block: str) -> Path:
    """``experiments/sde/<dataset>/pretrain.yaml`` or ``.../sd_<block>.yaml``."""
    path = EXPERIMENTS / "sde" / dataset / ("pretrain.yaml" if stage == "pretrain" else f"sd_{block}.yaml")
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"no experiment {path.relative_to(EXPERIMENTS.parent)}; available for {dataset}: "
                                f"{', '.join(have) or 'none'} (or pass --config FILE)")
    return path


def stage_config(args: argparse.Namespace, stage: str | None, workdir: str | None = None,
                 init_from: str | None = None) -> ExperimentConfig:
    """The config of one stage: the chosen experiment (or --config) with the flags and --set applied."""
    overrides = []
    if args.config is None:
        stage = stage or ("multitask" if args.block else "pretrain")
        config = str(experiment_path(args.dataset or "toycity", stage, args.block or "mteb"))
    else:
        config = args.config
        overrides += [f"sde.stage={stage}"] if stage else []
        overrides += [f"data.dataset={args.dataset}"] if args.dataset else []
        overrides += [f"model.block={args.block}"] if args.block else []
    if init_from:
        overrides.append(f"sde.init_from={init_from}")
    stage_args = argparse.Namespace(**{**vars(args), "config": config, "workdir": workdir or args.workdir})
    return resolve_config(stage_args, overrides)


def initial_results(cfg: ExperimentConfig, engine: Engine) -> Results:
    """Validation metrics of the stage's model before training (the same seeded initialisation as the run)."""
    scenario = SDEScenario(cfg, engine, train=False)
    if cfg.sde.stage == "multitask":
        load_pretrained_depth(scenario.model, scenario.pose_net, cfg.sde.init_from, engine.device)
    return scenario.evaluate_tasks(engine)


def run_stage(cfg: ExperimentConfig, resume: bool) -> None:
    """Train one stage and print its table: trivial baselines, the model at initialisation, the final model."""
    engine, scenario, _ = train(cfg, SDEScenario, resume=resume)
    initial = initial_results(cfg, engine)
    if engine.is_main:
        sde = cfg.sde
        start = "at initialisation" + (" (from the pretrain checkpoint)" if sde.stage == "multitask" else "")
        note = (f"disp: depth = 1 / (1/{sde.max_depth:g} + (1/{sde.min_depth:g} - 1/{sde.max_depth:g}) * disparity) "
                "of the scale-0 sigmoid disparity, scored by the depth protocol above; the trivial depth predictions "
                "(mean training depth, global or per pixel) are median-scaled the same way")
        report(cfg, scenario, scenario.last_results, f"{cfg.name} (sde {sde.stage}, final, iteration {engine.iteration})",
               extra_rows={start: initial}, notes=[note])


def evaluate(args: argparse.Namespace) -> None:
    if args.config is None and not (args.dataset or args.stage or args.block):
        cfg = checkpoint_config(args.evaluate, args.overrides)
    else:
        cfg = stage_config(args, args.stage)
    if args.print_config:
        print_config(cfg)
        return
    evaluate_and_report(cfg, SDEScenario, args.evaluate)


def main() -> int:
    args = parse_args()
    if args.evaluate:
        evaluate(args)
        return 0
    if args.stage or args.config:
        cfg = stage_config(args, args.stage, init_from=args.init_from)
        if args.print_config:
            print_config(cfg)
        else:
            run_stage(cfg, args.resume)
        return 0
    if args.init_from:
        raise ValueError("--init-from starts the multi-task stage from an existing pretrain checkpoint: use it with "
                         "--stage multitask")
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
        run_stage(cfg, resume)
    return 0


if __name__ == "__main__":
    run_main(main)
