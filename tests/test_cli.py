"""The command line as people meet it: help with examples, one clear message per problem,
quiet start-up, and one run exactly as a user types it."""
import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest
from apache_beam.utils import shared
from click.testing import CliRunner

import cli
from pipeline import __version__, augment, transforms
from tests.conftest import ROOT, SAMPLE_CONFIGS, read_outputs

LIGHT = os.path.join(SAMPLE_CONFIGS, "light_classification.yaml")


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"augbatch, version {__version__}"


@pytest.mark.parametrize("command", [None] + sorted(cli.main.commands))
def test_every_help_shows_examples(command):
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "augbatch " in result.output.split("Example", 1)[1]


def assert_user_error(result, message, hint):
    assert result.exit_code == 2, result.output
    assert f"error: {message}" in result.stderr
    assert f"hint: {hint}" in result.stderr
    assert "Traceback" not in result.output


def test_missing_config(tmp_path):
    result = invoke("expand", "-c", tmp_path / "nope.yaml", "-o", tmp_path / "out")
    assert_user_error(result, f"config file not found: {tmp_path / 'nope.yaml'}",
                      "check the path")


def test_missing_input(tmp_path):
    result = invoke("expand", "-c", LIGHT, "-i", tmp_path / "nope", "-o", tmp_path / "out")
    assert_user_error(result, f"--input {tmp_path / 'nope'}: no such file or folder",
                      "give a folder of images")


def unwritable_dir(tmp_path):
    """A folder this user cannot create: root may write anywhere a mode allows, but no one may
    make folders in sysfs."""
    if os.geteuid() == 0:
        return "/sys/augbatch-test-output"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    return str(locked / "out")


def test_output_not_writable(small_folder, tmp_path):
    out = unwritable_dir(tmp_path)
    result = invoke("expand", "-c", LIGHT, "-i", small_folder, "-o", out)
    assert_user_error(result, f"permission denied: {out}", "check that you may read")
    assert not os.path.exists(out)


def test_output_is_a_file(small_folder, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    result = invoke("expand", "-c", LIGHT, "-i", small_folder, "-o", taken)
    assert_user_error(result, f"--output {taken} is a file, not a folder",
                      "choose another --output")
    assert taken.read_text() == "a file, not a folder"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_adds_the_traceback(tmp_path, where):
    """--debug is the group's option; given after the command (as the hint "run with --debug"
    invites) it works the same, and is not handed to Beam."""
    args = ["expand", "-c", tmp_path / "nope.yaml", "-o", tmp_path / "out"]
    result = invoke(*(["--debug", *args] if where == "before" else [*args, "--debug"]))
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "error: config file not found" in result.stderr


def test_a_mistyped_option_is_refused_not_handed_to_beam(small_folder, tmp_path):
    """Only what follows `--` goes to Beam, which would warn about an option it does not know
    and drop it: a run with the default shards instead of the four asked for, exit 0."""
    result = invoke("expand", "-c", LIGHT, "-i", small_folder, "-o", tmp_path / "out",
                    "--num-shard", "4")
    assert result.exit_code == 2, result.output
    assert "No such option '--num-shard'. Did you mean '--num-shards'?" in result.stderr
    assert not os.path.exists(tmp_path / "out")
    stray = invoke("expand", "-c", LIGHT, "-o", tmp_path / "out", "out2")
    assert stray.exit_code == 2 and "unexpected extra argument (out2)" in stray.stderr
    assert "[-- BEAM_PIPELINE_OPTIONS...]" in invoke("expand", "--help").output


def fail_in_worker(monkeypatch, error):
    """Make building the chain on the worker (a DoFn's setup) raise `error` (with no runner of
    an earlier run of the same job kept in this process: transforms._RUNNERS)."""
    def init(self, job):
        raise error
    monkeypatch.setattr(transforms, "_RUNNERS", shared.Shared())
    monkeypatch.setattr(augment.ChainRunner, "__init__", init)


def test_unexpected_error_is_one_line(small_folder, tmp_path, monkeypatch):
    fail_in_worker(monkeypatch, RuntimeError("the chain broke"))
    result = invoke("expand", "-c", LIGHT, "-i", small_folder, "-o", tmp_path / "out")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[-2].startswith("error: unexpected RuntimeError: the chain broke")
    assert lines[-1] == "run with --debug for the traceback"
    assert "Traceback" not in result.stderr

    result = invoke("--debug", "expand", "-c", LIGHT, "-i", small_folder, "-o",
                    tmp_path / "again")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "run with --debug" not in result.stderr


def test_path_error_inside_the_pipeline_is_a_user_error(small_folder, tmp_path, monkeypatch):
    # Beam re-raises a DoFn's exception as another type; the path problem still shows.
    fail_in_worker(monkeypatch, PermissionError(13, "Permission denied", "/models/weights.bin"))
    result = invoke("expand", "-c", LIGHT, "-i", small_folder, "-o", tmp_path / "out")
    assert_user_error(result, "permission denied: /models/weights.bin",
                      "check that you may read")


@pytest.mark.parametrize("xla", [[], ["--xla"]])
def test_expand_as_a_user_runs_it(small_folder, tmp_path, xla):
    """`augbatch expand` in a fresh process from the repository root, as in the README."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [os.path.join(os.path.dirname(sys.executable), "augbatch"), "expand",
               "--config", "sample_configs/light_classification.yaml", "--output", str(out),
               "--input", small_folder, "--copies", "1", *xla]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done in ") and "9 inputs -> 18 records" in done.stdout
    assert "progress: 9/9 inputs (100%)" in done.stderr
    for noise in ("Traceback", "apitools", "tensorflow/", "cuda", "oneDNN", "WARNING",
                  "UserWarning", "RankWarning", "XLA", "I0000", "tensorflow_addons"):
        assert noise not in done.stderr, done.stderr
    assert len(read_outputs(str(out))) == 18
    result = invoke("inspect", out, "--verify")
    assert result.exit_code == 0 and "verify: OK, all 18 records" in result.stdout


def test_dry_run_and_run_leave_nothing_in_the_temp_folder(small_folder, tmp_path, monkeypatch):
    """Beam makes a folder in the system's temp folder for every pipeline and removes it only
    once the pipeline has run: a dry run (built, never run) used to leave one each time."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    args = ["expand", "-c", LIGHT, "-i", small_folder, "-o", tmp_path / "out", "--copies", "1"]
    dry = invoke(*args, "--dry-run")
    assert dry.exit_code == 0 and "dry run: nothing was run" in dry.output, dry.output
    assert os.listdir(temp) == [] and not os.path.exists(tmp_path / "out")
    done = invoke(*args)
    assert done.exit_code == 0 and "9 inputs -> 18 records" in done.output, done.output
    assert os.listdir(temp) == []


@pytest.mark.parametrize("command", [
    ["preview", "-c", "sample_configs/heavy_classification.yaml", "--explain", "-n", "2",
     "-o", "sheet.png"],
    ["expand", "-c", "sample_configs/keras_layers.yaml", "--dry-run", "-o", "out"]])
def test_a_command_leaves_nothing_in_the_temp_folder(command, tmp_path):
    """TensorFlow's autograph writes the code it generates in the temp folder and removes it at
    exit, which the command's quick exit (cli.run) skips: every command keeps it in a folder of
    its own, removed before the exit."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    *command, output = command
    done = subprocess.run([sys.executable, "cli.py", *command, str(tmp_path / output)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(temp)})
    assert done.returncode == 0, done.stderr
    assert os.listdir(temp) == []


def test_output_into_a_closed_pipe_ends_quietly():
    """`augbatch list-ops | head`: the reader stops reading; the command ends as a Unix
    command the broken pipe ends (128 + SIGPIPE), with no error message."""
    process = subprocess.Popen([sys.executable, "cli.py", "list-ops"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the command writes its first line
    stderr = process.communicate(timeout=300)[1].decode()
    assert process.returncode == 128 + signal.SIGPIPE, stderr
    assert "error" not in stderr.lower() and "Traceback" not in stderr, stderr


def test_worker_threads_share_one_traced_decoder(tmp_path):
    """With two worker threads the decoder's first calls come from several threads at once:
    it is traced once, not once per thread (TensorFlow then warned of retracing, four times
    for the sample photos)."""
    done = subprocess.run([sys.executable, "cli.py", "expand", "-c", LIGHT, "-o",
                           str(tmp_path / "out"), "--copies", "1", "--",
                           "--direct_num_workers=2", "--direct_running_mode=multi_threading"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "36 inputs -> 72 records" in done.stdout
    assert "retracing" not in done.stderr and "WARNING" not in done.stderr, done.stderr


def test_tensorflow_is_imported_without_setuptools():
    """TensorFlow 2.15 imports distutils, which setuptools' import hook in a virtual environment
    answers with setuptools and pkg_resources (~0.2 s of every start-up): the commands import
    TensorFlow without them, print nothing for it (warnings shown), and leave the hook as it
    was for anything imported later."""
    code = ("import json, sys; from pipeline import quiet; "
            "hooks = lambda: [f for f in sys.meta_path if 'distutils' in type(f).__module__]; "
            "before = hooks(); quiet.import_tensorflow(); "
            "print(json.dumps([hooks() == before, "
            "sorted(m for m in ('setuptools', 'pkg_resources') if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [True, []], done.stdout
    assert "distutils" not in done.stderr, done.stderr


def test_absl_logging_in_tensorflow_follows_tf_cpp_min_log_level():
    """quiet.native_logs_follow_tf_level finds absl's SetMinLogLevel in TensorFlow's library
    and gives it TF_CPP_MIN_LOG_LEVEL (absl's own MinLogLevel reads it back), without reading
    the library into memory: it is ~50 MB on the pinned stack and ~160 MB on the modern one,
    and every command's peak RSS grew by as much."""
    code = r"""
import ctypes, glob, json, mmap, os, re, tracemalloc
import tensorflow as tf
from pipeline import quiet
path, = glob.glob(os.path.join(os.path.dirname(tf.__file__), "libtensorflow_framework*"))
with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    getter, setter = (re.search(rb"_ZN4absl\d+lts_\d+" + name, data).group().decode() for name
                      in (rb"11MinLogLevelEv", rb"14SetMinLogLevelENS0_18LogSeverityAtLeastE"))
library = ctypes.CDLL(path)
getattr(library, setter)(ctypes.c_int(0))  # (TensorFlow >= 2.19 sets it while imported)
tracemalloc.start()
quiet.native_logs_follow_tf_level()
print(json.dumps([getattr(library, getter)(), tracemalloc.get_traced_memory()[1] < 1e6]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [2, True], done.stdout


def test_the_command_ends_with_its_exit_code_and_all_it_printed(tmp_path):
    """`augbatch` leaves the process at once when a command is done (cli.run, not Python's slow
    shutdown): the exit code and every line printed, on stdout and stderr, still come out."""
    def command(*args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *map(str, args)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    listed = command("list-ops")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == invoke("list-ops").stdout  # to the last line
    missing = command("validate", tmp_path / "nope.yaml")
    assert missing.returncode == 2
    in_process = invoke("validate", tmp_path / "nope.yaml").stderr
    assert in_process.startswith("error: config file not found") and "\nhint: " in in_process
    assert missing.stderr.endswith(in_process), missing.stderr
