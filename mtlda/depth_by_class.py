"""Where a depth model is wrong: its depth errors split by the ground-truth semantic class, next to the per-pixel
prior's (``mtlda evaluate CKPT --depth-by-class``).

A model can trail the prior overall while beating it on the objects the prior cannot know (cars, poles) and losing
on the layout it knows from the training labels (road, buildings); the overall AbsRel hides which. The split needs
semantic labels in the validation split (the checkpoint need not predict them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mtlda.baselines import fit_priors
from mtlda.data.registry import build_dataset
from mtlda.errors import UserInputError
from mtlda.files import write_text_atomic
from mtlda.metrics.depth import DepthByClassMetric
from mtlda.resize import resize_to
from mtlda.scenarios.checkpoint import isolated_rng
from mtlda.scenarios.dense import DenseScenario, evaluated_part
from mtlda.scenarios.engine import Engine
from mtlda.tasks import Task

PRIOR_ROW = "trivial: pixel prior"


def depth_task(tasks: Mapping[str, Task]) -> str:
    """The name of the task scored against ground-truth depth (``depth`` or the SDE's ``disp``)."""
    names = [name for name, task in tasks.items() if task.target_name == "depth"]
    if not names:
        raise UserInputError(f"--depth-by-class needs a model with a depth output; this one predicts {sorted(tasks)}")
    return names[0]


def labelled_validation_split(scenario: DenseScenario) -> Dataset:
    """The validation split with ground-truth depth and semantic labels (``data.max_val_samples`` applies); a
    data set without either fails here, before anything is evaluated."""
    depth_task(scenario.tasks)
    data = scenario.cfg.data
    return evaluated_part(build_dataset(data, data.val_split, train=False, tasks=["depth", "semseg"]), data)


@torch.no_grad()
def depth_by_class(scenario: DenseScenario, engine: Engine, val: Dataset,
                   model_row: str) -> dict[str, DepthByClassMetric]:
    """Row name -> per-class depth errors on ``val`` (:func:`labelled_validation_split`): ``model_row`` (the
    scenario's network) and the per-pixel prior fitted on the training split; reduced over ranks."""
    cfg, name = scenario.cfg, depth_task(scenario.tasks)
    task = scenario.tasks[name]
    with isolated_rng():
        train = build_dataset(cfg.data, cfg.data.train_split, train=False, tasks=["depth"])
        prior = fit_priors(train, {name: task})["pixel prior"][name].to(engine.device)
    model = scenario.inference_model().eval()
    rows = {row: DepthByClassMetric(scenario.info.num_classes, task.protocol) for row in (PRIOR_ROW, model_row)}
    for batch in scenario.validation_loader(val):
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


def report_depth_by_class(scenario: DenseScenario, engine: Engine, val: Dataset, checkpoint: str,
                          suffix: str = "") -> str:
    """Print and store ``eval-<checkpoint stem><suffix>-depth-by-class.md`` and ``.json`` (row -> class name ->
    share, abs_rel, bias, rmse) in the run folder; returns the markdown."""
    model_row = Path(checkpoint).name
    rows = depth_by_class(scenario, engine, val, model_row)
    names = scenario.info.class_names
    protocol = rows[model_row].protocol_description()
    text = "\n".join([
        f"## {scenario.cfg.name}: depth errors by ground-truth class ({scenario.info.name}, validation split "
        f"'{scenario.cfg.data.val_split}')", "", depth_by_class_table(rows, names), "",
        "bias: mean signed relative error (pred - gt) / gt, > 0 too far.", "", f"Protocol: {protocol}"]) + "\n"
    if engine.is_main:
        print(text)
        stem = Path(scenario.cfg.workdir) / f"eval-{Path(checkpoint).stem}{suffix}-depth-by-class"
        payload = {"checkpoint": str(checkpoint), "protocol": protocol,
                   "rows": {row: {"all": m.compute(), **{names[c]: v for c, v in m.per_class().items()}}
                            for row, m in rows.items()}}
        write_text_atomic(stem.with_name(stem.name + ".md"), text)  # the stem may hold dots (layer names)
        write_text_atomic(stem.with_name(stem.name + ".json"), json.dumps(payload, indent=1) + "\n")
    return text
