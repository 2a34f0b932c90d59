"""Turn a foreign weight file into an mtlda checkpoint that evaluate/predict/export and ``sde.init_from`` read.

The checkpoint is ``{"modules": {name: state_dict}, "config": the experiment with the import's overrides,
"iteration": 0, "source": provenance}``: tensors, numbers, strings and plain containers only, written atomically.

An S-D-N file does not record its fusion order (B1): ``calibrate=N`` scores every candidate order on the first N
images of the experiment's validation split and imports the best one (the scores go into the provenance).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from mtlda.config import load_config, to_dict
from mtlda.data.batch import Batch, collate
from mtlda.data.registry import build_dataset
from mtlda.scenarios.checkpoint import save_checkpoint
from mtlda.scenarios.dense import DenseScenario, target_names
from mtlda.schema import ExperimentConfig
from mtlda.weights import densemtl, threeways
from mtlda.weights.calibration import fusion_order_candidates, fusion_order_scores
from mtlda.weights.files import load_state_dict, sha256_of
from mtlda.weights.mapping import WeightImportError
from mtlda.weights.targets import build_experiment_model, build_experiment_modules, experiment_scenario

FORMATS = ("densemtl", "threeways")
CALIBRATION_BATCH = 2


def required_overrides(kind: str) -> tuple[str, ...]:
    """The ``--set`` overrides every model imported from ``kind`` runs with (input normalisation, depth encoding)."""
    if kind not in FORMATS:
        raise WeightImportError(f"unknown weight format {kind!r}; choose one of {', '.join(FORMATS)}")
    return densemtl.CONFIG_OVERRIDES if kind == "densemtl" else threeways.CONFIG_OVERRIDES


def import_config(kind: str, config: str | os.PathLike, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The experiment ``config`` with :func:`required_overrides`, then ``overrides``; WeightImportError naming the
    settings that do not mirror the ``kind`` model."""
    cfg = load_config(config, [*required_overrides(kind), *overrides])
    if kind == "densemtl":
        problems = densemtl.official_model_mismatches(cfg.model)
        if cfg.scenario == "sde":
            problems.append("the experiment is an sde one; the released DenseMTL models are supervised "
                            "(use experiments/supervised/<data set>/sd_mteb.yaml or sdn_mteb.yaml)")
    else:
        problems = threeways.threeways_setting_mismatches(cfg)
    if problems:
        raise WeightImportError(f"{config} does not mirror the {kind} model: {'; '.join(problems)}")
    return cfg


def calibration_batches(scenario: DenseScenario, images: int) -> list[Batch]:
    """The first ``images`` samples of the experiment's validation split (unaugmented), in batches of
    CALIBRATION_BATCH; the data set root comes from the config (``data.root``) or its environment variable."""
    cfg = scenario.cfg
    dataset = build_dataset(cfg.data, cfg.data.val_split, train=False, tasks=target_names(scenario.tasks))
    count = min(images, len(dataset))
    return [collate([dataset[i] for i in range(start, min(start + CALIBRATION_BATCH, count))])
            for start in range(0, count, CALIBRATION_BATCH)]


def calibrate_fusion_order(cfg: ExperimentConfig, state: dict, tasks: Sequence[str], images: int,
                           source: str) -> tuple[str, dict[str, float]]:
    """(best fusion order, order -> score) of the official ``state`` on ``images`` validation images; see
    :func:`~mtlda.weights.calibration.fusion_order_scores` for the score."""
    if images < 1:
        raise WeightImportError(f"--images {images}: calibrate on at least 1 validation image")
    originals, _ = densemtl.split_aliases(state, source)
    scenario = experiment_scenario(cfg)
    batches = calibration_batches(scenario, images)
    candidates = fusion_order_candidates(originals, tasks, dataset=cfg.data.dataset)
    scores = fusion_order_scores(lambda: build_experiment_model(cfg), candidates, batches, scenario.tasks)
    return max(scores, key=scores.get), scores


def _convert_densemtl(path: Path, modules: dict[str, nn.Module], cfg: ExperimentConfig, fusion_order: str | None,
                      side_order: Sequence[int] | None, calibrate: int | None) -> tuple[dict[str, dict], dict[str, Any]]:
    state, metadata = load_state_dict(path, str(path))
    model = modules["model"]
    calibration = None
    if calibrate is not None:
        if fusion_order is not None:
            raise WeightImportError("give either --fusion-order or --calibrate-on, not both")
        fusion_order, scores = calibrate_fusion_order(cfg, state, model.tasks, calibrate, str(path))
        calibration = {"split": cfg.data.val_split, "images": calibrate, "scores": scores}
    result = densemtl.convert_densemtl(state, model.tasks, fusion_order, side_order, model.state_dict(), str(path),
                                       dataset=cfg.data.dataset)
    source = {
        "format": "densemtl", "file": path.name, "sha256": sha256_of(path), "tasks": result.tasks,
        "stages": result.stages, "side_order": result.side_order, "fusion_order": result.fusion_order,
        "fusion_order_is_default": result.fusion_order == densemtl.default_fusion_order(result.tasks),
        "fusion_order_calibration": calibration,
        "aliases_verified": result.aliases_verified, "conversions": result.conversions, "metadata": metadata,
    }
    return {"model": result.state}, source


def _convert_threeways(path: Path, modules: dict[str, nn.Module]) -> tuple[dict[str, dict], dict[str, Any]]:
    files, metadata = threeways.read_threeways(path)
    targets = {name: module.state_dict() for name, module in modules.items()}
    states = threeways.threeways_to_mtlda(files, targets, str(path))
    digests = ({name: sha256_of(path / name) for name in threeways.FILE_RULES} if path.is_dir()
               else {path.name: sha256_of(path)})
    source = {
        "format": "threeways", "file": path.name, "sha256": digests, "disp_side_order": list(threeways.DISP_SIDE_ORDER),
        "conversions": [f"pose.pth net.3 rows 0-{threeways.POSE_OUTPUTS - 1} (first pose) -> decoder.predict; "
                        f"rows {threeways.POSE_OUTPUTS}-11 (second pose, unused with pair inputs) dropped"],
        "metadata": metadata,
    }
    return states, source


def import_weights(
    source: str | os.PathLike,
    kind: str,
    config: str | os.PathLike,
    out: str | os.PathLike,
    fusion_order: str | None = None,
    side_order: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
    calibrate: int | None = None,
) -> dict[str, Any]:
    """Convert ``source`` (a DenseMTL ``.pkl``, or a 3-ways model folder or zip) for the experiment ``config`` and
    write the mtlda checkpoint ``out``. Returns the checkpoint's ``source`` provenance entry.

    Every tensor of the file is mapped and the result loaded strictly into the experiment's modules before
    anything is written; WeightImportError (naming keys, shapes or settings) otherwise. ``calibrate``: choose the
    S-D-N fusion order on that many validation images (:func:`calibrate_fusion_order`) instead of ``fusion_order``.
    """
    path = Path(source)
    if not path.exists():
        raise WeightImportError(f"weight file not found: {path}")
    cfg = import_config(kind, config, overrides)
    modules = build_experiment_modules(cfg, "meta")
    if kind == "densemtl":
        states, provenance = _convert_densemtl(path, modules, cfg, fusion_order, side_order, calibrate)
    else:
        if fusion_order is not None or side_order is not None or calibrate is not None:
            raise WeightImportError("--fusion-order, --side-order and --calibrate-on apply to DenseMTL files only")
        states, provenance = _convert_threeways(path, modules)
    for name, module in modules.items():
        module.load_state_dict(states[name], strict=True, assign=True)
    provenance["config"] = str(config)
    provenance["config_overrides"] = [*required_overrides(kind), *overrides]
    checkpoint = {
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "config": to_dict(cfg),
        "iteration": 0,
        "source": provenance,
    }
    save_checkpoint(checkpoint, out)
    return provenance
