"""Beyond one machine: the same job writes the same bytes in the DirectRunner's multi-processing
mode and through Beam's portable job API (the one Flink and Spark job servers serve), and on a
Dask cluster (tests/test_dask.py). Dataflow, Flink and Spark cannot run here (no network):
their pipelines are built and checked offline (--dry-run, the pipeline proto with the GPU
hint), and the package that --setup_file ships is built, installed apart and runs every DoFn
in a fresh process."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import sysconfig

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2
from click.testing import CliRunner

import cli
from pipeline import run, runners, sources
from pipeline.errors import UserError
from tests.conftest import ROOT, SAMPLE_IMAGES, make_job, shard_bytes
from tests.test_filesystems import MemoryFileSystem  # registers mem://, an object store

CHAIN = [{"op": "tf.image.random_flip_left_right"},
         {"op": "tf.image.random_brightness", "max_delta": 0.2},
         {"op": "tf.image.random_contrast", "lower": 0.7, "upper": 1.3, "probability": 0.5}]
GPU = "type:nvidia-tesla-t4;count:1;install-nvidia-driver"
DATAFLOW = ["--project=my-project", "--region=us-central1",
            "--temp_location=gs://my-bucket/tmp", "--setup_file=./setup.py"]


def add_photos(folder):
    """The small_folder photos (3 per class) and one broken file, so the errors path runs too."""
    for class_dir in sorted(os.listdir(SAMPLE_IMAGES)):
        os.makedirs(os.path.join(folder, class_dir), exist_ok=True)
        for name in sorted(os.listdir(os.path.join(SAMPLE_IMAGES, class_dir)))[:3]:
            shutil.copy(os.path.join(SAMPLE_IMAGES, class_dir, name),
                        os.path.join(folder, class_dir, name))
    with open(os.path.join(folder, "objects", "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    return str(folder)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The job on the DirectRunner (in memory): (photos, config file, output dir, manifest)."""
    root = tmp_path_factory.mktemp("reference")
    photos = add_photos(root / "photos")
    config = root / "job.yaml"
    config.write_text(yaml.safe_dump({"augment": {"chain": CHAIN, "copies": 2, "seed": 7}}))
    out = root / "direct"
    manifest = run.run_expand(make_job(photos, out, CHAIN, copies=2, seed=7, num_shards=3))
    assert manifest["counts"]["errored"] == 1 and manifest["counts"]["written"] == 9
    return photos, str(config), out, manifest


def same_output(out, reference_out):
    """Shards, errors.jsonl and the manifest's counts equal the reference run's."""
    shards = shard_bytes(out)
    assert len(shards) == 3 and shards == shard_bytes(reference_out)
    for name in ("errors.jsonl",):
        with open(os.path.join(out, name), "rb") as a, \
                open(os.path.join(reference_out, name), "rb") as b:
            assert a.read() == b.read()
    with open(os.path.join(out, "manifest.json")) as a, \
            open(os.path.join(reference_out, "manifest.json")) as b:
        mine, theirs = json.load(a), json.load(b)
    for key in ("counts", "errors_by_stage", "config_hash", "output"):
        theirs_value = theirs[key]
        if key == "output":
            mine[key].pop("directory"), theirs_value.pop("directory")
        assert mine[key] == theirs_value, key


def expand(*args):
    result = CliRunner().invoke(cli.main, ["expand", "-q", *args])
    assert result.exit_code == 0, result.output
    return result


# --- other runners that run here --------------------------------------------------------------

@pytest.mark.parametrize("beam_args", [
    ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    # Beam's portable job API (what Flink and Spark job servers serve), with the job service
    # embedded in this process.
    ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
], ids=["multi_processing", "portable_job_api"])
def test_other_runners_write_the_same_bytes(reference, tmp_path, beam_args):
    photos, config, reference_out, _ = reference
    expand("-c", config, "-i", photos, "-o", str(tmp_path / "out"), "--num-shards", "3",
           "--", *beam_args)
    same_output(tmp_path / "out", reference_out)


def test_inputs_are_spread_only_where_there_are_workers_to_spread_them_over(reference,
                                                                           tmp_path):
    """In this process on one worker (the default) the inputs go straight to their read: a
    shuffle there spreads nothing and delays the first image; with workers, they are spread
    (the bytes are the same either way: test_other_runners_write_the_same_bytes)."""
    photos, config, _, _ = reference

    def steps(*beam_args):
        text = expand("-c", config, "-i", photos, "-o", str(tmp_path / "never"), "--dry-run",
                      *beam_args).output
        return [line.split(". ", 1)[1] for line in text.splitlines()
                if line.split(".", 1)[0].strip().isdigit()]
    alone = steps()
    assert alone[:2] == ["Inputs", "Read"] and "Spread" not in alone
    spread = steps("--", "--direct_num_workers=2", "--direct_running_mode=multi_threading")
    assert spread[:3] == ["Inputs", "Spread", "Read"]


# --- runner selection --------------------------------------------------------------------------

def test_runner_names_and_options_are_assembled():
    assert runners.assemble() == (["--runner=DirectRunner"], 0)
    assert runners.assemble("dataflow", ["--project=p"]) == (
        ["--project=p", "--runner=DataflowRunner"], 0)
    assert runners.assemble(None, ["--runner=FlinkRunner", "--flink_master=h:8081"]) == (
        ["--flink_master=h:8081", "--runner=FlinkRunner"], 0)
    dask = "--runner=pipeline.dask_runner.DaskRunner"
    assert runners.assemble(dask_address="tcp://h:8786") == (
        [dask, "--dask_client_address=tcp://h:8786"], 0)
    assert runners.assemble(dask_workers=3) == ([dask], 3)
    assert runners.assemble("dask", ["--dask_client_address=tcp://h:1"]) == (
        ["--dask_client_address=tcp://h:1", dask], 0)
    # Beam's own DaskRunner name runs the fixed one.
    assert runners.assemble(None, ["--runner", "DaskRunner"])[0] == [dask]
    for bad in [dict(runner="flink", dask_workers=2),
                dict(dask_address="tcp://h:1", dask_workers=2),
                dict(runner="spark", beam_args=["--runner=FlinkRunner"])]:
        with pytest.raises(UserError):
            runners.assemble(**bad)


def test_more_local_dask_workers_than_cores_is_said(caplog):
    cores = os.cpu_count() or 1
    with caplog.at_level("WARNING", logger="augbatch"):
        assert runners.assemble(dask_workers=cores)[1] == cores
        assert not caplog.records
        assert runners.assemble(dask_workers=cores + 2)[1] == cores + 2
    assert f"--dask-workers {cores + 2} on {cores} CPU cores" in caplog.text
    assert "run slower" in caplog.text


# --- built, not run: Dataflow, Flink, Spark ----------------------------------------------------

def files_under(path):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)


def test_dry_run_for_dataflow_with_gpus_builds_everything_and_writes_nothing(reference,
                                                                            tmp_path):
    _, config, _, _ = reference
    before = files_under(tmp_path)
    # An object store (mem://, as gs:// would be): a dry run builds the pipeline without
    # listing it (no network), and writes nothing.
    result = expand("-c", config, "-i", "mem://bucket/photos", "-o", "mem://bucket/never",
                    "--runner", "dataflow", "--accelerator", GPU, "--dry-run", "--", *DATAFLOW)
    text = result.output
    assert files_under(tmp_path) == before and not MemoryFileSystem.objects
    assert "inputs: mem://bucket/photos (not listed: a dry run stays offline)\n" in text
    assert ("note: not submittable from here: apache-beam[gcp] is not installed" in text) == (
        not runners.dataflow_installed())
    assert "runner: DataflowRunner" in text
    for option in ("project: my-project", "region: us-central1", "setup_file: ./setup.py",
                   "temp_location: gs://my-bucket/tmp"):
        assert f"  {option}\n" in text
    steps = [line.split(". ", 1)[1] for line in text.splitlines() if line[:4].strip()
             .rstrip(".").isdigit()]
    labels = [step.split("  [")[0] for step in steps]
    for first, then in [("Inputs", "Read"), ("Read", "Decode"), ("Decode", "Batch"),
                        ("Batch", "AugmentEncode"), ("AugmentEncode", "Write"),
                        ("Write", "Summary")]:
        assert labels.index(first) < labels.index(then), labels
    assert [s for s in steps if "accelerator" in s] == [f"AugmentEncode  [accelerator={GPU}]"]


def test_the_gpu_hint_is_on_the_augment_step_in_the_pipeline_proto(reference, tmp_path):
    photos, _, _, _ = reference
    job = make_job(photos, tmp_path / "out", CHAIN, copies=2)
    options = PipelineOptions(["--runner=DataflowRunner", *DATAFLOW])
    discovery = sources.discover(job)
    with runners.new_pipeline(options) as p:
        run.build_pipeline(p, job, discovery, 2, str(tmp_path / "tmp"), job.config_hash,
                           accelerator=GPU)
        proto = p.to_runner_api()
    hinted = {}
    for transform in proto.components.transforms.values():
        if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
            continue
        hints = proto.components.environments[transform.environment_id].resource_hints
        hinted[transform.unique_name] = hints.get(common_urns.resource_hints.ACCELERATOR.urn)
    assert {name: v for name, v in hinted.items() if v} == {
        "AugmentEncode/ParDo(AugmentAndEncode)": GPU.encode()}
    assert len(hinted) > 10  # every other ParDo is there, without the hint


def test_dry_run_names_bad_dataflow_options(reference, tmp_path):
    photos, config, _, _ = reference
    result = CliRunner().invoke(cli.main, [
        "expand", "-c", config, "-i", "mem://bucket/photos", "-o", "mem://bucket/out",
        "--runner", "dataflow", "--dry-run", "--", "--region=us-central1"])
    assert result.exit_code == 2, result.output
    assert "project" in result.output.lower() and "Traceback" not in result.output


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "run"])
@pytest.mark.parametrize("runner,paths,options,message", [
    ("dataflow", ("local", "mem://bucket/out"), DATAFLOW,
     "Dataflow workers cannot reach the local path {photos}"),
    ("dataflow", ("mem://bucket/photos", "local"), DATAFLOW,
     "Dataflow workers cannot reach the local path {out}"),
    ("dataflow", ("mem://bucket/photos", "mem://bucket/out"),
     DATAFLOW[:-1] + ["--setup_file=/nowhere/setup.py"], "--setup_file /nowhere/setup.py"),
    ("portable", ("local", "local"), ["--environment_type=LOOPBACK"],
     "--runner portable needs the Beam job server"),
], ids=["dataflow_local_input", "dataflow_local_output", "dataflow_no_setup_file",
        "portable_no_endpoint"])
def test_what_a_submission_refuses_is_refused_offline_before_anything_is_written(
        reference, tmp_path, runner, paths, options, message, dry_run):
    photos, config, _, _ = reference
    out = str(tmp_path / "out")
    given = [photos if paths[0] == "local" else paths[0], out if paths[1] == "local"
             else paths[1]]
    result = CliRunner().invoke(cli.main, [
        "expand", "-q", "-c", config, "-i", given[0], "-o", given[1], "--runner", runner,
        *(["--dry-run"] if dry_run else []), "--", *options])
    assert result.exit_code == 2, result.output
    assert message.format(photos=photos, out=out) in result.output, result.output
    assert "Traceback" not in result.output
    assert not os.path.exists(out) and not MemoryFileSystem.objects


def test_a_dataflow_submission_needs_apache_beam_gcp(reference, tmp_path):
    job = make_job("mem://bucket/photos", "mem://bucket/out", CHAIN)
    options = PipelineOptions(["--runner=DataflowRunner", *DATAFLOW])
    if runners.dataflow_installed():
        assert runners.check_submission(job, options) == []
    else:
        with pytest.raises(UserError, match=r"needs apache-beam\[gcp\]") as refused:
            runners.check_submission(job, options)
        assert "augbatch[dataflow]" in refused.value.hint and "3.12" in refused.value.hint
        assert "apache-beam[gcp]" in runners.check_submission(job, options, dry_run=True)[0]


@pytest.mark.parametrize("runner,options", [
    ("dask", ["--dask-workers", "2"]),
    ("flink", ["--", "--flink_master=flink-host:8081", "--environment_type=LOOPBACK"]),
    ("spark", ["--", "--spark_master_url=spark://spark-host:7077",
               "--environment_type=DOCKER"]),
    ("portable", ["--", "--job_endpoint=job-server:8099", "--environment_type=EXTERNAL",
                  "--environment_config=worker-pool:50000"]),
])
def test_dry_run_for_other_runners(reference, tmp_path, runner, options):
    photos, config, _, _ = reference
    result = expand("-c", config, "-i", photos, "-o", str(tmp_path / "never"), "--runner",
                    runner, "--dry-run", *options)
    assert not (tmp_path / "never").exists()
    text = result.output
    assert f"runner: {runners.RUNNERS[runner]}\n" in text
    assert "AugmentEncode" in text and "Summary" in text
    for option in options[1:]:
        if option.startswith("--"):
            key, value = option[2:].split("=", 1)
            assert f"  {key}: {value}\n" in text
    if runner == "dask":  # translated to a dask graph, no cluster started
        assert "dask graph: " in text and "started at run time" in text


# --- what --setup_file ships to remote workers -------------------------------------------------

WORKER = r"""
import json, pickle, sys
site, deps, job_file = sys.argv[1:4]
sys.path[:] = [p for p in sys.path if "site-packages" not in p] + [site, deps]
import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows
import pipeline
import pipeline.run

with open(job_file, "rb") as f:
    payloads, refs = pickle.load(f)
loaded = {}  # label -> (DoFn, its extra args)
for label, payload in payloads.items():
    fn, args, kwargs, side_inputs, windowing = pickler.loads(payload)
    fn.setup()
    loaded[label] = (fn, args)
fns = {type(fn).__name__: fn for fn, _ in loaded.values()}

def out(result):  # what a DoFn method emitted (None: nothing)
    return list(result or ())

def main(outputs):
    return [x for x in outputs if not isinstance(x, TaggedOutput)]

def errors(outputs):
    return [x.value for x in outputs if isinstance(x, TaggedOutput) and x.tag == "errors"]

def tagged(outputs, tag):
    return [x.value for x in outputs if isinstance(x, TaggedOutput) and x.tag == tag]

read, decode, augment, write_buckets, write_shard = (fns[name] for name in (
    "ReadImageFile", "DecodeImage", "AugmentAndEncode", "WriteBuckets", "WriteShard"))
read_out = [x for ref in refs for x in out(read.process(ref))]
decode_out = [x for item in main(read_out) for x in out(decode.process(item))]
augment_out = augment.process_now(main(decode_out))  # process + the batches in flight
write_buckets.start_bundle()
for record in main(augment_out):
    out(write_buckets.process(record))
buckets = {}
for windowed in out(write_buckets.finish_bundle()):
    shard, bucket = windowed.value
    buckets.setdefault(shard, []).append(bucket)
write_shard.start_bundle()
for shard in range(write_shard.num_shards):
    out(write_shard.process((shard, buckets.get(shard, [None]))))
stats = [windowed.value for windowed in out(write_shard.finish_bundle())]
all_errors = errors(read_out) + errors(decode_out) + errors(augment_out)
summary, args = loaded["Summary"]
target_counts = tagged(augment_out, "target_counts")
oriented = tagged(decode_out, "oriented")  # (EXIF orientations, counted per orientation)
counts = [(pipeline.run.SEEN, len(refs))] + [(o, oriented.count(o)) for o in set(oriented)]
# AsList x4
side_values = iter([stats, all_errors, counts, target_counts])
out(summary.process(None, *[next(side_values) if "Placeholder" in type(a).__name__ else a
                            for a in args]))
print(json.dumps({"pipeline": pipeline.__file__, "loaded": sorted(fns),
                  "test_modules": sorted(m for m in sys.modules
                                         if m.split(".")[0] in ("tests", "conftest", "pytest"))}))
"""


def test_a_fresh_worker_runs_every_dofn_from_the_setup_py_package(reference, tmp_path):
    from apache_beam.runners.portability.stager import Stager

    # 1. Package the project as Dataflow's stager does for --setup_file (from a copy, so the
    #    build leaves nothing in the checkout).
    source = tmp_path / "source"
    shutil.copytree(os.path.join(ROOT, "pipeline"), source / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "cli.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    staged = Stager.create_job_resources(
        PipelineOptions([f"--setup_file={source / 'setup.py'}"]), str(tmp_path / "staging"),
        log_submission_env_dependencies=False)
    tarballs = [os.path.join(tmp_path / "staging", f) for f in os.listdir(tmp_path / "staging")
                if f.endswith(".tar.gz")]
    assert staged and len(tarballs) == 1

    # 2. Install it as a worker does (its dependencies are the worker image's: here, this
    #    environment's site-packages, without the editable install of this checkout).
    site = tmp_path / "worker-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), tarballs[0]],
                   check=True, cwd=tmp_path)

    # 3. The DoFns as the runner ships them: the pickled payloads in the pipeline proto.
    photos, _, reference_out, _ = reference
    job = make_job(photos, tmp_path / "worker-out", CHAIN, copies=2, seed=7, num_shards=3)
    discovery = sources.discover(job)
    tmp_dir = str(tmp_path / "worker-out" / ".augbatch-tmp")
    with runners.new_pipeline(PipelineOptions(["--runner=DirectRunner"])) as p:
        run.build_pipeline(p, job, discovery, 3, tmp_dir, job.config_hash)
        proto = p.to_runner_api()
    payloads = {}
    for transform in proto.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            if payload.do_fn.urn == python_urns.PICKLED_DOFN_INFO:  # not Beam's built-ins
                payloads[transform.unique_name] = payload.do_fn.payload
    with open(tmp_path / "job.pickle", "wb") as f:
        pickle.dump((payloads, discovery.refs), f)

    # 4. A fresh interpreter elsewhere: no site hooks, no checkout, no test code on its path.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-I", "-S", "-c", WORKER, str(site),
                           sysconfig.get_paths()["purelib"], str(tmp_path / "job.pickle")],
                          cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["pipeline"].startswith(str(site)), report
    assert report["test_modules"] == []
    assert {"ReadImageFile", "DecodeImage", "AugmentAndEncode", "WriteBuckets",
            "WriteShard"} <= set(report["loaded"])
    assert len(payloads) > 10

    # What the worker wrote is what the pipeline writes, byte for byte (in the temporary
    # folder: the driver moves the files to their final names once the run is done).
    assert shard_bytes(tmp_dir) == shard_bytes(reference_out)
    with open(os.path.join(tmp_dir, "errors.jsonl")) as a, \
            open(reference_out / "errors.jsonl") as b:
        assert a.read() == b.read()


def test_an_unreachable_dask_scheduler_is_a_user_error(reference, tmp_path):
    photos, config, _, _ = reference
    result = CliRunner().invoke(cli.main, [
        "expand", "-q", "-c", config, "-i", photos, "-o", str(tmp_path / "out"),
        "--dask-address", "tcp://127.0.0.1:1", "--", "--dask_connection_timeout=1"])
    assert result.exit_code == 2, result.output
    assert "cannot reach the Dask scheduler" in result.output and "--dask-address" in result.output


ALLOCATOR_PROBE = """
import ctypes, json, os, sys
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p

def from_heap(size):  # glibc serves it from the heap (below the mmap threshold), not an mmap
    address = libc.malloc(size)
    heap = [line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
    low, high = (int(x, 16) for x in heap[0].split("-"))
    return low <= address < high

before = from_heap(1 << 20)
from apache_beam.options.pipeline_options import PipelineOptions
from pipeline import runners
with runners.new_pipeline(PipelineOptions(["--runner=DirectRunner"])):
    pass
print(json.dumps({"before": before, "1MB": from_heap(1 << 20), "8MB": from_heap(8 << 20),
                  "env": [os.environ.get(k) for k in sorted(runners.ALLOCATOR_ENV)]}))
"""


@pytest.mark.parametrize("user_value", [None, str(256 << 10)])
def test_a_direct_run_fixes_the_allocator_thresholds_here_and_for_its_workers(user_value):
    """glibc's thresholds (runners.ALLOCATOR_ENV) in the process that runs the steps: buffers up
    to 4 MB from the heap, larger ones mapped; and in the environment its workers inherit. A
    value the user set wins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if user_value:
        env["MALLOC_MMAP_THRESHOLD_"] = user_value
    done = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if user_value:  # 1 MB is over the user's 256 KB: mapped
        assert found == {"before": False, "1MB": False, "8MB": False,
                         "env": [user_value, str(64 << 20)]}
    else:  # glibc's default threshold is 128 KB, then 4 MB
        assert found == {"before": False, "1MB": True, "8MB": False,
                         "env": [str(4 << 20), str(64 << 20)]}
