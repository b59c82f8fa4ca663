"""Beam's DaskRunner, with the gaps that break augbatch's pipeline closed.

Beam 2.77's DaskRunner (apache_beam.runners.dask) translates a pipeline into dask.bag
operations. Measured against the DirectRunner, its translation:
  1. drops what a DoFn emits from finish_bundle (BatchElements loses each bundle's last batch;
     our shard writer loses every bucket file);
  2. hands every output of a multi-output ParDo to each consumer (the main output and the
     `errors` output arrive mixed);
  3. computes a side input inside the task that reads it (a nested compute per side input:
     the work upstream of it runs again, and a worker thread blocks while it does);
  4. computes only the last transform applied, so any other leaf of the graph never runs;
  5. holds each step's whole output of a partition as one list in memory;
  6. ignores Reshuffle (one TFRecord file's records stay one bundle).
This runner keeps Beam's translations for Create and Flatten and replaces the ParDo, GroupByKey
and Reshuffle translations and the graph walk: ParDos that read another ParDo's output run
fused in one task per partition (elements passed from DoFn to DoFn as emitted, finish_bundle
outputs included; each worker builds a stage once per run), each consumer gets only its tagged
output, side inputs are ordinary graph dependencies (computed once) and every leaf is computed;
partitions hold at most INPUTS_PER_PARTITION inputs, GroupByKey merges per-partition groups
(no all-to-all shuffle) and Reshuffle spreads evenly. It takes the same options (--dask_client_address, --dask_npartitions,
...), checks that the cluster runs this augbatch, watches the run until it ends (or fails
loudly: scheduler lost, no progress, workers dying) and closes its client. The Beam internals
it needs are in pipeline/beam_internals.py.
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import threading
import time
import uuid

import dask
import dask.bag
import dask.distributed
import apache_beam as beam
from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.runner import PipelineState

from pipeline import __version__
from pipeline import beam_internals as internals
from pipeline.errors import UserError

log = logging.getLogger("augbatch")

# When the options name no partitioning: at least this many partitions per worker thread
# (Beam's default puts up to 128 elements in one partition: a small job would run on one
# worker), and at most INPUTS_PER_PARTITION inputs in one, so a partition's images (each step's
# output is a list in memory) stay bounded however large the input grows.
PARTITIONS_PER_THREAD = 2
INPUTS_PER_PARTITION = 16
# A run fails when no task of it has finished for this long (workers gone, or every worker
# stuck); --dask_no_progress_timeout changes it.
NO_PROGRESS_TIMEOUT_S = 600.0
POLL_S = 1.0
# A stopped run waits this long at most for the tasks the workers are still running: Dask
# cannot interrupt a task, so a cancelled one runs to its end and may commit its buckets.
SETTLE_TIMEOUT_S = 60.0


class WatchOptions(PipelineOptions):
    """augbatch's own option for the Dask runner (beside Beam's --dask_* options)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--dask_no_progress_timeout", type=float, default=NO_PROGRESS_TIMEOUT_S,
            help="Fail the run when no task has finished on the Dask cluster for this many "
                 "seconds (all workers gone, or every worker stuck).")


@dataclasses.dataclass
class _Member:
    """One ParDo of a stage: its transform, its main input's window_fn, which member feeds it
    (None: the stage's input) through which output tag, and which of its outputs leave the
    stage (the tags something outside the stage reads)."""
    transform: object
    window_fn: object
    producer: object = None
    producer_tag: object = None
    kept: tuple = ()


class _Output(internals.Receiver):
    """Where one output of a member goes: the consumers inside the stage (directly, element by
    element) and, when something outside reads it, the stage's result list."""

    def __init__(self, results, key):
        self.results, self.key, self.consumers = results, key, []

    def receive(self, windowed_value):
        for invoker in self.consumers:
            invoker.invoke_process(windowed_value)
        if self.key is not None:
            self.results.append((self.key, windowed_value.value))


class _Outputs(dict):
    def __init__(self, results, index, kept):
        super().__init__()
        self.results, self.index, self.kept = results, index, kept

    def __missing__(self, tag):
        self[tag] = _Output(self.results, (self.index, tag) if tag in self.kept else None)
        return self[tag]


class _Stage:
    """A stage's DoFns, set up, wired member to member, with their invokers: built once per
    worker process and reused for every partition of the stage there (as Beam's own runners
    reuse a DoFn instance for many bundles: building one unpickles and inspects every DoFn and
    runs its setup, more CPU than a small partition's work)."""

    def __init__(self, members, side_specs, side_values):
        self.results = []
        side_inputs = [internals.side_input_map(spec, values)
                       for spec, values in zip(side_specs, side_values)]
        self.invokers, outputs = [], []
        for index, member in enumerate(members):
            outputs.append(_Outputs(self.results, index, member.kept))
            handler = internals.output_handler(member.window_fn, outputs[index][None],
                                               outputs[index])
            self.invokers.append(internals.invoker(member.transform, handler,
                                                   side_inputs if index == 0 else ()))
            if member.producer is not None:
                outputs[member.producer][member.producer_tag].consumers.append(
                    self.invokers[index])
        self.window_fn = members[0].window_fn
        for invoker in self.invokers:
            invoker.invoke_setup()

    def bundle(self, elements):
        """One partition through the stage as one bundle, each element passed from DoFn to
        DoFn as it is emitted (as Beam's own runners fuse steps): no step's whole output is
        held, only what leaves the stage. finish_bundle outputs go on like the others."""
        for invoker in self.invokers:
            invoker.invoke_start_bundle()
        for element in elements:
            self.invokers[0].invoke_process(internals.windowed(element, self.window_fn))
        for invoker in self.invokers:  # producers first: what one emits here, the next processes
            invoker.invoke_finish_bundle()
        results, self.results[:] = list(self.results), []
        return results

    def teardown(self):
        for invoker in self.invokers:
            invoker.invoke_teardown()


# This worker process's built stages not running a partition now: {(run, stage): [_Stage]}.
_idle_stages = collections.defaultdict(list)
_idle_lock = threading.Lock()


def _run_stage(elements, key, members, side_specs, *side_values):
    """One dask partition through a stage (`key`: the run's and the stage's names) as one
    bundle, on a _Stage of this process built before if one is idle."""
    with _idle_lock:
        idle = _idle_stages.get(key)
        stage = idle.pop() if idle else None
    if stage is None:
        stage = _Stage(members, side_specs, side_values)
    try:
        results = stage.bundle(elements)
    except BaseException:
        stage.teardown()  # stopped in the middle of a bundle: not reused
        raise
    with _idle_lock:
        _idle_stages[key].append(stage)
    return results


def release_stages(run):
    """Tears down this process's stages of `run` (on each worker when the run ends)."""
    with _idle_lock:
        stages = [stage for key in [k for k in _idle_stages if k[0] == run]
                  for stage in _idle_stages.pop(key)]
    for stage in stages:
        stage.teardown()
    return len(stages)


def _concat(parts):
    return [x for part in parts for x in part]


def _has_key(key, item):
    return item[0] == key


def _untag(item):
    return item[1]


def _group_partition(items):
    """A partition of (key, value) -> [{key: [values]}] (one element)."""
    groups = {}
    for key, value in items:
        groups.setdefault(key, []).append(internals.unwindowed(value))
    return [groups]


def _merge_groups(groups_of_partitions):
    merged = {}
    for groups in groups_of_partitions:
        for key, values in groups.items():
            merged.setdefault(key, []).extend(values)
    return list(merged.items())


def _group_by_key(bag):
    """GroupByKey: each partition grouped, the groups merged in one task, then spread over as
    many partitions again. Beam's translation (a dask shuffle) makes partitions x partitions
    tasks for each GroupByKey (~660 of a 150-photo run's 1000 tasks, each costing scheduler
    and worker CPU); what the pipeline groups is small (counts, bucket file names)."""
    return (bag.map_partitions(_group_partition).repartition(1)
            .map_partitions(_merge_groups).repartition(bag.npartitions))


def _is_pardo(node):
    return type(node.transform) is beam.ParDo  # exactly: Beam leaves subclasses to NoOp


class _Visitor(PipelineVisitor):
    """Builds the dask bags of the (overridden) pipeline. ParDos that read another ParDo's
    output (and no side input) join its stage: one task per partition runs them all. The
    leaves are the bags nothing reads."""

    def __init__(self, bag_kwargs, min_partitions, run):
        self.bag_kwargs, self.min_partitions, self.run = bag_kwargs, min_partitions, run
        self.nodes = []  # every transform, producers first
        self.stage_of = {}  # ParDo node -> (its stage's root node, its index in the stage)
        self.stages = {}  # root node -> [member nodes]
        self.readers = collections.defaultdict(set)  # PCollection -> the nodes that read it

    def visit_transform(self, node):
        self.nodes.append(node)
        for pcoll in list(node.inputs) + [side.pvalue for side in node.side_inputs]:
            self.readers[pcoll].add(node)
        if not _is_pardo(node):
            return
        producer = node.inputs[0].producer
        if not node.side_inputs and producer in self.stage_of:
            root = self.stage_of[producer][0]
        else:
            root, self.stages[node] = node, []
        self.stage_of[node] = (root, len(self.stages[root]))
        self.stages[root].append(node)

    def translate(self):
        """The bags of the leaves (call after visiting the whole pipeline)."""
        self.bags, self.consumed = {}, set()  # node (stage root for ParDos) -> bag
        for node in self.nodes:
            if node in self.stages:
                self.bags[node] = self._stage(node)
            elif not _is_pardo(node):
                self.bags[node] = self._other(node)
        return [bag for node, bag in self.bags.items() if node not in self.consumed]

    def bag_of(self, pcoll):
        """The bag of `pcoll`: its producer's, or the part of its producer's stage's bag that
        is `pcoll`."""
        producer = pcoll.producer
        if producer not in self.stage_of:
            self.consumed.add(producer)
            return self.bags[producer]
        root, index = self.stage_of[producer]
        self.consumed.add(root)
        return (self.bags[root].filter(functools.partial(_has_key, (index, pcoll.tag)))
                .map(_untag))

    def _stage(self, root):
        members, specs = self.stages[root], []
        for node in members:
            main_input = next(iter(node.main_inputs.values()))
            window_fn = (main_input.windowing.windowfn if hasattr(main_input, "windowing")
                         else None)
            kept = tuple(pcoll.tag for pcoll in node.outputs.values()
                         if any(self.stage_of.get(reader, (None,))[0] is not root
                                for reader in self.readers[pcoll]))
            producer = node.inputs[0].producer
            specs.append(_Member(node.transform, window_fn,
                                 None if node is root else self.stage_of[producer][1],
                                 None if node is root else node.inputs[0].tag, kept))
        side_specs, side_values = [], []
        for side in root.side_inputs:
            side_specs.append(internals.side_input_spec(side))
            # A Delayed, not the Item: since dask 2025.4 map_partitions gives an Item argument
            # a renamed copy of its whole graph (everything upstream would run twice).
            side_values.append(self.bag_of(side.pvalue).reduction(list, _concat)
                               .to_delayed(optimize_graph=False))
        return self.bag_of(root.inputs[0]).map_partitions(
            _run_stage, (self.run, root.full_label), specs, side_specs, *side_values,
            token=root.full_label)

    def _other(self, node):
        inputs = [self.bag_of(pc) for pc in node.inputs if not isinstance(pc, pvalue.PBegin)]
        if type(node.transform) is internals.CREATE and not self.bag_kwargs:
            values = node.transform.values
            return dask.bag.from_sequence(values, npartitions=max(
                1, self.min_partitions, -(-len(values) // INPUTS_PER_PARTITION)))
        if type(node.transform) is internals.GROUP_BY_KEY:
            return _group_by_key(inputs[0])
        if type(node.transform) is internals.RESHUFFLE:  # Beam's translation: none at all
            # Spread evenly over at least min_partitions (the record ranges of one TFRecord
            # file come from one partition; dask's repartition alone splits each partition
            # in place). What the pipeline reshuffles is small: file names, record ranges.
            target = self.bag_kwargs.get("npartitions") or self.min_partitions
            return inputs[0].repartition(1).repartition(max(inputs[0].npartitions, target))
        return internals.translate_other(node, inputs, self.bag_kwargs)


def _scheduler_state(dask_scheduler):
    """(transitions so far, workers connected): runs on the scheduler."""
    return dask_scheduler.transition_counter, len(dask_scheduler.workers)


def check_cluster(client):
    """The scheduler and every worker connected import augbatch, this version (a worker that
    cannot unpickle augbatch's tasks drops out of the cluster without a word)."""
    probe = "__import__('pipeline').__version__"  # eval: a builtin, no augbatch code to send
    try:
        found = {"the scheduler": client.run_on_scheduler(eval, probe), **client.run(eval, probe)}
    except (ImportError, AttributeError) as e:
        raise UserError(f"a Dask worker or the scheduler cannot import augbatch's code ({e})",
                        hint=f"install augbatch {__version__}, the version here, on every worker "
                             "and on the scheduler") from None
    other = {where: version for where, version in found.items() if version != __version__}
    if other:
        where, version = sorted(other.items())[0]
        raise UserError(f"{where} runs augbatch {version}, this is {__version__} "
                        f"({len(other)} of {len(found)} differ)",
                        hint="install the same augbatch version on the workers, the scheduler "
                             "and here")


def _running(dask_worker):
    """How many tasks the worker runs, cancelled ones included (they run to their end)."""
    return len(dask_worker.state.executing) + len(dask_worker.state.long_running)


def _step_of(key, steps):
    """What a task of key `key` was doing, in Beam's words: the Beam step (of `steps`, the
    labels of the fused stages' first steps) its name starts with (dask names a stage's task
    after it, with dask's own operations fused after it appended)."""
    name = dask.utils.key_split(key)
    step = max((s for s in steps if name.startswith(s)), key=len, default=None)
    return (f"step {step} (with the steps fused after it)" if step else
            "a step moving data between steps (a grouping or reshuffle)")


@dataclasses.dataclass
class DaskRunnerResult(internals.DaskRunnerResult):
    """Waits for the run, failing loudly when it cannot end: the scheduler lost, no progress
    for `no_progress_timeout` seconds, workers dying on a task, workers without augbatch. The
    client (and so its connection to the cluster) is closed once the run has ended."""

    no_progress_timeout: float = NO_PROGRESS_TIMEOUT_S
    run: str = ""  # names the run's stages on the workers (released when it ends)
    steps: tuple = ()  # the Beam labels of the stages (for messages)

    def wait_until_finish(self, duration=None):
        try:
            self._watch()
            self._state = PipelineState.DONE
            return self._state
        except BaseException:
            self._state = PipelineState.FAILED
            if self.client.status == "running":  # stop what has not started
                self.client.cancel(self.futures, force=True)
                self._settle()
            raise
        finally:
            if self.client.status == "running":  # the workers tear down this run's DoFns
                with contextlib.suppress(OSError, TimeoutError):
                    self.client.run(release_stages, self.run, on_error="ignore")
            self.client.close(timeout=10)

    def _watch(self):
        address = self.client.scheduler.address
        seen, since = None, time.monotonic()
        while True:
            try:
                dask.distributed.wait(self.futures, timeout=POLL_S)
            except (TimeoutError, concurrent.futures.CancelledError):
                pass
            statuses = {future.status for future in self.futures}
            if "error" in statuses:
                raise self._failure(next(f for f in self.futures if f.status == "error"))
            if statuses == {"finished"}:
                return
            if statuses & {"cancelled", "lost"} or self.client.status != "running":
                raise UserError(f"lost the Dask scheduler at {address} in the middle of the run "
                                "(it stopped, or the network to it failed)",
                                hint="nothing was finished; run again once the scheduler is up")
            try:
                transitions, workers = self.client.run_on_scheduler(_scheduler_state)
            except OSError:  # the scheduler went away since the wait above
                continue
            if transitions != seen:
                seen, since = transitions, time.monotonic()
            elif time.monotonic() - since > self.no_progress_timeout:
                what = (f"no Dask worker is connected to {address}" if not workers else
                        f"none of the {workers} Dask workers has finished a task")
                raise UserError(f"{what} for {self.no_progress_timeout:g} s: the run stopped",
                                hint="start workers (`dask worker ...`), or raise "
                                     "-- --dask_no_progress_timeout=SECONDS for steps that "
                                     "run longer")

    def _settle(self):
        """Wait until no worker runs a task (bounded): what the stopped run's tasks committed
        is then all it keeps, so what the command says it kept is right, and nothing writes
        into the temporary folder once the command deletes it."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if not any(self.client.run(_running, on_error="ignore").values()):
                    return
            except (OSError, TimeoutError):  # the cluster is going: its workers with it
                return
            time.sleep(0.2)
        log.warning("Dask workers still run tasks %g s after the stop: what they write "
                    "from now on is not counted", SETTLE_TIMEOUT_S)

    def _failure(self, future):
        """The exception a failed task ends the run with: a user error for what the cluster
        did, the task's own exception otherwise."""
        exc = future.exception()
        if isinstance(exc, dask.distributed.KilledWorker):
            return UserError(
                f"Dask workers died while running {_step_of(exc.task, self.steps)}: "
                f"{exc.allowed_failures + 1} worker(s) in a row died on the same part of it "
                f"(the last one: {exc.last_worker.address})",
                hint="see the workers' logs; a worker that runs out of memory is killed (give "
                     "workers more memory, or more partitions: -- --dask_npartitions=N)")
        if isinstance(exc, ImportError):
            return UserError(f"a Dask worker cannot import what augbatch needs ({exc})",
                             hint="install augbatch with its dependencies, the same versions "
                                  "as here, on every worker")
        return exc


class DaskRunner(internals.DaskRunner):
    """Runs a pipeline on a dask.distributed cluster (see the module docstring)."""

    @staticmethod
    def translate(pipeline, options, threads=1, run="dry-run"):
        """The dask bags of the pipeline's leaves, not computed (also used by --dry-run), for a
        cluster of `threads` worker threads; `run` names this run's stages on the workers."""
        return DaskRunner._visited(pipeline, options, threads, run).translate()

    @staticmethod
    def _visited(pipeline, options, threads, run):
        """The pipeline's _Visitor, having visited it (call its translate())."""
        dask_options = options.view_as(internals.DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        internals.replace_for_dask(pipeline)
        visitor = _Visitor(internals.bag_kwargs(dask_options),
                           PARTITIONS_PER_THREAD * threads, run)
        pipeline.visit(visitor)
        return visitor

    def run_pipeline(self, pipeline, options):
        dask_options = options.view_as(internals.DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        internals.bag_kwargs(dask_options)  # the rest go to the client
        try:
            client = dask.distributed.Client(**dask_options)
        except OSError as e:
            raise UserError(f"cannot reach the Dask scheduler: {e}", hint="check --dask-address "
                            "(`dask scheduler` listens on tcp://HOST:8786)") from None
        try:
            if not log.isEnabledFor(logging.DEBUG):  # its failures become augbatch's messages
                logging.getLogger("distributed").setLevel(logging.CRITICAL)
            check_cluster(client)
            run = uuid.uuid4().hex
            visitor = self._visited(pipeline, options, sum(client.nthreads().values()), run)
            futures = client.compute(list(dask.optimize(*visitor.translate())))
        except BaseException:
            client.close()
            raise
        return DaskRunnerResult(client, futures, options.view_as(WatchOptions)
                                .dask_no_progress_timeout, run,
                                tuple(node.full_label for node in visitor.stages))
