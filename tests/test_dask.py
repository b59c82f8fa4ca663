"""Dask on a real cluster: `dask scheduler` and `dask worker` processes on 127.0.0.1, started
here as they would be by hand. The same bytes as the DirectRunner, each input read, decoded and
augmented once, and runs that cannot end (scheduler killed, every worker killed, workers
without augbatch) ending loudly, in bounded time, with no temp files left."""
import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import apache_beam as beam
import pytest
from click.testing import CliRunner

import cli
from pipeline import progress, sinks
from pipeline.run import LOCK_FILE
from tests.conftest import ROOT, copy_sample_photos, shard_bytes
from tests.test_runners import reference, same_output  # noqa: F401 - the reference run fixture

BIN = os.path.dirname(sys.executable)  # the environment's `dask` and `augbatch` scripts
# A worker "without augbatch": this environment with augbatch's code hidden from imports (the
# repository off the path, the editable install's import hook removed).
NO_AUGBATCH = f"""
import sys
sys.path[:] = [p for p in sys.path if p not in ("", {ROOT!r})]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
from distributed.cli.dask_worker import main
sys.argv[0] = "dask-worker"
main()
"""


def environment(augbatch=True):
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    if augbatch:
        env["PYTHONPATH"] = ROOT
    else:
        env.pop("PYTHONPATH", None)
    return env


class Cluster:
    """A scheduler and worker processes (one thread each, no nanny: a killed worker stays
    dead), each logging to a file in `folder`."""

    def __init__(self, folder, scheduler_config=None):
        self.folder, self.workers, self.scheduler = folder, [], None
        self.folder.mkdir(exist_ok=True)
        scheduler_file = folder / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)  # an earlier cluster's
        # --idle-timeout / --death-timeout: nothing outlives a test run killed midway.
        self.scheduler = self._start("scheduler", ["dask", "scheduler", "--host", "127.0.0.1",
                                                   "--port", "0", "--no-dashboard",
                                                   "--idle-timeout", "600",
                                                   "--scheduler-file", str(scheduler_file)],
                                     config=scheduler_config)
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline and self.scheduler.poll() is None, self.logs()
            time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]

    def _start(self, name, command, augbatch=True, config=None, env=None):
        """`config`: dask settings for this process, {"distributed.x.y": value}; `env`: more
        environment variables."""
        log = open(self.folder / f"{name}.log", "ab")
        env = {**environment(augbatch), **(env or {})}
        for key, value in (config or {}).items():
            env["DASK_" + key.upper().replace(".", "__").replace("-", "_")] = str(value)
        return subprocess.Popen(command, cwd=self.folder, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def add_workers(self, n, augbatch=True, env=None):
        worker = ["--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", "--no-dashboard",
                  "--death-timeout", "60", self.address]
        for _ in range(n):
            name = f"worker-{len(self.workers)}"
            command = (["dask", "worker", *worker] if augbatch else
                       [sys.executable, "-c", NO_AUGBATCH, *worker])
            self.workers.append(self._start(name, command, augbatch, env=env))
        with self.client() as client:
            client.wait_for_workers(len([w for w in self.workers if w.poll() is None]),
                                    timeout=60)
        return self

    def client(self):
        from dask.distributed import Client
        return Client(self.address, timeout=30)

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                         for p in sorted(self.folder.glob("*.log")))

    def close(self):
        for process in [self.scheduler] + self.workers:
            if process.poll() is None:
                process.kill()
            process.wait(30)


@contextlib.contextmanager
def cluster(folder, workers=0, augbatch=True, scheduler_config=None):
    c = Cluster(folder, scheduler_config)
    try:
        if workers:
            c.add_workers(workers, augbatch)
        yield c
    finally:
        c.close()


def per_worker(c, function):
    with c.client() as client:
        return client.run(function)


def total(counts, name):
    return sum(c.get(name, 0) for c in counts.values())


# --- the work: same bytes, each input once ----------------------------------------------------

@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    # dask moves queued tasks to an idle worker (work stealing) once a second; these tests'
    # tasks last less than that.
    with cluster(tmp_path_factory.mktemp("cluster"), workers=2, scheduler_config={
            "distributed.scheduler.work-stealing-interval": "100ms"}) as c:
        yield c


def test_a_two_worker_cluster_writes_the_direct_runners_bytes_doing_each_input_once(
        reference, two_workers, tmp_path):  # noqa: F811
    photos, config, reference_out, manifest = reference
    before = per_worker(two_workers, progress.counts)
    result = CliRunner().invoke(cli.main, [
        "expand", "-q", "-c", config, "-i", photos, "-o", str(tmp_path / "dask"),
        "--num-shards", "3", "--dask-address", two_workers.address])
    assert result.exit_code == 0, result.output + two_workers.logs()
    same_output(tmp_path / "dask", reference_out)
    after = per_worker(two_workers, progress.counts)
    done = {name: total(after, name) - total(before, name)
            for name in (progress.READ, progress.DECODED, progress.DONE, progress.OUTPUTS)}
    inputs = manifest["counts"]["discovered"]  # 9 photos and one broken file
    # Read once each; decoded once each (the broken file does not decode); augmented once each
    # (the broken file is "done" as an error); every output made once.
    assert done == {progress.READ: inputs, progress.DECODED: inputs - 1,
                    progress.DONE: inputs, progress.OUTPUTS: manifest["counts"]["outputs"]}
    # Both workers did part of it.
    assert all(after[w] != before.get(w) for w in after) and len(after) == 2, (before, after)


def test_one_tfrecord_file_is_read_in_record_ranges_by_both_workers(two_workers, tmp_path):
    """One file of 5 ranges of records (4 x 64 + 8): both workers read part of it, and the
    output is the DirectRunner's, byte for byte. (Each range is tens of milliseconds of work:
    ranges of a few milliseconds each, dask may keep on the worker that holds their list.)"""
    from pipeline import sources
    from tests.test_bad_inputs import good_record
    folder = tmp_path / "records"
    folder.mkdir()
    records = 4 * sources.RANGE_RECORDS + 8
    (folder / "one.tfrecord").write_bytes(b"".join(
        sources.frame_record(good_record(i, size=64)) for i in range(records)))
    config = tmp_path / "job.yaml"
    config.write_text("augment: {chain: [{op: tf.image.flip_left_right}, {op: tfa.image.rotate, "
                      "max_degrees: 20}], copies: 2}\n")
    args = ["expand", "-q", "-c", str(config), "-i", str(folder), "--num-shards", "3"]
    direct = CliRunner().invoke(cli.main, args + ["-o", str(tmp_path / "direct")])
    assert direct.exit_code == 0, direct.output
    before = per_worker(two_workers, progress.counts)
    result = CliRunner().invoke(cli.main, args + ["-o", str(tmp_path / "dask"),
                                                  "--dask-address", two_workers.address])
    assert result.exit_code == 0, result.output + two_workers.logs()
    after = per_worker(two_workers, progress.counts)
    read = {w: after[w].get(progress.READ, 0) - before.get(w, {}).get(progress.READ, 0)
            for w in after}
    assert sum(read.values()) == records and all(read.values()) and len(read) == 2, read
    assert shard_bytes(tmp_path / "dask") == shard_bytes(tmp_path / "direct")


class _Counted(beam.DoFn):
    setups = teardowns = 0

    def setup(self):
        type(self).setups += 1

    def process(self, x):
        yield 2 * x

    def teardown(self):
        type(self).teardowns += 1


def test_a_worker_builds_a_stage_once_per_run_and_tears_it_down_when_the_run_ends():
    """Each partition of a stage used to unpickle, inspect and set up its DoFns again (~0.5 s
    of a worker's CPU per 150-photo run): now once per worker and run."""
    from apache_beam.transforms.window import GlobalWindows
    from pipeline import dask_runner
    stage = [dask_runner._Member(beam.ParDo(_Counted()), GlobalWindows(), kept=(None,))]
    key = ("a run", "Double")
    assert dask_runner._run_stage([1, 2], key, stage, []) == [((0, None), 2), ((0, None), 4)]
    assert dask_runner._run_stage([3], key, stage, []) == [((0, None), 6)]
    assert (_Counted.setups, _Counted.teardowns) == (1, 0)
    assert dask_runner.release_stages("another run") == 0
    assert dask_runner.release_stages("a run") == 1 and _Counted.teardowns == 1


# --- a local cluster (--dask-workers) --------------------------------------------------------

def test_a_local_cluster_run_writes_the_same_bytes_and_prints_nothing_alarming(
        reference, tmp_path):  # noqa: F811
    """`augbatch expand --dask-workers 2` as a user runs it: the DirectRunner's output, and on
    stderr no Beam import warning from the workers, no tracebacks as they shut down."""
    photos, config, reference_out, _ = reference
    run = subprocess.run(
        [os.path.join(BIN, "augbatch"), "expand", "-q", "-c", config, "-i", photos,
         "-o", str(tmp_path / "out"), "--num-shards", "3", "--dask-workers", "2"],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    same_output(tmp_path / "out", reference_out)
    for alarming in ("Traceback", "Exception ignored", "apitools", "Error"):
        assert alarming not in run.stderr, run.stderr


def test_a_local_worker_keeps_quiet_about_a_heartbeat_after_the_scheduler_closed():
    """A run's end closes the scheduler while a busy worker may still send a heartbeat: the
    worker logged that with a traceback on the user's terminal (seen once under load). The
    workers' setup (quiet.dask_setup, preloaded) drops that one report, nothing else."""
    code = ("import logging, sys; from pipeline import quiet; quiet.dask_setup(None); "
            "logging.basicConfig(stream=sys.stderr); "
            "log = logging.getLogger('distributed.worker'); "
            "log.error('Failed to communicate with scheduler during heartbeat.', "
            "exc_info=OSError('Stream is closed')); log.error('a task failed')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "a task failed" in run.stderr
    assert "heartbeat" not in run.stderr and "Stream is closed" not in run.stderr


def test_local_workers_set_the_memory_allocator_for_images():
    """dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which makes glibc map and
    page-fault every image-sized buffer anew (measured: 3x the DirectRunner's CPU); glibc's
    defaults let large images fragment the heap. The local clusters set both thresholds."""
    from dask.distributed import Client
    from pipeline import runners
    with runners.dask_cluster(1) as address, Client(address) as client:
        found = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                    os.environ.get("MALLOC_MMAP_THRESHOLD_")))
    assert list(found.values()) == [(str(64 << 20), str(4 << 20))], found


def peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KB


def large_photos(folder, count):
    """`count` JPEGs of 1600x1200 (a real photo, each shifted): 5.8 MB each once decoded."""
    import tensorflow as tf
    from tests.conftest import real_photo
    photo = tf.image.convert_image_dtype(real_photo(1200, 1600)[0], tf.uint8)
    (folder / "photos").mkdir(parents=True)
    for i in range(count):
        data = tf.io.encode_jpeg(tf.roll(photo, shift=7 * i, axis=1), quality=90).numpy()
        (folder / "photos" / f"{i:03d}.jpg").write_bytes(data)
    return str(folder)


def test_worker_memory_stays_flat_as_the_input_grows_8x(tmp_path):
    """Peak memory of each worker of a fresh 2-worker cluster (processes on 127.0.0.1, started
    with the allocator settings docs/scaling.md gives), 6 then 48 inputs of 1600x1200: inputs
    stream through each partition (at most 16 in one) and records go to bucket files as they
    come, so the peak does not follow the input (48 decoded inputs alone are 280 MB).
    Measured: ~715 and ~830 MB (glibc's defaults: 750 and 990)."""
    from pipeline import runners
    settings = {key.rsplit(".", 1)[1]: value for key, value in
                runners.LOCAL_CLUSTER_CONFIG.items() if "MALLOC" in key}
    assert settings == {"MALLOC_TRIM_THRESHOLD_": "67108864",
                        "MALLOC_MMAP_THRESHOLD_": "4194304"}  # as docs/scaling.md says
    peaks = {}
    for count in (6, 48):
        photos = large_photos(tmp_path / f"in{count}", count)
        with cluster(tmp_path / f"cluster{count}") as c:
            c.add_workers(2, env=settings)
            result = CliRunner().invoke(cli.main, [
                "expand", "-q", "-i", photos, "-o", str(tmp_path / f"out{count}"),
                "--copies", "2", "--plain-copies", "--dask-address", c.address])
            assert result.exit_code == 0, result.output + c.logs()
            peaks[count] = max(per_worker(c, peak_rss_mb).values())
    assert peaks[48] < 1.2 * peaks[6], peaks


# --- runs that cannot end, ending loudly ------------------------------------------------------

TIMEOUT = 5  # --dask_no_progress_timeout for these runs, seconds


def expand_with_fault(c, photos, out, fault=None, beam_step=False):
    """`augbatch expand` on cluster `c`; `fault` runs once workers are running its tasks (with
    `beam_step`: a task of a Beam step, not only dask's own). Returns (exit code, output,
    seconds from the fault to the exit)."""
    faulted, client = [], None

    def running():
        return [key for keys in client.processing().values() for key in keys
                if "/" in str(key) or not beam_step]

    def watch():
        nonlocal client
        with c.client() as client:
            deadline = time.monotonic() + 120
            while not running():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
        fault()
        faulted.append(time.monotonic())
    watcher = threading.Thread(target=watch, daemon=True)
    if fault:
        watcher.start()
    started = time.monotonic()
    result = CliRunner().invoke(cli.main, [
        "expand", "-q", "-i", photos, "-o", str(out), "--copies", "3", "--plain-copies",
        "--dask-address", c.address, "--", f"--dask_no_progress_timeout={TIMEOUT}"])
    if fault:
        watcher.join(30)
        assert faulted, "the fault never happened: " + result.output + c.logs()
    return result.exit_code, result.output, time.monotonic() - (faulted or [started])[0]


def temp_files(out):
    return [str(p) for p in pathlib.Path(out).rglob("*") if sinks.TMP_DIR in str(p)]


@pytest.fixture
def photos(tmp_path):
    return copy_sample_photos(tmp_path / "photos", per_class=4)


def test_killing_the_scheduler_mid_run_ends_the_run_loudly(photos, tmp_path):
    with cluster(tmp_path / "cluster", workers=2) as c:
        code, output, took = expand_with_fault(c, photos, tmp_path / "out", c.scheduler.kill)
    assert code == 2 and took < 30, (code, took, output)
    assert "lost the Dask scheduler" in output and c.address in output, output
    assert "Traceback" not in output and not temp_files(tmp_path / "out"), output


def test_losing_every_worker_ends_the_run_after_the_no_progress_timeout(photos, tmp_path):
    def kill_workers():
        for worker in c.workers:
            worker.kill()
    with cluster(tmp_path / "cluster", workers=2) as c:
        code, output, took = expand_with_fault(c, photos, tmp_path / "out", kill_workers)
    assert code == 2 and took < TIMEOUT + 30, (code, took, output)
    assert f"no Dask worker is connected to {c.address} for {TIMEOUT} s" in output, output
    assert "Traceback" not in output and not temp_files(tmp_path / "out"), output


def test_a_worker_killed_in_the_middle_of_a_step_ends_the_run_naming_the_step(photos, tmp_path):
    """The scheduler allows no retry (allowed-failures 0): a worker dying while running a
    task is dask's KilledWorker at once. The run ends with exit 2 naming the Beam step, not
    dask's task names, in bounded time, with no temp files."""
    def kill_workers():  # (both: the one running a task of a Beam step is among them)
        for worker in c.workers:
            worker.kill()
    with cluster(tmp_path / "cluster", workers=2,
                 scheduler_config={"distributed.scheduler.allowed-failures": 0}) as c:
        code, output, took = expand_with_fault(c, photos, tmp_path / "out", kill_workers,
                                               beam_step=True)
    assert code == 2 and took < 60, (code, took, output)
    # The Beam step, or (a task between steps died with it) what kind of step.
    assert re.search("Dask workers died while running (step [A-Z]|a step moving data)",
                     output), output
    assert "1 worker(s) in a row died" in output, output
    for internal in (r"[0-9a-f]{32}", "map_partitions", "list-part", "repartition", r"\('"):
        assert not re.search(internal, output), output
    assert "Traceback" not in output and not temp_files(tmp_path / "out"), output


def test_workers_without_augbatch_are_named_before_the_run_starts(photos, tmp_path):
    with cluster(tmp_path / "cluster", workers=1, augbatch=False) as c:
        code, output, took = expand_with_fault(c, photos, tmp_path / "out")
        assert all(w.poll() is None for w in c.workers)  # refused before a task reached them
    assert code == 2 and took < 60, (code, took, output)
    assert "cannot import augbatch's code (No module named 'pipeline')" in output, output
    assert "install augbatch 0.1.0" in output and "Traceback" not in output, output
    assert not temp_files(tmp_path / "out"), output


def test_ctrl_c_on_a_local_cluster_keeps_what_it_says_and_resume_ends_the_run(tmp_path):
    """Ctrl-C reaches the whole process group, the local workers too. Dask cannot interrupt a
    running task: the command waits for the cancelled tasks to end, so what it says it kept
    is what the folder holds, nothing writes there after it exits, no worker prints a
    traceback, and --resume finishes with the bytes of a run never stopped."""
    photos = tmp_path / "photos"
    for copy in range(12):  # 432 inputs: partitions of 16 commit one after another
        for path in pathlib.Path(copy_sample_photos(tmp_path / f"c{copy}")).rglob("*.jpg"):
            os.makedirs(photos / path.parent.name, exist_ok=True)
            os.rename(path, photos / path.parent.name / f"{copy}-{path.name}")
    config = tmp_path / "job.yaml"
    config.write_text("augment: {copies: 1, seed: 5, "
                      "chain: [{op: tf.image.random_flip_left_right}]}\n")
    out, tmp = tmp_path / "out", tmp_path / "out" / sinks.TMP_DIR
    command = [os.path.join(BIN, "augbatch"), "expand", "-c", str(config), "-i", str(photos),
               "-o", str(out), "--dask-workers", "2"]
    process = subprocess.Popen(command, cwd=tmp_path, env=environment(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    deadline = time.monotonic() + 240
    while not list(tmp.glob("done-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    kept = int(re.search(r"the work of (\d+) inputs is kept", stderr).group(1))
    listed = sorted(p.name for p in tmp.iterdir())
    time.sleep(2)
    assert sorted(p.name for p in tmp.iterdir()) == listed  # nothing writes there any more
    assert 0 < kept == len(sinks.read_journals(str(tmp))[0]) < 432
    resumed = subprocess.run(command + ["--resume", "-q"], cwd=tmp_path, env=environment(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    direct = tmp_path / "direct"
    subprocess.run(command[:-2] + ["-q", "-o", str(direct)], cwd=tmp_path, env=environment(),
                   check=True, capture_output=True, timeout=300)
    assert shard_bytes(out) == shard_bytes(direct)


def test_ctrl_c_once_the_run_has_finished_while_its_local_cluster_closes_is_no_failure(
        tmp_path):
    """The local cluster takes seconds to close after the run (its workers are stopped): a
    Ctrl-C then finds the output complete, and the command says so, exit 0."""
    photos = copy_sample_photos(tmp_path / "photos")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [os.path.join(BIN, "augbatch"), "expand", "-i", photos, "-o", str(out), "--copies", "0",
         "--dask-workers", "2"], cwd=tmp_path, env=environment(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    # The run is over once its manifest is there and its lock is gone; the cluster then takes
    # about a second to close (its workers are stopped).
    while (not (out / "manifest.json").exists() or (out / LOCK_FILE).exists()) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "the run had finished and its output is complete" in stderr
    assert stdout.startswith("done in ") and "Traceback" not in stderr, stdout + stderr
