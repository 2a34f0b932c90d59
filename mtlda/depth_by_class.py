"""Where a depth model is wrong: its depth errors split by the ground-truth semantic class, next to the per-pixel
prior's (``mtlda evaluate CKPT --depth-by-class``).

A model can trail the prior overall while beating it on the objects the prior cannot know (cars, poles) and losing
on the layout it knows from the training labels (road, buildings); the overall AbsRel hides which. The split needs
semantic labels in the validation split (the checkpoint need not predict them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from mtlda.baselines import PRIOR_BATCH, fit_priors
from mtlda.data.batch import collate
from mtlda.data.registry import build_dataset
from mtlda.errors import UserInputError
from mtlda.files import write_text_atomic
from mtlda.metrics.depth import DepthByClassMetric
from mtlda.resize import resize_to
from mtlda.scenarios.checkpoint import isolated_rng
from mtlda.scenarios.dense import DenseScenario
from mtlda.scenarios.engine import Engine
from mtlda.tasks import Task

PRIOR_ROW = "trivial: pixel prior"


def depth_task(tasks: Mapping[str, Task]) -> str:
    """The name of the task scored against ground-truth depth (``depth`` or the SDE's ``disp``)."""
    names = [name for name, task in tasks.items() if task.target_name == "depth"]
    if not names:
        raise UserInputError(f"--depth-by-class needs a model with a depth output; this one predicts {sorted(tasks)}")
    return names[0]


@torch.no_grad()
def depth_by_class(scenario: DenseScenario, engine: Engine, model_row: str) -> dict[str, DepthByClassMetric]:
    """Row name -> per-class depth errors on the validation split: ``model_row`` (the scenario's network) and the
    per-pixel prior fitted on the training split."""
    cfg, name = scenario.cfg, depth_task(scenario.tasks)
    task = scenario.tasks[name]
    info = scenario.info
    if not info.class_names:
        raise UserInputError(f"--depth-by-class needs semantic labels; {info.name} has none")
    with isolated_rng():
        val = build_dataset(cfg.data, cfg.data.val_split, train=False, tasks=["depth", "semseg"])
        if cfg.data.max_val_samples and len(val) > cfg.data.max_val_samples:
            val = Subset(val, range(cfg.data.max_val_samples))
        train = build_dataset(cfg.data, cfg.data.train_split, train=False, tasks=["depth"])
        prior = fit_priors(train, {name: task})["pixel prior"][name].to(engine.device)
    model = scenario.inference_model().eval()
    rows = {row: DepthByClassMetric(info.num_classes, task.protocol) for row in (PRIOR_ROW, model_row)}
    for batch in DataLoader(val, batch_size=PRIOR_BATCH, collate_fn=collate, generator=torch.Generator()):
        batch = batch.to(engine.device)
        gt, valid, labels = task.target(batch), task.mask(batch), batch.targets["semseg"]
        with engine.autocast():
            pred = model(batch.image)[(name, 0)].float()
        decoded = task.decode(resize_to(pred, gt.shape[-2:]))
        rows[model_row].update(decoded, gt, labels, valid)
        rows[PRIOR_ROW].update(prior.expand_as(gt), gt, labels, valid)
    for metric in rows.values():
        metric.all_reduce()
    return rows


def depth_by_class_table(rows: Mapping[str, DepthByClassMetric], class_names: tuple[str, ...]) -> str:
    """Markdown: one line per class (share of the evaluated pixels, then AbsRel, bias and RMSE of every row)."""
    names = list(rows)
    header = "| class | pixels % | " + " | ".join(f"{r}: AbsRel ↓ | bias | RMSE m ↓" for r in names) + " |"
    lines = [header, "|---|---:|" + "---:|---:|---:|" * len(names)]
    per_row = {r: m.per_class() for r, m in rows.items()}
    for c in sorted(per_row[names[0]]):
        cells = [f"{per_row[r][c]['abs_rel']:.3f} | {per_row[r][c]['bias']:+.3f} | {per_row[r][c]['rmse']:.2f}"
                 for r in names]
        lines.append(f"| {class_names[c]} | {per_row[names[0]][c]['share']:.1f} | " + " | ".join(cells) + " |")
    overall = " | ".join(f"{m.compute()['abs_rel']:.3f} | - | -" for m in rows.values())
    lines.append(f"| all (pooled pixels) | 100 | {overall} |")
    return "\n".join(lines)


def report_depth_by_class(scenario: DenseScenario, engine: Engine, checkpoint: str) -> str:
    """Print and store ``eval-<checkpoint stem>-depth-by-class.md`` in the run folder; returns its text."""
    model_row = Path(checkpoint).name
    rows = depth_by_class(scenario, engine, model_row)
    protocol = rows[model_row].protocol_description()
    text = "\n".join([
        f"## {scenario.cfg.name}: depth errors by ground-truth class ({scenario.info.name}, validation split "
        f"'{scenario.cfg.data.val_split}')", "", depth_by_class_table(rows, scenario.info.class_names), "",
        "bias: mean signed relative error (pred - gt) / gt, > 0 too far.", "", f"Protocol: {protocol}"]) + "\n"
    if engine.is_main:
        print(text)
        write_text_atomic(Path(scenario.cfg.workdir) / f"eval-{Path(checkpoint).stem}-depth-by-class.md", text)
    return text
