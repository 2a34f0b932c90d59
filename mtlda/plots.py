"""PNG figures of training runs and results: loss and metric curves across seeds, per-class IoU bars, confusion
matrices. Every function writes one PNG of a documented pixel size (atomically) and returns its path.

Figures are drawn on matplotlib's Agg canvas through the object API (``Figure``), never through pyplot: no display,
no GUI backend and no global figure state, so importing this module changes nothing for a notebook's own plots.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mtlda.files import atomic_writer

Series = Sequence[tuple[int, float]]
RunScalars = Mapping[str, Series]

DPI = 100
# One subplot of :func:`training_curves`, (width, height) pixels.
CURVE_PANEL_PX = (480, 320)
IOU_BARS_PX = (1200, 500)
BANDS = ("minmax", "std", "none")
NORMALISATIONS = ("true", "pred", "all", None)

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
_COLOURS = matplotlib.colormaps["tab10"].colors
_PHASES = {"train": "training", "val": "validation", "test": "test"}


@contextmanager
def _figure(size_px: tuple[int, int]) -> Iterator[Figure]:
    """A constrained-layout figure of exactly ``size_px`` (width, height) pixels at :data:`DPI`, in the style."""
    width, height = size_px
    if width < 1 or height < 1:
        raise ValueError(f"figure size must be positive pixels, got {size_px}")
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        yield figure


def _save(figure: Figure, out: Path) -> Path:
    """Write ``figure`` to ``out`` (PNG) atomically, so a reader never sees half an image."""
    out = Path(out)
    with atomic_writer(out) as handle:
        figure.savefig(handle, dpi=DPI, format="png")
    return out


def default_curve_tags(tags: Sequence[str]) -> list[str]:
    """The tags :func:`training_curves` draws by default: ``train/total``, each ``train/<task>/weighted`` loss,
    then every ``val/...`` metric except per-class IoUs (``.../iou_<class>``), in sorted order."""
    unique = sorted(set(tags))
    train = [t for t in unique if t == "train/total"] + [
        t for t in unique if t.startswith("train/") and t.endswith("/weighted")
    ]
    val = [t for t in unique if t.startswith("val/") and not t.rsplit("/", 1)[-1].startswith("iou_")]
    return train + val


def curve_title(tag: str) -> str:
    """A readable title of a scalar tag: ``train/semseg/weighted`` -> ``semseg weighted (training)``."""
    phase, _, rest = tag.partition("/")
    if not rest:
        return tag
    name = rest.replace("/", " ")
    if rest == "total":
        name = "total loss"
    return f"{name} ({_PHASES.get(phase, phase)})"


def _ema(values: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential moving average with TensorBoard's debiasing (``smoothing`` in [0, 1); 0 returns the values)."""
    if smoothing == 0:
        return values
    out = np.empty_like(values)
    average, weight = 0.0, 0.0
    for i, value in enumerate(values):
        average = smoothing * average + (1 - smoothing) * value
        weight = smoothing * weight + (1 - smoothing)
        out[i] = average / weight
    return out


def _seed_matrix(seeds: Sequence[RunScalars], tag: str, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """Steps (S,) over the union of the seeds' logged steps and values (R, S) per seed, NaN where a seed has none."""
    curves = []
    for scalars in seeds:
        series = sorted(dict(scalars.get(tag, ())).items())
        if series:
            steps, values = np.array(series, dtype=np.float64).T
            curves.append((steps, _ema(values, smoothing)))
    if not curves:
        return np.empty(0), np.empty((0, 0))
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    matrix = np.full((len(curves), len(steps)), np.nan)
    for row, (s, v) in enumerate(curves):
        matrix[row, np.searchsorted(steps, s)] = v
    return steps, matrix


def training_curves(
    runs: Mapping[str, Sequence[RunScalars]],
    out: Path,
    tags: Sequence[str] | None = None,
    band: str = "minmax",
    smoothing: float = 0.0,
    columns: int = 3,
    panel_px: tuple[int, int] = CURVE_PANEL_PX,
) -> Path:
    """Curves of logged scalars across seeds, one subplot per tag, one colour per experiment.

    ``runs`` maps an experiment name to its seeds' scalars (``tag -> [(step, value)]``, as
    :func:`mtlda.runlog.read_scalars` returns). Each experiment draws the mean over the seeds that logged a step and
    a band: ``"minmax"`` (range over seeds), ``"std"`` (mean +- one standard deviation) or ``"none"``. ``tags``
    defaults to :func:`default_curve_tags` of every logged tag; ``smoothing`` is a TensorBoard-style EMA factor
    applied to each seed before averaging. The PNG is ``columns' * panel_px[0]`` x ``rows * panel_px[1]`` pixels
    (columns' = min(columns, number of tags), rows = ceil(tags / columns')).
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if not runs:
        raise ValueError("training_curves needs at least one experiment")
    logged = [tag for seeds in runs.values() for scalars in seeds for tag in scalars]
    tags = default_curve_tags(logged) if tags is None else list(tags)
    if not tags:
        raise ValueError("no tags to plot: none logged matches the defaults (pass tags=...)")
    cols = max(1, min(columns, len(tags)))
    rows = math.ceil(len(tags) / cols)
    with _figure((cols * panel_px[0], rows * panel_px[1])) as figure:
        axes = figure.subplots(rows, cols, squeeze=False).ravel()
        for ax, tag in zip(axes, tags):
            drawn = False
            for colour, (name, seeds) in zip(itertools.cycle(_COLOURS), runs.items()):
                steps, matrix = _seed_matrix(seeds, tag, smoothing)
                if not steps.size:
                    continue
                drawn = True
                mean = np.nanmean(matrix, axis=0)
                seeds_label = "1 seed" if len(matrix) == 1 else f"{len(matrix)} seeds"
                ax.plot(steps, mean, color=colour, linewidth=1.5, label=f"{name} ({seeds_label})")
                if band != "none" and len(matrix) > 1:
                    if band == "minmax":
                        low, high = np.nanmin(matrix, axis=0), np.nanmax(matrix, axis=0)
                    else:
                        # The sample std, as the tables; zero where a single seed has a value.
                        several = np.sum(np.isfinite(matrix), axis=0) > 1
                        spread = np.zeros_like(mean)
                        spread[several] = np.nanstd(matrix[:, several], axis=0, ddof=1)
                        low, high = mean - spread, mean + spread
                    ax.fill_between(steps, low, high, color=colour, alpha=0.2, linewidth=0)
            ax.set_title(curve_title(tag))
            ax.set_xlabel("iteration")
            ax.set_ylabel("loss" if tag.startswith("train/") else tag.rsplit("/", 1)[-1])
            if not drawn:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
        for ax in axes[len(tags):]:
            ax.set_visible(False)
        handles, labels = _unique_legend(axes[: len(tags)])
        if handles:
            figure.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4))
        return _save(figure, out)


def _unique_legend(axes: Sequence) -> tuple[list, list[str]]:
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    return list(handles.values()), list(handles)


def per_class_iou_bars(
    iou: Mapping[str, Mapping[str, float]],
    out: Path,
    stds: Mapping[str, Mapping[str, float]] | None = None,
    size_px: tuple[int, int] = IOU_BARS_PX,
) -> Path:
    """Grouped bars of per-class IoU (%), one group per class, one bar per model, as a ``size_px`` PNG.

    ``iou`` maps a model to ``class -> IoU`` in percent (e.g. the mean over seeds); ``stds`` (same keys) adds error
    bars. Classes follow the first model's order (others' extra classes appended); NaN (absent class) draws no bar.
    The legend gives each model's mean over its finite classes.
    """
    if not iou:
        raise ValueError("per_class_iou_bars needs at least one model")
    classes = list(dict.fromkeys(name for values in iou.values() for name in values))
    x = np.arange(len(classes))
    width = 0.8 / len(iou)
    with _figure(size_px) as figure:
        ax = figure.add_subplot()
        for index, (colour, (model, values)) in enumerate(zip(itertools.cycle(_COLOURS), iou.items())):
            heights = np.array([values.get(c, np.nan) for c in classes], dtype=np.float64)
            errors = None
            if stds is not None and model in stds:
                errors = np.array([stds[model].get(c, np.nan) for c in classes], dtype=np.float64)
            mean = np.nanmean(heights) if np.isfinite(heights).any() else float("nan")
            ax.bar(x + (index - (len(iou) - 1) / 2) * width, np.nan_to_num(heights), width, yerr=errors,
                   color=colour, capsize=2, error_kw={"linewidth": 0.8}, label=f"{model} (mIoU {mean:.1f})")
        ax.set_xticks(x, classes, rotation=45, ha="right")
        ax.set_ylabel("IoU (%)")
        ax.set_ylim(0, 100)
        ax.set_title("per-class IoU")
        ax.grid(axis="x", visible=False)
        ax.legend(loc="upper right", ncols=min(len(iou), 4), frameon=True)
        return _save(figure, out)


def confusion_matrix_size(num_classes: int) -> tuple[int, int]:
    """Default (width, height) pixels of :func:`confusion_matrix_image`: 260 + 36 px per class, at least 480."""
    side = max(480, 260 + 36 * num_classes)
    return side, side


def confusion_matrix_image(
    confusion: np.ndarray,
    class_names: Sequence[str],
    out: Path,
    normalise: str | None = "true",
    size_px: tuple[int, int] | None = None,
) -> Path:
    """A confusion matrix (C, C) of counts (rows: true class, columns: predicted) as a PNG heat map with the class
    names on both axes and each cell's value written in it.

    ``normalise``: ``"true"`` divides each row by its total (recall, %), ``"pred"`` each column (precision, %),
    ``"all"`` by the grand total (%), ``None`` keeps counts. Rows or columns without samples are left blank.
    Size: ``size_px`` or :func:`confusion_matrix_size` of C.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion must be a (C, C) matrix, got shape {counts.shape}")
    if len(class_names) != counts.shape[0]:
        raise ValueError(f"got {len(class_names)} class names for a {counts.shape[0]}-class confusion matrix")
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    values = _normalised(counts, normalise)
    num = counts.shape[0]
    size_px = confusion_matrix_size(num) if size_px is None else size_px
    cell_px = min(size_px) / (num + 7)
    with _figure(size_px) as figure:
        ax = figure.add_subplot()
        top = 100.0 if normalise else max(float(np.nanmax(values)) if np.isfinite(values).any() else 1.0, 1.0)
        cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#eeeeee")
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=top)
        ax.set_xticks(range(num), class_names, rotation=45, ha="right")
        ax.set_yticks(range(num), class_names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.grid(False)
        titles = {"true": "row-normalised, %", "pred": "column-normalised, %", "all": "% of all pixels", None: "counts"}
        ax.set_title(f"confusion matrix ({titles[normalise]})")
        fontsize = float(np.clip(cell_px * 0.28, 4, 10))
        for (row, col), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(col, row, _cell_text(value, normalise), ha="center", va="center", fontsize=fontsize,
                        color="white" if value > 0.6 * top else "black")
        figure.colorbar(image, ax=ax, shrink=0.8)
        return _save(figure, out)


def _normalised(counts: np.ndarray, normalise: str | None) -> np.ndarray:
    """(C, C) percentages of ``counts`` under ``normalise`` (NaN where the divisor is 0), or the counts."""
    if normalise is None:
        return counts.copy()
    if normalise == "true":
        total = counts.sum(axis=1, keepdims=True)
    elif normalise == "pred":
        total = counts.sum(axis=0, keepdims=True)
    else:
        total = np.full_like(counts, counts.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100 * counts / np.where(total > 0, total, 1), np.nan)


def _cell_text(value: float, normalise: str | None) -> str:
    """A cell's label: whole percent when normalised, compact counts (``812``, ``4.2k``, ``1.3M``) otherwise."""
    if normalise is not None:
        return f"{value:.0f}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"
