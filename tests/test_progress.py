"""Progress of an expand run: the display on its own, then through the real CLI and pipeline."""
import io
import logging
import re
import sys
import threading
import time

from click.testing import CliRunner

import cli
from pipeline import progress


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self):
        return True


def bump_in_thread(total, pause=0.02):
    def work():
        for _ in range(total):
            time.sleep(pause)
            progress.count(progress.DONE)
            progress.count(progress.OUTPUTS, 3)
    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_lines_when_not_a_terminal():
    stream = io.StringIO()
    with progress.Shown(10, stream=stream, interval=0.05):
        bump_in_thread(10).join()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "progress: 10 inputs to augment"
    updates = [line for line in lines[1:] if line.startswith("progress: ")]
    assert len(updates) >= 2, lines
    done = [int(re.match(r"progress: (\d+)/10 inputs", line).group(1)) for line in updates]
    assert done == sorted(done) and done[-1] == 10
    assert lines[-1].startswith("progress: 10/10 inputs (100%), 30 outputs, ")
    assert "inputs/s" in lines[-1]


def test_unknown_total_counts_what_was_read():
    stream = io.StringIO()
    with progress.Shown(None, stream=stream, interval=10):
        progress.count(progress.READ, 4)
        progress.count(progress.DONE, 4)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "progress: reading the input records"
    assert lines[-1].startswith("progress: 4/4 inputs (100%), 0 outputs")


def test_nothing_counted_prints_no_final_line():
    # Runners that run the DoFns in other processes leave the counters at zero.
    stream = io.StringIO()
    with progress.Shown(5, stream=stream, interval=10):
        pass
    assert stream.getvalue().splitlines() == ["progress: 5 inputs to augment"]


def test_bar_on_a_terminal():
    stream = Terminal()
    with progress.Shown(8, stream=stream):
        bump_in_thread(8, pause=0.05).join()
        time.sleep(0.3)  # one more refresh of the bar
    text = stream.getvalue()
    assert "augmenting" in text and "8/8" in text and "24 outputs" in text
    assert "\r" in text  # redrawn in place, not a line per update


def test_disabled_shows_nothing():
    stream = io.StringIO()
    with progress.Shown(3, enabled=False, stream=stream, interval=0.01):
        bump_in_thread(3).join()
    assert stream.getvalue() == ""
    assert progress.counts()[progress.DONE] == 3  # the counts are kept all the same


def test_status_line_and_durations():
    assert progress.status_line(30, 120, 90, 10.0) == (
        "30/120 inputs (25%), 90 outputs, 3.0 inputs/s, ETA 30s, elapsed 10s")
    assert progress.status_line(0, None, 0, 1.0) == "0 inputs, 0 outputs, elapsed 1.0s"
    assert [progress.duration(s) for s in (2.345, 42, 125, 7300)] == [
        "2.3s", "42s", "2m05s", "2h01m"]


def expand_args(small_folder, out, *extra):
    return ["expand", "--input", small_folder, "--output", str(out), "--copies", "1",
            "--seed", "3", "--plain-copies", *extra]


def test_expand_prints_progress_lines_and_summary(small_folder, tmp_path):
    result = CliRunner().invoke(cli.main, expand_args(small_folder, tmp_path / "out"),
                                env={progress.INTERVAL_ENV: "0.1"})
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert "progress: 9 inputs to augment" in lines
    assert lines[-1].startswith("progress: 9/9 inputs (100%), 18 outputs, "), lines
    summary = result.stdout.splitlines()
    assert re.match(r"done in \S+: 9 inputs -> 18 records in 1 shard, \S+ inputs/s$",
                    summary[0]), summary
    assert summary[1] == "  written: 9 inputs, errored: 0"
    assert summary[-1] == f"output: {tmp_path / 'out'}"


def test_quiet_silences_progress_and_summary(small_folder, tmp_path):
    for args in (expand_args(small_folder, tmp_path / "a", "--quiet"),
                 ["-q"] + expand_args(small_folder, tmp_path / "b")):
        result = CliRunner().invoke(cli.main, args, env={progress.INTERVAL_ENV: "0.1"})
        assert result.exit_code == 0, result.output
        assert result.stdout == "" and result.stderr == "", result.output
    for out in ("a", "b"):
        assert (tmp_path / out / "manifest.json").exists()


def test_on_a_terminal_log_lines_go_above_the_bar_and_reading_shows(monkeypatch):
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)  # the console, as `augbatch` logs to it
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        with progress.Shown(4, stream=stream):
            progress.count(progress.READ, 3)  # read, no batch done yet
            time.sleep(0.5)
            logging.getLogger("augbatch").warning("a log line")
            bump_in_thread(4).join()
            time.sleep(0.3)
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert "0/4" in text and "3 read, 0 outputs" in text  # something moves before a batch ends
    # The log line is on a line of its own: the bar was cleared first (not "...]a log line").
    assert "a log line" in [line.split("\r")[-1] for line in text.split("\n")]
    assert "4/4" in text
