"""mtlda sweep: grid cells and their task weights, run states, scheduling over GPUs, and a tiny toycity sweep end to
end (two cells, one seed, two iterations at 32x64) that a second call skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtlda.commands import sweep
from mtlda.errors import UserInputError

EXPERIMENT = Path("experiments/supervised/toycity/sd_mteb.yaml")
TINY = ["train.iterations=2", "train.val_every=0", "train.image_every=0", "train.checkpoint_every=0",
        "train.log_every=1", "train.threads=1", "data.height=32", "data.width=64", "data.toycity.height=32",
        "data.toycity.width=64", "data.toycity.num_train=8", "data.toycity.num_val=4", "data.batch_size=4",
        "data.val_batch_size=4", "device=cpu"]


def test_values_split_outside_brackets_and_keys_shorten_to_unique_suffixes():
    assert sweep.split_values("1,10,[S,D],{name: dwa}") == ["1", "10", "[S,D]", "{name: dwa}"]
    assert sweep.parse_axis("tasks.weights.D=1,10,50") == sweep.Axis("tasks.weights.D", ("1", "10", "50"))
    assert sweep.short_keys(["tasks.weights.D", "optim.lr.backbone", "uda.source.batch_size", "data.batch_size"]) == {
        "tasks.weights.D": "D", "optim.lr.backbone": "backbone", "uda.source.batch_size": "source.batch_size",
        "data.batch_size": "data.batch_size"}
    for bad in ("tasks.weights.D", "tasks.weights.D=", "=1,2", "tasks.weights.D=1,1"):
        with pytest.raises(UserInputError, match="--grid"):
            sweep.parse_axis(bad)
    with pytest.raises(UserInputError, match="--seeds"):
        sweep.parse_seeds("0,x")


def test_cells_complete_the_task_weights_and_are_checked():
    experiment = sweep.find_config("experiments/supervised/toycity/sdn_mteb.yaml")
    axes = [sweep.parse_axis("tasks.weights.D=1,10"), sweep.parse_axis("tasks.weights.N=1,10")]
    cells = sweep.grid_cells(experiment, [], axes)
    assert [c.label for c in cells] == ["D=1_N=1", "D=1_N=10", "D=10_N=1", "D=10_N=10"]
    # S keeps the paper's S-D-N weight (100); D and N come from the grid.
    assert cells[1].overrides == ("tasks.weights.D=1", "tasks.weights.N=10", "tasks.weights.S=100")
    given = sweep.grid_cells(experiment, ["tasks.weights={S: 3, D: 1, N: 2}"], axes[:1])
    assert given[0].overrides == ("tasks.weights.D=1", "tasks.weights.S=3", "tasks.weights.N=2")
    with pytest.raises(UserInputError, match="E is not a task of the experiment"):
        sweep.grid_cells(experiment, [], [sweep.parse_axis("tasks.weights.E=1,2")])
    with pytest.raises(UserInputError, match="iteratons"):
        sweep.grid_cells(experiment, [], [sweep.parse_axis("train.iteratons=1,2")])
    with pytest.raises(UserInputError, match="a key is given twice"):
        sweep.grid_cells(experiment, [], [axes[0], axes[0]])
    with pytest.raises(UserInputError, match="--metric 'semseg/nope'"):
        sweep.metric_direction("semseg/nope", ["depth", "semseg"])
    assert sweep.metric_direction("depth/abs_rel", ["depth", "semseg"]) is False


def test_runs_are_skipped_when_done_and_resumed_when_interrupted(tmp_path: Path):
    cell = sweep.Cell("D=1", ("tasks.weights.D=1", "tasks.weights.S=50"))
    run = sweep.Run(cell, 3, tmp_path / "D=1" / "s3")
    assert run.state == "start"
    run.folder.mkdir(parents=True)
    (run.folder / "last.pt").write_bytes(b"")
    command = sweep.child_command(EXPERIMENT, "train", ["train.iterations=2"], "toycity_sd_mteb", run)
    assert run.state == "resume" and command[-1] == "--resume"
    assert command[command.index("--seed") + 1] == "3" and command[command.index("--workdir") + 1] == str(run.folder)
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert sets == ["train.iterations=2", "tasks.weights.D=1", "tasks.weights.S=50", "name=toycity_sd_mteb__D=1"]
    (run.folder / "results.json").write_text("{}")
    assert run.state == "done"


class FakeProcess:
    """A child that exits with ``code`` after ``polls`` polls."""

    def __init__(self, code: int, polls: int) -> None:
        self.code, self.polls = code, polls

    def poll(self):
        self.polls -= 1
        return self.code if self.polls < 0 else None

    def wait(self):
        return self.code


def test_one_run_per_gpu_at_a_time(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    cfg = sweep.load_config(EXPERIMENT, ["device=auto"])
    assert sweep.gpu_slots(cfg) == ["0", "1"]
    assert sweep.gpu_slots(sweep.load_config(EXPERIMENT, ["device=cpu"])) == [None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert sweep.gpu_slots(cfg) == [None]
    runs = [sweep.Run(sweep.Cell(f"c{i}", ()), 0, tmp_path / f"c{i}") for i in range(5)]
    started, running = [], set()

    def launch(run, slot):
        assert slot not in running  # one child per GPU
        running.add(slot)
        started.append((run.cell.label, slot))
        process = FakeProcess(code=1 if run.cell.label == "c2" else 0, polls=2)
        original = process.poll

        def poll():
            code = original()
            if code is not None:
                running.discard(slot)
            return code

        process.poll = poll
        return process

    failed = sweep.run_all(runs, ["0", "1"], launch, poll_s=0)
    assert [label for label, _ in started] == ["c0", "c1", "c2", "c3", "c4"]
    assert {slot for _, slot in started} == {"0", "1"}
    assert [(run.cell.label, code) for run, code in failed] == [("c2", 1)]


@pytest.mark.slow
def test_tiny_sweep_end_to_end_then_skipped(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "sweep"
    args = [str(EXPERIMENT), "--grid", "tasks.weights.D=1,10", "--seeds", "0", "--out", str(out),
            "--metric", "semseg/miou", *(a for o in [*TINY, f"data.toycity.cache_dir={tmp_path / 'cache'}"]
                                         for a in ("--set", o))]
    assert sweep.main(args) == 0
    for label in ("D=1", "D=10"):
        folder = out / label / "s0"
        payload = json.loads((folder / "results.json").read_text())
        assert payload["name"] == f"toycity_sd_mteb__{label}" and (folder / sweep.LOG_NAME).is_file()
    table = (out / "sweep.md").read_text()
    assert "toycity_sd_mteb__D=1 (seeds 0)" in table and "toycity_sd_mteb__D=10 (seeds 0)" in table
    assert "Cells ranked by semseg/miou (higher is better" in table and table.count("**best**") == 1
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["best"] in ("D=1", "D=10") and summary["higher_is_better"] is True
    assert [c["overrides"] for c in summary["cells"]] == [["tasks.weights.D=1", "tasks.weights.S=50"],
                                                          ["tasks.weights.D=10", "tasks.weights.S=50"]]
    assert (out / "sweep.csv").read_text().startswith("name,seeds,task,metric,mean,std")
    capsys.readouterr()
    assert sweep.main(args) == 0  # everything done: nothing is started, the table is written again
    err = capsys.readouterr().err
    assert "2 runs done, 0 to run" in err and "start:" not in err
    before = (out / "sweep.md").read_text()
    with pytest.raises(UserInputError, match=r"D=1/s0 holds a run of another configuration \(train\.iterations: 2 "
                                             r"there, 3 now\): delete it, or give this sweep another --out"):
        sweep.main([*args, "--set", "train.iterations=3"])  # a changed setting never reuses the old runs
    assert (out / "sweep.md").read_text() == before
