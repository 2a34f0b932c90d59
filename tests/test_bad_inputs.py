"""Bad input and faults across the mtlda commands, one table row each (DESIGN.md, "Command-line conventions").

A row is a command line, optionally after a fault is injected (a corrupt file, a read-only folder, a full disk).
Every row checks the exit code (2 for bad input, 0 for input that must work), exactly one ``error:`` line on stderr
matching the row's pattern (the problem and its fix), no traceback, and that what was written before is unchanged:
the shared trained run (no file changed or added), the shared data sets (no file changed) and the row's own files.
The commands run in this process through :func:`mtlda.running.run_main`; signals and torchrun get real processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml

from mtlda import commands
from mtlda.cli import EXPERIMENTS
from mtlda.data.io import write_image
from mtlda.data.toycity_export import export_toycity
from mtlda.running import run_main
from mtlda.scenarios import checkpoint as checkpoint_module
from mtlda.scenarios.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SDN = EXPERIMENTS / "supervised" / "toycity" / "sdn_mteb.yaml"
TINY = ["data.toycity.num_train=8", "data.toycity.num_val=4", "data.height=32", "data.width=64",
        "data.toycity.height=32", "data.toycity.width=64", "train.iterations=2", "data.batch_size=4",
        "data.val_batch_size=4", "train.image_every=0", "train.threads=1", "uda.source.height=32",
        "uda.source.width=64", "uda.source.toycity.height=32", "uda.source.toycity.width=64",
        "uda.source.toycity.num_train=8", "uda.source.toycity.num_val=4", "uda.source.batch_size=4"]
HUGE_LR = ["optim.lr.backbone=1e30", "optim.lr.decoders=1e30", "optim.lr.exchange=1e30", "optim.grad_clip=0"]
REAL_DATA = ["--set", "model.pretrained=none", "--set", "model.backbone=resnet18"]
HASHED_BELOW = 1 << 20  # files smaller than this are compared by content, larger ones by size, time and inode


def sets(*assignments: str) -> list[str]:
    return [arg for item in assignments for arg in ("--set", item)]


# ------------------------------------------------------------------------------------------------ shared data
@dataclass(frozen=True)
class Shared:
    """What every row may read and none may change: a tiny trained run, its weights-only export, the toycity
    cache it trained on, toycity in each on-disk format, and a few derived files."""

    base: Path

    @property
    def cache(self) -> Path:
        return self.base / "cache"

    @property
    def run(self) -> Path:
        return self.base / "run"

    @property
    def weights(self) -> Path:
        return self.base / "model.pt"

    @property
    def other_model(self) -> Path:
        """The weights file with a config of another model (no exchange block)."""
        return self.base / "other-model.pt"

    @property
    def image(self) -> Path:
        return self.base / "street.png"

    def toy(self, fmt: str) -> Path:
        return self.base / "toy" / fmt

    def tiny(self, workdir: Path) -> list[str]:
        return [*sets(*TINY, f"data.toycity.cache_dir={self.cache}", f"uda.source.toycity.cache_dir={self.cache}",
                      f"references.file={self.base / 'refs.yaml'}"), "--device", "cpu", "--workdir", str(workdir)]


def call(argv: list[str]) -> int:
    """The exit code of ``mtlda <argv>`` run in this process under the error conventions."""
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: commands.main([str(a) for a in argv]))
    return stop.value.code


@pytest.fixture(scope="module")
def shared(module_tmp, one_thread) -> Shared:
    data = Shared(module_tmp)
    assert call(["train", *data.tiny(data.run)]) == 0
    assert call(["export-weights", data.run / "last.pt", "--out", data.weights]) == 0
    ckpt = load_checkpoint(data.weights)
    ckpt["config"]["model"]["block"] = "none"
    save_checkpoint(ckpt, data.other_model)
    for fmt in ("cityscapes", "synthia", "vkitti2", "nyudv2"):
        export_toycity(data.toy(fmt), fmt, height=32, width=64, num_train=2, num_val=1)
    write_image(data.image, np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8))
    return data


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch, tmp_path):
    for name in ("MTLDA_DEBUG", "CITYSCAPES_DIR", "SYNTHIA_DIR", "VKITTI2_DIR", "NYUDV2_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def file_print(path: Path) -> Any:
    """The content hash of a small file, (size, modification time, inode) of a large one."""
    info = path.stat()
    if info.st_size < HASHED_BELOW:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    return info.st_size, info.st_mtime_ns, info.st_ino


def fingerprint(path: Path) -> dict[str, Any]:
    """Relative path -> :func:`file_print` of every file under ``path`` (or of ``path`` itself)."""
    if not path.is_dir():
        return {".": file_print(path)}
    return {str(p.relative_to(path)): file_print(p) for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- what a row works with
@dataclass
class Env:
    """A row's world: its own folder, the shared data, pytest's monkeypatch, and what ``prepare`` made."""

    tmp: Path
    shared: Shared
    monkeypatch: pytest.MonkeyPatch
    made: Any = None
    out: str = ""

    @property
    def work(self) -> Path:
        return self.tmp / "work"

    @property
    def tiny(self) -> list[str]:
        return self.shared.tiny(self.work)

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def run_copy(self, with_weights_as_last: bool = False) -> Path:
        """A copy of the shared run: checkpoints hard-linked (writers replace them, never write into them)."""
        folder = self.tmp / "run"
        link = lambda src, dst: os.link(src, dst) if src.endswith(".pt") else shutil.copy2(src, dst)  # noqa: E731
        shutil.copytree(self.shared.run, folder, copy_function=link)
        if with_weights_as_last:
            (folder / "last.pt").unlink()
            os.link(self.shared.weights, folder / "last.pt")
        return folder

    def cache_copy(self, corrupt: Callable[[Path], None]) -> Path:
        """A copy of the toycity cache (its one data set passed to ``corrupt``); the copy is the row's cache_dir."""
        folder = self.tmp / "cache"
        shutil.copytree(self.shared.cache, folder)
        corrupt(next(folder.glob("cityscapes_flat_*")))
        return folder

    def toy_copy(self, fmt: str, change: Callable[[Path], None] | None = None) -> Path:
        """A copy of the shared toycity data set in format ``fmt``, passed to ``change`` when given."""
        folder = self.tmp / fmt
        shutil.copytree(self.shared.toy(fmt), folder)
        if change is not None:
            change(folder)
        return folder

    def image(self, shape: tuple[int, ...]) -> Path:
        """A uniform grey image file of ``shape`` ((H, W) or (H, W, 3))."""
        path = self.tmp / "image.png"
        write_image(path, np.full(shape, 90, np.uint8))
        return path

    def foreign_last(self) -> Path:
        """A run folder whose last.pt is a plain torch.save of tensors (not an mtlda checkpoint)."""
        self.work.mkdir()
        torch.save({"w": torch.ones(2)}, self.work / "last.pt")
        return self.work

    def cityscapes_root(self, change: Callable[[Path], None] | None = None) -> Path:
        """CITYSCAPES_DIR pointing at a copy of the toycity Cityscapes data set (``change`` applied)."""
        root = self.toy_copy("cityscapes", change)
        self.monkeypatch.setenv("CITYSCAPES_DIR", str(root))
        return root

    def read_only(self, folder: Path) -> Path:
        """``folder`` made read-only; where that does not stop this user (root), writes into it raise
        PermissionError as a read-only folder's would."""
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        if os.access(folder, os.W_OK):
            simulate_read_only(folder, self.monkeypatch)
        return folder


def simulate_read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.open, os.mkdir and io.open (pathlib's open) refuse to create or write anything inside ``folder``."""
    inside = lambda path: Path(os.path.abspath(os.fsdecode(path))).is_relative_to(folder)  # noqa: E731
    real_open, real_mkdir, real_io_open = os.open, os.mkdir, io.open

    def refuse(path):
        raise PermissionError(13, "Permission denied", os.fsdecode(path))

    def os_open(path, flags, *args, **kwargs):
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        return refuse(path) if writing and inside(path) else real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        return refuse(path) if inside(path) else real_mkdir(path, *args, **kwargs)

    def io_open(path, mode="r", *args, **kwargs):
        writing = isinstance(path, (str, os.PathLike)) and any(c in mode for c in "wax+")
        return refuse(path) if writing and inside(path) else real_io_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(io, "open", io_open)


# ------------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    """One row: ``argv(env)`` after ``prepare(env)``; ``error``: regex of the one error line (None: must work).

    ``started``: the command may print its start-up lines (run folder, parameter counts, notes, progress bar)
    before the error line. ``untouched(env)``: files or folders that must be identical afterwards (no file
    changed, added or removed). ``check(env)``: more assertions afterwards. ``trains``: the row runs training
    steps (marked slow).
    """

    id: str
    argv: Callable[[Env], list[Any]]
    error: str | None
    prepare: Callable[[Env], Any] | None = None
    started: bool = False
    untouched: Callable[[Env], list[Path]] = lambda env: []
    check: Callable[[Env], None] | None = None
    skip: Callable[[], str] | None = None
    trains: bool = False


def bad_checkpoint(kind: str) -> Callable[[Env], Path]:
    """A checkpoint file that must be refused: missing, truncated, not a checkpoint, or code."""

    def make(env: Env) -> Path:
        if kind == "missing":
            return env.tmp / "missing.pt"
        if kind == "truncated":
            with open(env.shared.weights, "rb") as handle:
                return env.write("truncated.pt", handle.read(1 << 20))
        if kind == "text":
            return env.write("notes.pt", "not a checkpoint\n")
        path = env.tmp / "code.pt"
        torch.save({"modules": {}, "x": os.system}, path)
        return path

    return make


CHECKPOINT_ERRORS = {
    "missing": r"checkpoint not found: \S*missing\.pt \(pass the last\.pt or best\.pt of a run, or a weights file",
    "truncated": r"cannot read checkpoint \S*truncated\.pt \(.+\): it is truncated or not a PyTorch file; use "
                 r"another checkpoint \(best\.pt, last\.pt\) or retrain",
    "text": r"cannot read checkpoint \S*notes\.pt \(.+\): it is truncated or not a PyTorch file",
    "code": r"refusing to load \S*code\.pt: it contains Python objects .*loading it could run code",
}
CHECKPOINT_COMMANDS = {
    "train --evaluate": lambda env: ["train", *env.tiny, "--evaluate", env.made],
    "evaluate": lambda env: ["evaluate", env.made, "--workdir", env.work],
    "predict": lambda env: ["predict", env.made, env.shared.image, "--out", env.tmp / "out"],
}


def corrupt_file(pattern: str, how: Callable[[Path], None], index: int = 0) -> Callable[[Path], None]:
    """Apply ``how`` to the file of a data set folder that matches ``pattern`` (the ``index``-th, sorted)."""
    return lambda root: how(sorted(root.rglob(pattern))[index])


def garble(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n broken")


def label_77(path: Path) -> None:
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    values[0, 0] = 77
    cv2.imwrite(str(path), values)


def half_height(path: Path) -> None:
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), values[: values.shape[0] // 2])


def full_disk(env: Env) -> Path:
    """torch.save writes half a checkpoint, then the disk is full."""
    save = torch.save

    def half_then_full(obj, handle):
        buffer = io.BytesIO()
        save(obj, buffer)
        handle.write(buffer.getvalue()[: buffer.tell() // 2])
        raise OSError(28, "No space left on device")

    env.monkeypatch.setattr(checkpoint_module.torch, "save", half_then_full)
    return env.run_copy()


def results_copies(env: Env, change: Callable[[dict], None] | None = None) -> list[Path]:
    """Two run folders (results.json, config.yaml) of the shared run; ``change`` edits the second's results."""
    folders = []
    for name in ("a", "b"):
        folder = env.tmp / name
        folder.mkdir()
        for file in ("results.json", "config.yaml"):
            shutil.copy2(env.shared.run / file, folder / file)
        folders.append(folder)
    if change is not None:
        payload = json.loads((folders[1] / "results.json").read_text())
        change(payload)
        (folders[1] / "results.json").write_text(json.dumps(payload))
    return folders


def base_cycle(env: Env) -> Path:
    env.write("b.yaml", "_base_: a.yaml\n")
    return env.write("a.yaml", "_base_: b.yaml\n")


def gpu_visible() -> str:
    """The reason to skip the rows about a missing GPU, when there is one."""
    return "a CUDA GPU is visible" if torch.cuda.is_available() else ""


def no_run_folder(env: Env) -> None:
    assert not env.work.exists(), "a run folder was written"


def lr_allowed(env: Env) -> None:
    assert yaml.safe_load((env.made / "config.yaml").read_text())["optim"]["lr"]["backbone"] == 0.002


def nothing_predicted(env: Env) -> None:
    assert not (env.tmp / "out").exists(), "--out was written"


def spot_check_not_ok(env: Env) -> None:
    assert ": ok" not in env.out and "no problem in the 2 of 3 samples checked; --full decodes every file" in env.out


def assert_predicted(shape: tuple[int, int]) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        assert np.load(env.tmp / "out" / "image_depth.npy").shape == shape
        assert np.load(env.tmp / "out" / "image_semseg.npy").shape == shape

    return check


def checkpoint_iteration(path: Callable[[Env], Path], iteration: int) -> Callable[[Env], None]:
    def check(env: Env) -> None:
        assert load_checkpoint(path(env))["iteration"] == iteration
        assert not [p.name for p in path(env).parent.iterdir() if p.name.endswith(".tmp")]

    return check


CASES = [
    # ------------------------------------------------------------------------------------------------- config
    Case("config: missing file", lambda e: ["train", *e.tiny, "--config", "nope.yaml"],
         r"config file not found: nope\.yaml \(see the experiments folder .*experiments\)"),
    Case("config: a checkpoint as --config", lambda e: ["train", *e.tiny, "--config", e.shared.weights],
         r"\S+model\.pt is not UTF-8 text, so not an experiment \(YAML\) file; pass one, e\.g\. from experiments/ "
         r"\(a checkpoint goes to --evaluate or --resume\)"),
    Case("config: a folder as --config", lambda e: ["train", *e.tiny, "--config", e.tmp],
         r"\S+ is a folder: pass one experiment file in it"),
    Case("config: a negative learning rate", lambda e: ["train", *e.tiny, *sets("optim.lr.backbone=-1")],
         r"--set: optim\.lr\.backbone: -1\.0 is below the minimum 0; use 0 or more"),
    Case("config: an input size the network cannot take", lambda e: ["train", *e.tiny, *sets("data.height=40")],
         r"input size 40x64 is not supported: height and width must be multiples of \d+ .*Nearest valid: height "
         r"40 -> ", started=True),
    Case("config: unknown key in a file", lambda e: ["train", *e.tiny, "--config", e.made],
         r"bad\.yaml: unknown key 'train\.iteratons'; did you mean train\.iterations\? \(valid keys here:",
         prepare=lambda e: e.write("bad.yaml", f"_base_: {SDN}\ntrain:\n  iteratons: 2\n")),
    Case("config: unknown key in --set", lambda e: ["train", *e.tiny, *sets("model.backbon=resnet34")],
         r"--set: unknown key 'model\.backbon'; did you mean model\.backbone\?"),
    Case("config: wrong type", lambda e: ["train", *e.tiny, *sets("train.iterations=many")],
         r"train\.iterations: expected int, got 'many'"),
    Case("config: unset CITYSCAPES_DIR", lambda e: ["train", *e.tiny, "--dataset", "cityscapes", "--tasks", "S,D"],
         r"no folder for cityscapes: export CITYSCAPES_DIR=/path/to/cityscapes or name the folder "
         r"\(data\.root, --root\)"),
    Case("config: YAML syntax error", lambda e: ["train", *e.tiny, "--config", e.made],
         r"broken\.yaml: not valid YAML: .*; fix the file's syntax",
         prepare=lambda e: e.write("broken.yaml", "train: [1, 2\n")),
    Case("config: _base_ cycle", lambda e: ["train", *e.tiny, "--config", e.made],
         r"_base_ cycle: \S*a\.yaml -> \S*b\.yaml -> \S*a\.yaml; remove one of these _base_ entries",
         prepare=base_cycle),
    Case("config: --set without =", lambda e: ["train", *e.tiny, "--set", "train.iterations"],
         r"--set 'train\.iterations': expected key=value, e\.g\. --set optim\.lr\.backbone=1e-4"),
    *[Case(f"config: {key}={value}", lambda e, a=f"{key}={value}": ["train", *e.tiny, *sets(a)],
           rf"--set: {re.escape(key)}: {value}(\.0)? is below the minimum {minimum}; use {minimum} or more")
      for key, value, minimum in [("train.val_every", -1, 0), ("train.log_every", 0, 1),
                                  ("data.batch_size", 0, 1), ("train.iterations", -5, 0),
                                  ("optim.grad_clip", -1, 0)]],
    Case("config: unknown task code", lambda e: ["train", *e.tiny, "--tasks", "X"],
         r"unknown task code\(s\) \['X'\]; use some of D, E, N, S"),
    Case("config: lower-case task codes", lambda e: ["train", *e.tiny, "--tasks", "s,d"],
         r"unknown task code\(s\) \['s', 'd'\] \(codes are upper case: S, D\)"),
    Case("config: empty --tasks", lambda e: ["train", *e.tiny, "--tasks", ""],
         r"no task given: .*one or more of D, E, N, S"),
    Case("config: no experiment for the tasks", lambda e: ["train", *e.tiny, "--tasks", "S,E"],
         r"no experiment supervised/toycity/se_mteb\.yaml; available for toycity: .* \(or pass --config FILE\)"),
    Case("config: --tasks with --config", lambda e: ["train", *e.tiny, "--tasks", "S", "--config", SDN],
         r"--tasks select an experiment file, but --config names one already: drop them"),
    Case("config: unknown UDA pair", lambda e: ["uda", *e.tiny, "--src", "vkitti2", "--tgt", "toycity"],
         r"no experiments for vkitti2 -> toycity; pairs: toycity -> toycity"),
    Case("config: unknown scenario", lambda e: ["train", *e.tiny, *sets("scenario=supervized")],
         r"unknown scenario 'supervized' \(did you mean 'supervised'\?\); registered: (\w+, )*sde, supervised, uda"),
    Case("config: unknown model.block", lambda e: ["train", *e.tiny, *sets("model.block=mtb")],
         r"unknown exchange block \(model\.block\) 'mtb' \(did you mean 'mteb'\?\); "
         r"registered: (\w+, )*mteb, none, padnet"),
    Case("config: unknown model.architecture", lambda e: ["train", *e.tiny, *sets("model.architecture=4ways")],
         r"unknown decoder architecture \(model\.architecture\) '4ways' \(did you mean '3ways'\?\)"),
    Case("config: unknown model.attention", lambda e: ["train", *e.tiny, *sets("model.attention=spacial")],
         r"model\.attention.*'spacial'.*spatial"),
    Case("config: unknown weighting", lambda e: ["train", *e.tiny, *sets("tasks.weighting={name: dwaa}")],
         r"unknown weighting 'dwaa'.*dwa.*; choose one of fixed, uncertainty, dwa"),
    Case("config: unknown weighting option",
         lambda e: ["train", *e.tiny, *sets("tasks.weighting={name: dwa, temprature: 2}")],
         r"unknown option 'temprature' for weighting 'dwa' \(did you mean 'temperature'\?\); valid options: "),
    Case("config: mistyped selection metric", lambda e: ["train", *e.tiny, *sets("train.selection_metric=semseg/mIoU")],
         r"train\.selection_metric 'semseg/mIoU' is not a metric of this run: use 'delta' or one of .*semseg/miou",
         started=True, check=no_run_folder),
    Case("config: tasks.weights missing a task", lambda e: ["train", *e.tiny, *sets("tasks.weights={S: 1, D: 1}")],
         r"tasks\.weights must give one weight per task code \['D', 'N', 'S'\]; missing \['N'\]"),
    # --------------------------------------------------------------------------------------------- devices, AMP
    Case("device: bogus", lambda e: ["train", *e.tiny, "--device", "bogus"],
         r"unknown device 'bogus': use auto, cpu, cuda or cuda:N"),
    Case("device: cuda without a GPU", lambda e: ["train", *e.tiny, "--device", "cuda"],
         r"device 'cuda' was requested but no CUDA GPU is visible \(use --device cpu\)", skip=gpu_visible),
    Case("device: --amp fp16 on the CPU", lambda e: ["train", *e.tiny, "--amp", "fp16"],
         r"fp16 autocast needs a CUDA GPU \(loss scaling\); on the CPU use train\.amp_dtype=bf16"),
    # --------------------------------------------------------------------------------------------- run folder
    Case("workdir: a file", lambda e: ["train", *e.tiny, "--workdir", e.made],
         r"--workdir \S+ is a file, not a folder: choose another --workdir", started=True,
         prepare=lambda e: e.write("file", "keep"), untouched=lambda e: [e.made]),
    Case("workdir: read-only", lambda e: ["train", *e.tiny, "--workdir", e.made],
         r"cannot write into the run folder \S+ \(Permission denied\); choose a writable --workdir", started=True,
         prepare=lambda e: e.read_only(e.tmp / "ro"), untouched=lambda e: [e.made]),
    Case("workdir: holds a run, no --resume", lambda e: ["train", *e.tiny, "--seed", "1", "--workdir", e.made],
         r"\S+run already holds a run: continue it with --resume, or start this run in another folder", started=True,
         prepare=lambda e: e.run_copy(), untouched=lambda e: [e.made]),
    Case("workdir: --record-reference of an ordinary experiment, before training",
         lambda e: ["train", *e.tiny, "--record-reference"],
         r"toycity_sdn_mteb is not a reference experiment \(references\.is_reference is false\)",
         check=lambda e: not e.work.exists() or pytest.fail("a run folder was made")),
    Case("resume: no last.pt", lambda e: ["train", *e.tiny, "--resume", "--workdir", e.made],
         r"--resume: no \S+last\.pt to continue from \(run without --resume to start\)", started=True,
         prepare=lambda e: e.write("notes/notes.txt", "keep me").parent, untouched=lambda e: [e.made]),
    *[Case(f"resume: changed {what}", lambda e, c=change: ["train", *e.tiny, *c, "--resume", "--workdir", e.made],
           rf"--resume with a changed config would continue a different experiment: {message}; undo the change, "
           rf"or continue with it explicitly: --allow-changed {key}$", started=True, prepare=lambda e: e.run_copy(),
           untouched=lambda e: [e.made])
      for what, change, key, message in [
          ("lr", sets("optim.lr.backbone=0.002"), "optim.lr.backbone", r"optim\.lr\.backbone: 0\.001 -> 0\.002"),
          ("seed", ["--seed", "1"], "seed", r"seed: 0 -> 1"),
          ("batch", sets("data.batch_size=2"), "data.batch_size", r"data\.batch_size: 4 -> 2"),
          ("fewer iterations", sets("train.iterations=1"), "train.iterations", r"train\.iterations: 2 -> 1")]],
    Case("resume: allowed change", lambda e: ["train", *e.tiny, *sets("optim.lr.backbone=0.002"), "--resume",
                                              "--allow-changed", "optim.lr.backbone", "--workdir", e.made],
         None, started=True, prepare=lambda e: e.run_copy(),
         check=lr_allowed),
    Case("resume: a weights-only file", lambda e: ["train", *e.tiny, "--resume", "--workdir", e.made],
         r"\S+last\.pt: this is a weights-only file: it cannot resume training; start a new run \(or use it with "
         r"--evaluate / mtlda predict\)$", started=True,
         prepare=lambda e: e.run_copy(with_weights_as_last=True), untouched=lambda e: [e.made]),
    Case("resume: a foreign file", lambda e: ["train", *e.tiny, "--resume", "--workdir", e.made],
         r"\S+last\.pt is not an mtlda checkpoint \(no 'modules' entry\): pass a checkpoint written by mtlda",
         started=True, prepare=Env.foreign_last, untouched=lambda e: [e.made]),
    # ------------------------------------------------------------------------------------------- checkpoints
    *[Case(f"checkpoint: {command} of a {kind} file", CHECKPOINT_COMMANDS[command], CHECKPOINT_ERRORS[kind],
           prepare=bad_checkpoint(kind))
      for command in CHECKPOINT_COMMANDS for kind in CHECKPOINT_ERRORS],
    Case("checkpoint: train --evaluate of another model",
         lambda e: ["train", *e.tiny, "--tasks", "S,D", "--evaluate", e.shared.run / "last.pt"],
         r"the checkpoint's 'model' weights do not fit this model \(.+\); use the experiment file and --set "
         r"options the checkpoint was trained with"),
    Case("checkpoint: evaluate of another model",
         lambda e: ["evaluate", e.shared.run / "last.pt", *sets("model.block=none"), "--workdir", e.work],
         r"the checkpoint's 'model' weights do not fit this model \(.+\); use the experiment file and --set "
         r"options the checkpoint was trained with"),
    Case("checkpoint: predict of another model",
         lambda e: ["predict", e.shared.other_model, e.shared.image, "--out", e.tmp / "out"],
         r"the checkpoint's weights do not fit the model its config describes \(.+\); use a checkpoint written "
         r"by this version of mtlda with its own config \(or retrain\)"),
    Case("checkpoint: full disk while saving",
         lambda e: ["train", *e.tiny, *sets("train.iterations=3"), "--resume", "--allow-changed", "train.iterations",
                    "--workdir", e.made],
         r"cannot write \S+\.pt: No space left on device; the previous file \(if any\) is unchanged \(free disk "
         r"space or choose another folder\)", started=True, prepare=full_disk,
         untouched=lambda e: [e.made / "last.pt", e.made / "best.pt"],
         check=checkpoint_iteration(lambda e: e.made / "last.pt", 2), trains=True),
    Case("checkpoint: export-weights onto its checkpoint",
         lambda e: ["export-weights", e.made, "--out", e.made],
         r"--out \S+last\.pt is the input file itself: name a new file", prepare=lambda e: e.write("last.pt", "x"),
         untouched=lambda e: [e.made]),
    # ----------------------------------------------------------------------------------------------- predict
    Case("checkpoint: export onto its checkpoint",
         lambda e: ["export", e.made, "--format", "torchscript", "--out", e.made],
         r"--out \S+model\.pt is the input file itself: name a new file",
         prepare=lambda e: Path(shutil.copy2(e.shared.weights, e.tmp / "model.pt")), untouched=lambda e: [e.made]),
    Case("checkpoint: export onto the run's config",
         lambda e: ["export", e.made / "last.pt", "--format", "torchscript", "--out", e.made / "config.yaml"],
         r"--out \S+config\.yaml would replace the run's own config\.yaml: name a file of its own",
         prepare=lambda e: e.run_copy(), untouched=lambda e: [e.made]),
    Case("checkpoint: import-weights of a text file",
         lambda e: ["import-weights", e.made, "--config", EXPERIMENTS / "supervised/cityscapes/sd_mteb.yaml",
                    "--out", e.tmp / "x.pt"],
         r"\S+notes\.pkl is not a PyTorch weight file or is truncated \(torch\.load: .*\); download or copy it "
         r"again", prepare=lambda e: e.write("notes.pkl", "not weights\n" * 20),
         check=lambda e: not (e.tmp / "x.pt").exists() or pytest.fail("x.pt was written")),
    Case("predict: two images with the same name", lambda e: ["predict", e.shared.weights, *e.made, "--out",
                                                               e.tmp / "out"],
         r"\S+a/street\.png and \S+b/street\.png would write the same street_\* files",
         prepare=lambda e: [Path(shutil.copy2(e.shared.image, e.write(f"{d}/street.png", b""))) for d in "ab"],
         check=nothing_predicted),
    Case("predict: a folder of images", lambda e: ["predict", e.shared.weights, e.tmp, "--out", e.tmp / "out"],
         r"\S+ is a folder: pass image files", check=nothing_predicted),
    Case("predict: a missing image", lambda e: ["predict", e.shared.weights, e.tmp / "missing.png", "--out",
                                                e.tmp / "out"],
         r"image not found: \S+missing\.png \(pass the path of an existing image file\)$",
         check=nothing_predicted),
    Case("predict: a corrupt image", lambda e: ["predict", e.shared.weights, e.made, "--out", e.tmp / "out"],
         r"cannot decode image \S+corrupt\.png: the file is empty or corrupt",
         prepare=lambda e: e.write("corrupt.png", b"\x89PNG\r\n\x1a\n broken")),
    Case("predict: --out is a file", lambda e: ["predict", e.shared.weights, e.shared.image, "--out", e.made],
         r"--out \S+ is a file: give a folder", prepare=lambda e: e.write("out.txt", "keep"),
         untouched=lambda e: [e.made]),
    Case("predict: --out read-only", lambda e: ["predict", e.shared.weights, e.shared.image, "--out", e.made],
         r"cannot write \S+street_\w+\.png: Permission denied \(check the folder exists, is a folder and is "
         r"writable\)", prepare=lambda e: e.read_only(e.tmp / "ro"), untouched=lambda e: [e.made]),
    Case("predict: an image of odd size works", lambda e: ["predict", e.shared.weights, e.made, "--out",
                                                           e.tmp / "out"],
         None, prepare=lambda e: e.image((37, 53, 3)), check=assert_predicted((37, 53))),
    Case("predict: a grayscale PNG works", lambda e: ["predict", e.shared.weights, e.made, "--out", e.tmp / "out"],
         None, prepare=lambda e: e.image((32, 64)), check=assert_predicted((32, 64))),
    # -------------------------------------------------------------------------------------------------- data
    Case("data: root does not exist",
         lambda e: ["train", *e.tiny, "--dataset", "cityscapes", "--tasks", "S,D", *REAL_DATA],
         r"cityscapes folder \S+nowhere \(from CITYSCAPES_DIR\) does not exist; point CITYSCAPES_DIR at the "
         r"extracted data set", prepare=lambda e: e.monkeypatch.setenv("CITYSCAPES_DIR", str(e.tmp / "nowhere"))),
    Case("data: check-data of a missing root",
         lambda e: ["check-data", "--dataset", "cityscapes", "--root", e.tmp / "nowhere"],
         r"^problem: \S+nowhere is not a folder; point --root at the extracted cityscapes data set$"),
    Case("data: Cityscapes without gtFine/val",
         lambda e: ["train", *e.tiny, "--dataset", "cityscapes", "--tasks", "S,D", *REAL_DATA],
         r"gtFine/val.*download gtFine_trainvaltest\.zip from https://www\.cityscapes-dataset\.com",
         prepare=lambda e: e.cityscapes_root(lambda root: shutil.rmtree(root / "gtFine" / "val")),
         untouched=lambda e: [e.made]),
    *[Case(f"data: {what} in training (workers={workers})",
           lambda e, w=workers: ["train", *e.tiny, *sets(f"data.toycity.cache_dir={e.made}", f"data.workers={w}")],
           message, started=True, prepare=lambda e, c=corrupt: e.cache_copy(c), untouched=lambda e: [e.made],
           trains=True)
      for what, corrupt, message in [
          ("a corrupt PNG", corrupt_file("train/*/*_gtFine_labelIds.png", garble),
           r"cannot decode Cityscapes label map \S+_gtFine_labelIds\.png: the file is empty or corrupt; "
           r"re-download or regenerate it$"),
          ("label values outside the class table", corrupt_file("train/*/*_gtFine_labelIds.png", label_77),
           r"\S+_gtFine_labelIds\.png: label ids \[77\] are not in the label table"),
          ("disparity of the wrong size", corrupt_file("train/*/*_disparity.png", half_height),
           r"\S+_disparity\.png is 64x16 but its image is 64x32")]
      for workers in ((0, 2) if what == "a corrupt PNG" else (0,))],
    *[Case(f"data: check-data of a corrupt PNG{' --full' if full else ''}",
           lambda e, f=full: ["check-data", "--dataset", "cityscapes", "--root", e.made, *(["--full"] if f else [])],
           r"^problem: cannot decode Cityscapes disparity map \S+_disparity\.png: the file is empty or corrupt",
           prepare=lambda e: e.toy_copy("cityscapes", corrupt_file("train/*/*_disparity.png", garble)),
           untouched=lambda e: [e.made], started=full)
      for full in (False, True)],
    Case("data: check-data of a spot check that missed a corrupt PNG does not say ok",
         lambda e: ["check-data", "--dataset", "cityscapes", "--root", e.made, "--samples", "1"],
         None, prepare=lambda e: e.toy_copy("cityscapes", corrupt_file("train/*/*_disparity.png", garble, -1)),
         untouched=lambda e: [e.made], check=spot_check_not_ok),
    Case("data: check-data with an option of another data set",
         lambda e: ["check-data", "--dataset", "nyudv2", "--root", e.shared.toy("nyudv2"), "--variation", "fog"],
         r"--variation applies to vkitti2 only; drop it for nyudv2"),
    Case("data: check-data --samples 0", lambda e: ["check-data", "--dataset", "nyudv2", "--samples", "0"],
         r"--samples must be at least 1, got 0"),
    Case("data: prepare-normals of a read-only data set without --out",
         lambda e: ["prepare-normals", "--dataset", "cityscapes", "--root", e.made, "--device", "cpu",
                    "--workers", "0"],
         r"cannot write the normals into the data set \S+cityscapes \(Permission denied\): pass --out DIR to write "
         r"them elsewhere \(and train with --set data\.normals_root=DIR\)$", started=True,
         prepare=lambda e: e.read_only(e.toy_copy("cityscapes")), untouched=lambda e: [e.made]),
    Case("data: prepare-normals of a data set with normals",
         lambda e: ["prepare-normals", "--dataset", "nyudv2", "--root", e.shared.toy("nyudv2")],
         r"nyudv2 ships ground-truth normals; there is nothing to prepare"),
    Case("data: prepare-normals --batch-size 0",
         lambda e: ["prepare-normals", "--dataset", "synthia", "--root", e.shared.toy("synthia"), "--batch-size", "0"],
         r"--batch-size must be at least 1, got 0"),
    Case("data: prepare-normals --workers -1",
         lambda e: ["prepare-normals", "--dataset", "synthia", "--root", e.shared.toy("synthia"), "--workers", "-1"],
         r"--workers must be 0 \(read in the main process\) or more, got -1"),
    Case("data: prepare-normals on cuda without a GPU",
         lambda e: ["prepare-normals", "--dataset", "synthia", "--root", e.shared.toy("synthia"), "--device", "cuda"],
         r"--device cuda asked for a GPU but none is available; use --device cpu", skip=gpu_visible),
    # --------------------------------------------------------------------------------------------------- UDA
    Case("uda: the same data set as source and target",
         lambda e: ["uda", *e.tiny, *sets("data.toycity.style=synthetic")],
         r"the source \(uda\.source\) and the target \(data\) are the same data set \(toycity-synthetic\)"),
    Case("uda: different class counts", lambda e: ["uda", *e.tiny, *sets("uda.source.classes=8")],
         r"source and target class sets differ \(8 vs 9 classes\): set uda\.source\.classes and data\.classes"),
    # --------------------------------------------------------------------------------------------------- SDE
    Case("sde: --init-from a missing file",
         lambda e: ["sde", *e.tiny, "--stage", "multitask", "--init-from", e.tmp / "missing.pt"],
         r"sde\.init_from: pretrain checkpoint \S+missing\.pt not found; train it first", started=True),
    Case("sde: a non-pretrain checkpoint as init",
         lambda e: ["sde", *e.tiny, "--stage", "multitask", "--init-from", e.shared.run / "last.pt"],
         r"sde\.init_from: \S+last\.pt is not an SDE pretrain checkpoint \(scenario 'supervised'", started=True),
    Case("sde: depth labels in the multi-task stage",
         lambda e: ["sde", *e.tiny, "--stage", "multitask", *sets("tasks.names=[S, D]"), "--init-from",
                    e.shared.run / "last.pt"],
         r"the sde multi-task stage learns depth without labels: leave D out of tasks\.names"),
    Case("sde: no frames for training", lambda e: ["sde", *e.tiny, "--stage", "pretrain", *sets("data.frames=[]")],
         r"the sde scenario learns depth from neighbouring frames: set data\.frames=\[-1, 1\]"),
    # ---------------------------------------------------------------------------------------------- NaN loss
    Case("nan: before any checkpoint", lambda e: ["train", *e.tiny, *sets(*HUGE_LR, "train.iterations=4")],
         r"non-finite loss at iteration \d .*nothing was saved from it: no checkpoint has been written yet \(\S+"
         r"last\.pt does not exist\); lower the learning rates", started=True, trains=True),
    Case("nan: after a resume", lambda e: ["train", *e.tiny, *sets(*HUGE_LR, "train.iterations=6"), "--resume",
                                           "--allow-changed", "optim", "train.iterations", "--workdir", e.made],
         r"non-finite loss at iteration \d .*nothing was saved from it: \S+last\.pt holds iteration 2; lower the "
         r"learning rates", started=True, prepare=lambda e: e.run_copy(),
         untouched=lambda e: [e.made / "last.pt", e.made / "best.pt"], trains=True),
    # ----------------------------------------------------------------------------------------------- results
    Case("results: a repeated seed", lambda e: ["results", *e.made],
         r"experiment toycity_sdn_mteb has seed 0 more than once: \S+a, \S+b; pass each seed's run once",
         prepare=results_copies, untouched=lambda e: [e.tmp]),
    Case("results: runs of different data sets", lambda e: ["results", *e.made],
         r"runs come from different data sets / resolutions: .*; aggregate each data set separately",
         prepare=lambda e: results_copies(e, lambda p: p.update(seed=1, dataset="other@32x64")),
         untouched=lambda e: [e.tmp]),
    Case("results: no results.json", lambda e: ["results", e.made],
         r"\S+results\.json not found: pass run folders of finished runs",
         prepare=lambda e: e.write("unfinished/log.txt", "").parent, untouched=lambda e: [e.tmp]),
    Case("results: --csv into a run folder", lambda e: ["results", e.made[0], "--csv", e.made[0] / "results.json"],
         r"--csv \S+results\.json is inside a run folder this command reads; write the table elsewhere",
         prepare=results_copies, untouched=lambda e: [e.tmp]),
    Case("sweep: an unknown block in the grid, before any cell trains",
         lambda e: ["sweep", SDN, "--grid", "model.block=mteb,mtb", "--seeds", "0", "--out", e.work],
         r"unknown exchange block \(model\.block\) 'mtb' \(did you mean 'mteb'\?\)",
         check=lambda e: not e.work.exists() or pytest.fail("the sweep started")),
    Case("command: unknown", lambda e: ["trian"], r"unknown command 'trian': did you mean train\?"),
]


def error_lines(err: str, started: bool) -> list[str]:
    """The error lines of ``err`` after checking the shape of stderr: no traceback, the error line last and,
    unless the command had started, alone."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error: ", "interrupted: ", "problem: "))]
    if errors:
        assert lines[-1] == errors[-1], err
    if not started:
        assert lines == errors, err
    return errors


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.trains else [])
                                  for case in CASES])
def test_bad_input(case: Case, shared: Shared, tmp_path, monkeypatch, capsys):
    if case.skip is not None and case.skip():
        pytest.skip(case.skip())
    env = Env(tmp_path / "row", shared, monkeypatch)
    env.tmp.mkdir()
    env.made = case.prepare(env) if case.prepare else None
    watched = {path: fingerprint(path) for path in case.untouched(env)}
    run_before, data_before = fingerprint(shared.run), fingerprint(shared.base)
    capsys.readouterr()
    code = call(case.argv(env))
    monkeypatch.undo()
    captured = capsys.readouterr()
    env.out, err = captured.out, captured.err
    errors = error_lines(err, case.started)
    if case.error is None:
        assert code == 0 and not errors, err
    else:
        assert code == 2, err
        assert len(errors) == 1 and re.search(case.error, errors[0]), err
    assert fingerprint(shared.run) == run_before
    data_after = fingerprint(shared.base)
    assert {key: data_after.get(key) for key in data_before} == data_before
    for path, before in watched.items():
        assert fingerprint(path) == before, path
    if case.check is not None:
        case.check(env)


# ------------------------------------------------------------------------------------------- real processes
def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


WAITING_DRIVER = '''"""mtlda, its supervised step AT + 1 announcing itself in MARKER and waiting for "go" there."""
import os, sys, time
from pathlib import Path
from mtlda.commands import run
from mtlda.scenarios.supervised import SupervisedScenario

AT, MARKER = int(os.environ["MTLDA_TEST_AT"]), Path(os.environ["MTLDA_TEST_MARKER"])
step = SupervisedScenario.train_step


def waiting_step(self, batch, engine):
    if engine.iteration == AT:
        MARKER.write_text("in step")
        while MARKER.read_text() != "go":
            time.sleep(0.05)
    return step(self, batch, engine)


SupervisedScenario.train_step = waiting_step
sys.argv = ["mtlda", *sys.argv[1:]]
run()
'''
KILLING_DRIVER = '''"""mtlda under torchrun with rank 1 killed (SIGKILL) at the start of step AT + 1."""
import os, signal, sys
from mtlda.commands import run
from mtlda.scenarios.supervised import SupervisedScenario

AT = int(os.environ["MTLDA_TEST_AT"])
step = SupervisedScenario.train_step


def killing_step(self, batch, engine):
    if engine.iteration == AT and engine.dist.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batch, engine)


SupervisedScenario.train_step = killing_step
sys.argv = ["mtlda", *sys.argv[1:]]
run()
'''
INTERRUPTS = {
    "SIGINT": (["SIGINT"], 3, r"^interrupted: stopped by SIGINT after iteration 3; \S+last\.pt saved \(continue with "
                              r"--resume\)$"),
    "SIGTERM": (["SIGTERM"], 3, r"^interrupted: stopped by SIGTERM after iteration 3; \S+last\.pt saved \(continue "
                                r"with --resume\)$"),
    "second SIGINT": (["SIGINT", "SIGINT"], 2, r"^interrupted: stopped at once during iteration 3 \(second signal\): "
                                               r"nothing saved from it; \S+last\.pt holds iteration 2$"),
}


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("name", INTERRUPTS)
def test_signal_during_a_step_saves_and_exits_130(name, shared, tmp_path):
    signals, saved, message = INTERRUPTS[name]
    driver, marker, workdir = tmp_path / "driver.py", tmp_path / "marker", tmp_path / "run"
    driver.write_text(WAITING_DRIVER)
    marker.write_text("")
    args = [*shared.tiny(workdir), *sets("train.iterations=6", "train.checkpoint_every=1")]
    env = {**subprocess_env(), "MTLDA_TEST_AT": "2", "MTLDA_TEST_MARKER": str(marker)}
    process = subprocess.Popen([sys.executable, str(driver), "train", *args], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: marker.read_text() == "in step", process)
        for signal_name in signals:
            process.send_signal(getattr(signal, signal_name))
            time.sleep(0.5)
        marker.write_text("go")
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 130, err
    errors = error_lines(err, started=True)
    assert len(errors) == 1 and re.search(message, errors[0]), err
    assert load_checkpoint(workdir / "last.pt")["iteration"] == saved
    assert not [p.name for p in workdir.iterdir() if p.name.endswith(".tmp")]


def torchrun(script: list[str], args: list[str], cwd: Path, extra_env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess:
    """Two CPU processes (gloo) of ``script`` under torchrun; the agent checks its workers every 2 s."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--monitor-interval", "2", *script, *args]
    return subprocess.run(command, cwd=cwd, env={**subprocess_env(), **(extra_env or {})}, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_torchrun_two_ranks_finish_cleanly(shared, tmp_path):
    done = torchrun(["-m", "mtlda", "train"], shared.tiny(tmp_path / "run"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "error:" not in done.stderr and "SIGABRT" not in done.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2


@pytest.mark.slow
def test_torchrun_survivor_says_a_peer_died_and_keeps_the_last_checkpoint(shared, tmp_path):
    driver, workdir = tmp_path / "driver.py", tmp_path / "run"
    driver.write_text(KILLING_DRIVER)
    args = [*shared.tiny(workdir), *sets("train.iterations=6", "train.checkpoint_every=1")]
    done = torchrun([str(driver), "train"], args, tmp_path, {"MTLDA_TEST_AT": "3"})
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith(("error: ", "interrupted: "))]
    assert len(errors) == 1, done.stderr
    assert re.search(r"^error: a peer process of this torchrun run failed during iteration 4 \(.+\); \S+last\.pt "
                     r"holds iteration 3: restart every process with --resume$", errors[0]), errors[0]
    assert load_checkpoint(workdir / "last.pt")["iteration"] == 3
    assert not [p.name for p in workdir.iterdir() if p.name.endswith(".tmp")]
