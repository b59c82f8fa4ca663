"""Which Beam runner an `expand` runs on, with which options; and the --dry-run report.

`augbatch expand --runner NAME` picks a runner; anything after `--` still goes to Beam as is.
The pipeline is the same on every runner, and so are the output bytes.
"""
import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil

from apache_beam.options.pipeline_options import (PipelineOptions, PortableOptions,
                                                  SetupOptions, StandardOptions)

from pipeline.errors import UserError

log = logging.getLogger("augbatch")

RUNNERS = {
    "direct": "DirectRunner",
    "dask": "pipeline.dask_runner.DaskRunner",  # Beam's DaskRunner with its gaps closed
    "dataflow": "DataflowRunner",
    "flink": "FlinkRunner",
    "spark": "SparkRunner",
    "portable": "PortableRunner",
}
# Beam's own names for its DaskRunner: they run augbatch's fixed one instead.
BEAM_DASK_NAMES = ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner")


def _named_runner(beam_args):
    """The runner named in the pass-through Beam args, or None."""
    return PipelineOptions(list(beam_args)).view_as(StandardOptions).runner


def _without_runner(beam_args):
    out, skip = [], False
    for arg in beam_args:
        if skip:
            skip = False
        elif arg == "--runner":
            skip = True
        elif not arg.startswith("--runner="):
            out.append(arg)
    return out


def assemble(runner=None, beam_args=(), dask_address=None, dask_workers=None):
    """The Beam args for a run: `beam_args` plus the runner and Dask options the CLI names.

    `dask_address` / `dask_workers` imply --runner dask. A runner named both ways must agree.
    Returns (args, local Dask workers to start or 0).
    """
    beam_args = list(beam_args)
    named = _named_runner(beam_args)
    if named in BEAM_DASK_NAMES:
        named = RUNNERS["dask"]
    if (dask_address or dask_workers) and runner in (None, "dask"):
        runner = "dask"
    elif dask_address or dask_workers:
        raise UserError(f"--dask-address / --dask-workers need --runner dask, not {runner}")
    if dask_address and dask_workers:
        raise UserError("give --dask-address (an existing cluster) or --dask-workers (a local "
                        "one), not both")
    if runner is not None:
        if runner not in RUNNERS:
            raise UserError(f"unknown runner {runner!r}; one of {', '.join(RUNNERS)}")
        if named and named not in (RUNNERS[runner], runner):
            raise UserError(f"--runner {runner} and the Beam option --runner={named} disagree",
                            hint="name the runner once")
        named = RUNNERS[runner]
    named = named or RUNNERS["direct"]
    args = _without_runner(beam_args) + [f"--runner={named}"]
    local_workers = 0
    if named == RUNNERS["dask"]:
        try:  # also makes Beam's --dask_* options known
            import pipeline.dask_runner  # noqa: F401
        except ImportError:
            raise UserError("the Dask runner needs dask.distributed",
                            hint='pip install "augbatch[dask]"') from None
        given = PipelineOptions(args).get_all_options(drop_default=True)
        if dask_address:
            args.append(f"--dask_client_address={dask_address}")
        elif not given.get("address") and not given.get("scheduler_file"):
            cores = os.cpu_count() or 1
            local_workers = dask_workers or cores
            if local_workers > cores:
                log.warning("--dask-workers %d on %d CPU cores: each worker runs TensorFlow on "
                            "its own, so more workers than cores run slower, not faster "
                            "(--dask-workers %d, or leave it out: one per core)",
                            local_workers, cores, cores)
    return args, local_workers


# glibc's allocator in the processes that run augbatch's steps. With its defaults the mmap
# threshold moves: buffers of large images then stay in the heap, where they fragment it (peak
# memory followed the input: 1600x1200 photos, +29% at 8x the inputs); Dask's nanny sets
# MALLOC_TRIM_THRESHOLD_=65536 instead, which gives every freed block above 64 KB back to the
# system and makes each image-sized buffer a fresh mmap, page-faulted in again (~10x the page
# faults, ~40% of a worker's CPU in the kernel). Fixed thresholds do both: buffers up to 4 MB
# (a 512x512 float image) from the heap, never trimmed below 64 MB, larger ones mapped and
# given back (+16% at 8x the inputs). In a DirectRunner run too: ~7% less CPU on the
# benchmark's standard chain than glibc's defaults (3 interleaved pairs).
ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": str(64 << 20), "MALLOC_MMAP_THRESHOLD_": str(4 << 20)}
_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}  # M_* in malloc.h


def tune_allocator():
    """ALLOCATOR_ENV in this process (glibc's mallopt; other C libraries: nothing) and in the
    processes it starts, which read the environment (the DirectRunner's multi_processing
    workers). A value the user set in the environment wins."""
    for name, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(name, value)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    for name, option in _MALLOPT.items():
        try:
            mallopt(option, int(os.environ[name]))
        except ValueError:  # not a number: glibc ignores it at start-up too
            log.debug("%s=%r is not a number: left as it is", name, os.environ[name])


# dask.distributed settings for the local clusters augbatch starts (measured on 2 cores: a run
# of 150 photos x 4 copies took 12 CPU-s with dask's defaults, 4 with the DirectRunner).
LOCAL_CLUSTER_CONFIG = {
    **{f"distributed.nanny.pre-spawn-environ.{name}": value
       for name, value in ALLOCATOR_ENV.items()},
    # The statistical profiler samples every thread of a worker each 10 ms, and the other
    # periodic checks run 2-50 times a second in every process, busy or idle.
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}


@contextlib.contextmanager
def dask_cluster(workers):
    """A local dask.distributed cluster of `workers` processes (one thread each) for one run;
    yields its scheduler address and shuts it down afterwards."""
    from dask.distributed import LocalCluster
    if not log.isEnabledFor(logging.DEBUG):  # the scheduler logs every connection at INFO
        logging.getLogger("distributed").setLevel(logging.WARNING)
    import dask
    config = dict(LOCAL_CLUSTER_CONFIG)
    if not log.isEnabledFor(logging.DEBUG):  # the workers as quiet as this process
        config["distributed.worker.preload"] = ["pipeline.quiet"]  # its dask_setup
    with dask.config.set(config):  # the workers get this config from here
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
    log.info("local Dask cluster: %d worker processes at %s (dashboard %s)", workers,
             cluster.scheduler_address, cluster.dashboard_link)
    try:
        yield cluster.scheduler_address
    finally:
        # Workers that imported TensorFlow do not exit on request; the nanny kills them after
        # a few seconds and warns each time.
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
        cluster.close()


@contextlib.contextmanager
def started(args, local_workers):
    """The final Beam args, with a local Dask cluster running while inside when one is asked."""
    if not local_workers:
        yield list(args)
        return
    with dask_cluster(local_workers) as address:
        yield list(args) + [f"--dask_client_address={address}"]


# The extra of apache-beam that brings each scheme's filesystem.
FILESYSTEM_EXTRAS = {"gs": "gcp", "s3": "aws", "azfs": "azure", "hdfs": "hadoop"}


def check_filesystems(paths):
    """Every path's scheme has a Beam filesystem here (gs:// needs apache-beam[gcp], ...)."""
    from apache_beam.io.filesystems import FileSystems
    for path in paths:
        try:
            FileSystems.get_filesystem(path)
        except ValueError:
            scheme = path.split("://", 1)[0]
            extra = FILESYSTEM_EXTRAS.get(scheme)
            raise UserError(f"{path}: no Beam filesystem for {scheme}:// is installed",
                            hint=DATAFLOW_INSTALL if extra == "gcp" else
                            f'pip install "apache-beam[{extra}]==2.77.0"' if extra else
                            "see Beam's list of filesystems") from None


def on_any_worker(job):
    """`job` with paths every worker can use: each scheme has a filesystem here, and local
    paths are absolute (workers in other processes or on other machines do not share the
    launcher's working directory)."""
    check_filesystems(list(job.input) + [job.output])

    def absolute(path):
        return path if "://" in path else os.path.abspath(path)
    return dataclasses.replace(job, input=tuple(absolute(p) for p in job.input),
                               output=absolute(job.output))


# Dataflow submits with apache-beam[gcp], which installs on the modern stack only (its
# google-cloud libraries need protobuf >= 6, TensorFlow 2.15 needs protobuf < 5).
DATAFLOW_INSTALL = ('pip install "augbatch[dataflow]" (Python 3.12, the modern stack: '
                    'apache-beam[gcp] cannot install beside TensorFlow 2.15)')


def dataflow_installed():
    try:
        from apache_beam.runners.dataflow.internal import apiclient  # noqa: F401
    except ImportError:
        return False
    return True


def check_submission(job, options, dry_run=False):
    """Refuse, offline and before any work, what the runner's submission would refuse or
    could never run. Returns notes for the --dry-run report (what only a dry run lets pass)."""
    runner = options.view_as(StandardOptions).runner
    notes = []
    if runner == RUNNERS["dataflow"]:
        local = [path for path in (*job.input, job.output) if "://" not in path]
        if local:
            raise UserError(f"Dataflow workers cannot reach the local path {local[0]}",
                            hint="put the inputs and the output in Cloud Storage "
                                 "(gs://bucket/...)")
        setup_file = options.view_as(SetupOptions).setup_file
        if setup_file and not os.path.isfile(setup_file):
            raise UserError(f"--setup_file {setup_file}: no such file",
                            hint="run from the augbatch checkout with --setup_file=./setup.py")
        if not dataflow_installed():
            if not dry_run:
                raise UserError("submitting to Dataflow needs apache-beam[gcp], which is not "
                                "installed here", hint=DATAFLOW_INSTALL)
            notes.append("not submittable from here: apache-beam[gcp] is not installed ("
                         + DATAFLOW_INSTALL + ")")
    if runner == RUNNERS["portable"] and not options.view_as(PortableOptions).job_endpoint:
        raise UserError("--runner portable needs the Beam job server to submit to",
                        hint="add -- --job_endpoint=HOST:PORT (a Flink or Spark job server), or "
                             "use --runner flink / spark")
    return notes


def one_worker_here(options):
    """Whether the pipeline runs in this process on one worker: the DirectRunner's default
    (in_memory, one worker). There a shuffle spreads nothing: every step runs on the one
    worker, in one bundle each."""
    from apache_beam.options.pipeline_options import DirectOptions
    direct = options.view_as(DirectOptions)
    return (str(options.view_as(StandardOptions).runner).lower() in ("direct", "directrunner")
            and direct.direct_running_mode == "in_memory" and direct.direct_num_workers == 1)


@contextlib.contextmanager
def new_pipeline(options):
    """beam.Pipeline(options), with the runner's option check as a user error (Dataflow checks
    project, region and gs:// locations here). Beam makes a folder in the system's temp folder
    for each pipeline and removes it only once the pipeline has run: a dry run, or a build that
    fails, would leave it there, so it goes on leaving this block."""
    import apache_beam as beam
    from pipeline import beam_internals
    beam_internals.cache_dofn_specs()  # (building and translating the pipeline)
    beam_internals.cache_option_views()
    runner = None
    if str(options.view_as(StandardOptions).runner).lower() in ("direct", "directrunner"):
        runner = beam_internals.direct_runner()  # never Prism, a binary from the network
        beam_internals.quick_bundle_ends()
        tune_allocator()  # the steps run in this process or in workers it starts
    try:
        pipeline = beam.Pipeline(runner=runner, options=options)
    except ValueError as e:
        if "validation" not in str(e):
            raise
        raise UserError(" ".join(str(e).split()), hint="fix the Beam options after `--`") from None
    try:
        yield pipeline
    finally:
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)


# --- --dry-run ---------------------------------------------------------------------------------

def steps(pipeline):
    """[(label, resource hints)] of the pipeline's top-level steps, in the order applied."""
    from pipeline import beam_internals
    names = beam_internals.hint_names()
    out = []
    for node in beam_internals.top_level_steps(pipeline):
        hints = {names.get(urn, urn): value.decode() for urn, value in
                 sorted(_hints_below(node).items())}
        out.append((node.full_label, hints))
    return out


def _hints_below(node):
    hints = dict(node.resource_hints)
    for part in node.parts:
        hints.update(_hints_below(part))
    return hints


def render(pipeline, options, summary, notes=()):
    """The --dry-run report: what would run, where, with which options (nothing has run)."""
    runner = options.view_as(StandardOptions).runner
    proto = pipeline.to_runner_api()
    lines = ["dry run: nothing was run and nothing was written",
             f"runner: {runner}"]
    lines += [f"note: {note}" for note in notes]
    lines += [f"{key}: {value}" for key, value in summary.items()]
    lines.append("options:")
    for key, value in sorted(options.get_all_options(drop_default=True).items()):
        lines.append(f"  {key}: {value}")
    found = steps(pipeline)
    lines.append(f"steps ({len(found)} top-level, {len(proto.components.transforms)} transforms "
                 f"in the Beam graph):")
    for i, (label, hints) in enumerate(found, 1):
        extra = "  [" + ", ".join(f"{k}={v}" for k, v in hints.items()) + "]" if hints else ""
        lines.append(f"  {i:2d}. {label}{extra}")
    if runner == RUNNERS["dask"]:
        from pipeline.dask_runner import DaskRunner
        leaves = DaskRunner.translate(pipeline, options)
        tasks = len({key for bag in leaves for key in bag.__dask_graph__()})
        lines.append(f"dask graph: {tasks} tasks for {len(leaves)} leaf step(s) "
                     "(partitions follow the cluster's worker threads at run time)")
    return "\n".join(lines)
