"""Plain-text and CSV logs of a training run, beside TensorBoard (standard library only).

A run directory holds:

- ``log.txt``: timestamped lines (``2024-05-01 12:00:00  ...``): run start or resume, the configuration, periodic
  training lines (losses per task, learning rates, speed, ETA) and validation results, one line per task. It is
  a history: a resumed run appends to it after a ``resume`` line.
- ``scalars.csv``: every logged scalar as one row ``step,tag,value,wall_time`` (long format: new tags never change
  the header). ``step`` is the iteration (int), ``tag`` the TensorBoard tag (e.g. ``train/semseg/weighted``),
  ``value`` the float written with ``repr`` (exact round trip), ``wall_time`` Unix seconds. Non-finite values are
  not written (as for TensorBoard).

Both files are flushed after every call, so they can be read while the run goes on (:func:`read_scalars` ignores
an unfinished last line). A run that resumes from iteration k first drops the rows with step > k that the
interrupted run wrote after its checkpoint (rewriting the CSV atomically), so the resumed rows replace them; a
new run (``resume_from=None``) starts the CSV afresh.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from mtlda.files import write_text_atomic

LOG_NAME = "log.txt"
SCALARS_NAME = "scalars.csv"
CSV_HEADER = ("step", "tag", "value", "wall_time")


def format_scientific(value: float) -> str:
    """Two significant digits in compact scientific notation: ``9.8e-4``, ``1.2e5``, ``-3.0e0``."""
    if not math.isfinite(value):
        return str(value)
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def format_number(value: float) -> str:
    """Three significant digits in fixed point for 1e-3 <= |value| < 1e4 (``0.400``, ``1.23``, ``812``), else
    :func:`format_scientific` (``9.8e-4``); ``0``, ``nan`` and ``inf`` as such."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(float(f"{value:.3g}"))
    if 1e-3 <= magnitude < 1e4:
        return f"{value:.{max(0, 2 - math.floor(math.log10(magnitude)))}f}"
    return format_scientific(value)


def _learning_rate_text(learning_rates: Mapping[str, float]) -> str:
    """``lr 1.0e-4`` when every group has one rate, else ``lr encoder 1.0e-4 decoder 1.0e-3`` (last name parts,
    or the full names where those would repeat)."""
    if not learning_rates:
        return ""
    if len(set(learning_rates.values())) == 1:
        return f"lr {format_scientific(next(iter(learning_rates.values())))}"
    short = [name.rsplit("/", 1)[-1] for name in learning_rates]
    names = short if len(set(short)) == len(short) else list(learning_rates)
    return "lr " + " ".join(f"{n} {format_scientific(v)}" for n, v in zip(names, learning_rates.values()))


def format_postfix(terms: Mapping[str, float], learning_rates: Mapping[str, float]) -> str:
    """Compact progress text, e.g. ``loss 1.23 semseg 0.812 depth 0.400 lr 9.8e-4``.

    ``terms`` are a training step's scalars: ``total`` shows as ``loss``, each ``<name>/weighted`` as ``<name>``, in
    their order (every term when there is neither). ``learning_rates`` map a group name (e.g. ``model/encoder``) to
    its current rate.
    """
    shown = [("loss", terms["total"])] if "total" in terms else []
    shown += [(key[: -len("/weighted")], value) for key, value in terms.items() if key.endswith("/weighted")]
    if not shown:
        shown = list(terms.items())
    parts = [f"{name} {format_number(value)}" for name, value in shown]
    lr = _learning_rate_text(learning_rates)
    return " ".join(parts + ([lr] if lr else []))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_loggable(value: object) -> bool:
    return _is_number(value) and math.isfinite(value)


def _complete_lines(text: str) -> list[str]:
    """The lines of ``text`` that end with a newline (a writer may be half-way through the last one)."""
    return text.split("\n")[:-1]


def _parse_row(row: list[str]) -> tuple[int, str, float] | None:
    """(step, tag, value) of a CSV row, or None when it is not a complete, well-formed row."""
    if len(row) != len(CSV_HEADER):
        return None
    try:
        return int(row[0]), row[1], float(row[2])
    except ValueError:
        return None


def _check_header(path: Path, lines: list[str]) -> None:
    if lines and next(csv.reader(lines[:1])) != list(CSV_HEADER):
        raise ValueError(f"{path} is not an mtlda scalars file (its header is {lines[0]!r}, expected "
                         f"{','.join(CSV_HEADER)!r}); move it away or use another work directory")


def read_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` sorted by step from a ``scalars.csv`` (its path, or its run directory).

    Safe while the run writes: an unfinished last line and malformed rows are skipped. A step logged twice for one
    tag (e.g. validation repeated at a resumed iteration) keeps the value written last.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SCALARS_NAME
    lines = _complete_lines(path.read_text(encoding="utf-8"))
    _check_header(path, lines)
    by_tag: dict[str, dict[int, float]] = {}
    for row in csv.reader(lines[1:]):
        parsed = _parse_row(row)
        if parsed is not None:
            step, tag, value = parsed
            by_tag.setdefault(tag, {})[step] = value
    return {tag: sorted(values.items()) for tag, values in by_tag.items()}


def _flatten(config: Mapping[str, object], prefix: str = "") -> list[tuple[str, object]]:
    items = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items += _flatten(value, f"{name}.")
        else:
            items.append((name, value))
    return items


class RunLogger:
    """Writes ``log.txt`` and ``scalars.csv`` in ``directory`` (created if needed) for one training run.

    ``resume_from=k`` continues a run from iteration k: rows of ``scalars.csv`` with step > k (and any unfinished
    last line) are dropped before appending; ``resume_from=None`` starts ``scalars.csv`` anew. ``log.txt`` is always
    appended to. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, directory: Path, resume_from: int | None = None) -> None:
        if resume_from is not None and resume_from < 0:
            raise ValueError(f"resume_from must be an iteration >= 0, got {resume_from}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = self.directory / LOG_NAME
        self.scalars_path = self.directory / SCALARS_NAME
        dropped = self._prepare_scalars(resume_from)
        self._log = open(self.log_path, "a", encoding="utf-8")
        self._scalars = open(self.scalars_path, "a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._scalars, lineterminator="\n")
        if resume_from is None:
            self.info(f"start new run in {self.directory}")
        else:
            self.info(f"resume from iteration {resume_from} (dropped {dropped} scalar rows logged after it)")

    def _prepare_scalars(self, resume_from: int | None) -> int:
        """Leave ``scalars.csv`` with its header and the rows this run keeps; the number of rows dropped."""
        kept: list[str] = []
        dropped = 0  # rows, counting an unfinished last line
        if resume_from is not None and self.scalars_path.is_file():
            text = self.scalars_path.read_text(encoding="utf-8")
            lines = _complete_lines(text)
            _check_header(self.scalars_path, lines)
            dropped = int(not text.endswith("\n") and bool(text))
            for line, row in zip(lines[1:], csv.reader(lines[1:])):
                parsed = _parse_row(row)
                if parsed is not None and parsed[0] <= resume_from:
                    kept.append(line)
                else:
                    dropped += 1
        write_text_atomic(self.scalars_path, "".join(f"{line}\n" for line in [",".join(CSV_HEADER), *kept]))
        return dropped

    def info(self, message: str) -> None:
        """Append ``message`` to ``log.txt`` as one timestamped line per line of the message."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write("".join(f"{stamp}  {line}\n" for line in message.splitlines() or [""]))
        self._log.flush()

    def log_config(self, config: Mapping[str, object]) -> None:
        """Log a (nested) configuration mapping, one ``config a.b.c = value`` line per leaf."""
        self.info("\n".join(f"config {name} = {value!r}" for name, value in _flatten(config)))

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Append one CSV row per finite number of ``values`` (tag -> value) at iteration ``step``; others skipped."""
        now = f"{time.time():.3f}"
        self._writer.writerows([step, tag, repr(float(v)), now] for tag, v in values.items() if _is_loggable(v))
        self._scalars.flush()

    def log_training(self, step: int, total_steps: int, terms: Mapping[str, float],
                     learning_rates: Mapping[str, float], seconds_per_step: float | None = None) -> None:
        """Log a training line: ``iter 120/2000  loss 1.23 semseg 0.812 lr 1.0e-4  1.45 s/it  eta 0:45:26``."""
        line = f"iter {step}/{total_steps}  {format_postfix(terms, learning_rates)}"
        if seconds_per_step is not None:
            eta = timedelta(seconds=round(seconds_per_step * max(total_steps - step, 0)))
            line += f"  {format_number(seconds_per_step)} s/it  eta {eta}"
        self.info(line)

    def log_validation(self, step: int, metrics: Mapping[str, float], split: str = "val") -> None:
        """Log validation ``metrics`` (``task/metric -> value``) at ``step``: one line per task, e.g.
        ``val iter 1000  semseg  miou 67.6  pixel_acc 91.2``; metrics without a task prefix share one line."""
        groups: dict[str, list[str]] = {}
        for key, value in metrics.items():
            task, _, name = key.rpartition("/")
            groups.setdefault(task, []).append(f"{name} {format_number(value) if _is_number(value) else value}")
        self.info("\n".join(f"{split} iter {step}  {task + '  ' if task else ''}{'  '.join(parts)}"
                            for task, parts in groups.items()))

    def close(self) -> None:
        """Flush and close both files (idempotent)."""
        for handle in (self._log, self._scalars):
            if not handle.closed:
                handle.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
