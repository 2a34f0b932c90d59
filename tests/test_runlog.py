import csv
import math

import pytest

from mtlda.runlog import (
    CSV_HEADER,
    LOG_NAME,
    SCALARS_NAME,
    RunLogger,
    format_number,
    format_postfix,
    format_scientific,
    read_scalars,
)


def test_number_formats():
    assert [format_number(v) for v in (0.4, 1.234, 12.34, 812.0, 0.00123, 9.9996, 0.0, -0.5)] == [
        "0.400", "1.23", "12.3", "812", "0.00123", "10.0", "0", "-0.500"]
    assert format_number(9.81e-4) == "9.8e-4" and format_number(123456.0) == "1.2e5"
    assert format_number(math.nan) == "nan" and format_scientific(1e-3) == "1.0e-3"


def test_postfix_shows_total_tasks_and_learning_rates():
    terms = {"depth/s0": 0.5, "depth/weighted": 0.4, "semseg/s0": 0.9, "semseg/weighted": 0.812, "total": 1.234}
    assert format_postfix(terms, {"model/encoder": 9.8e-4, "model/decoder": 9.8e-4}) == (
        "loss 1.23 depth 0.400 semseg 0.812 lr 9.8e-4")
    assert format_postfix({"total": 2.0}, {"model/encoder": 1e-4, "model/decoder": 1e-3}) == (
        "loss 2.00 lr encoder 1.0e-4 decoder 1.0e-3")
    assert format_postfix({"a": 1.0}, {"g/x": 1e-4, "h/x": 2e-4}) == "a 1.00 lr g/x 1.0e-4 h/x 2.0e-4"
    assert format_postfix({"total": 1.0}, {}) == "loss 1.00"


def test_scalars_round_trip_and_skip_non_finite(tmp_path):
    with RunLogger(tmp_path) as log:
        log.log_scalars(1, {"train/total": 1.0 / 3, "train/bad": math.nan, "train/flag": True, "time/s": 2})
        assert read_scalars(tmp_path)["train/total"] == [(1, 1.0 / 3)]  # readable while the run is open
        log.log_scalars(2, {"train/total": 0.25})
    with open(tmp_path / SCALARS_NAME, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_HEADER and len(rows) == 4
    assert read_scalars(tmp_path / SCALARS_NAME) == {"train/total": [(1, 1.0 / 3), (2, 0.25)], "time/s": [(1, 2.0)]}


def test_reader_ignores_an_unfinished_last_line_and_keeps_the_last_duplicate(tmp_path):
    path = tmp_path / SCALARS_NAME
    path.write_text("step,tag,value,wall_time\n5,val/miou,40.0,1.0\nnot,a,row,x\n5,val/miou,41.0,2.0\n6,val/mi")
    assert read_scalars(path) == {"val/miou": [(5, 41.0)]}
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an mtlda scalars file"):
        read_scalars(path)


def test_resume_truncates_rows_after_the_resumed_step(tmp_path):
    with RunLogger(tmp_path) as log:
        for step in range(1, 11):
            log.log_scalars(step, {"train/total": float(step)})
    with open(tmp_path / SCALARS_NAME, "a") as f:
        f.write("11,train/tot")  # killed half-way through a row
    with RunLogger(tmp_path, resume_from=6) as log:
        assert [s for s, _ in read_scalars(tmp_path)["train/total"]] == [1, 2, 3, 4, 5, 6]
        for step in range(7, 11):
            log.log_scalars(step, {"train/total": 100.0 + step})
    series = read_scalars(tmp_path)["train/total"]
    assert [s for s, _ in series] == list(range(1, 11)) and series[-1] == (10, 110.0)
    assert (tmp_path / SCALARS_NAME).read_text().count("\n10,") == 1
    assert "resume from iteration 6 (dropped 5 scalar rows logged after it)" in (tmp_path / LOG_NAME).read_text()
    with RunLogger(tmp_path) as log:
        pass
    assert read_scalars(tmp_path) == {}  # a new run starts the CSV afresh


def test_resume_refuses_a_foreign_csv_without_touching_it(tmp_path):
    (tmp_path / SCALARS_NAME).write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(ValueError):
        RunLogger(tmp_path, resume_from=3)
    assert (tmp_path / SCALARS_NAME).read_text() == "epoch,loss\n1,0.5\n"


def test_log_file_lines(tmp_path):
    with RunLogger(tmp_path / "run") as log:
        log.log_config({"model": {"encoder": "resnet50", "exchange": "xtam"}, "seed": 1})
        log.log_training(120, 2000, {"semseg/weighted": 0.8, "total": 1.23}, {"model/encoder": 1e-4},
                         seconds_per_step=1.5)
        log.log_validation(200, {"semseg/miou": 67.6, "semseg/pixel_acc": 91.2, "depth/abs_rel": 0.117, "delta": -1.5})
        log.info("two\nlines")
    lines = (tmp_path / "run" / LOG_NAME).read_text().splitlines()
    bodies = [line.split("  ", 1)[1] for line in lines]
    assert all(line[:4].isdigit() and line[4] == "-" for line in lines)  # timestamped
    assert bodies[0].startswith("start new run in ")
    assert "config model.encoder = 'resnet50'" in bodies and "config seed = 1" in bodies
    assert "iter 120/2000  loss 1.23 semseg 0.800 lr 1.0e-4  1.50 s/it  eta 0:47:00" in bodies
    assert "val iter 200  semseg  miou 67.6  pixel_acc 91.2" in bodies
    assert "val iter 200  depth  abs_rel 0.117" in bodies and "val iter 200  delta -1.50" in bodies
    assert bodies[-2:] == ["two", "lines"]
