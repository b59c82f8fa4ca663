"""The Beam internals augbatch leans on (pipeline/beam_internals.py) still exist and still work
on the installed Beam, and nothing else in augbatch reaches past Beam's public API. A Beam
upgrade that changed one fails here, naming it."""
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import apache_beam as beam
import pytest

from pipeline import beam_internals
from tests.conftest import ROOT


@pytest.mark.parametrize("module,name", beam_internals.USED,
                         ids=[f"{m}.{n}" for m, n in beam_internals.USED])
def test_each_beam_internal_augbatch_uses_is_still_there(module, name):
    value = importlib.import_module(module)
    for part in name.split("."):
        assert hasattr(value, part), (
            f"Beam {beam.__version__} has no {module}.{name} any more (augbatch uses it in "
            "pipeline/beam_internals.py): adapt that module to this Beam")
        value = getattr(value, part)


PRIVATE = re.compile(r"(from|import) apache_beam\.runners\.(common|dask)"
                     r"|\._(root_transform|name_to_known_hints"
                     r"|view_options|window_mapping_fn|extract_bag_kwargs|OutputHandler)\b"
                     r"|\b_OutputHandler\b")


def test_no_other_module_reaches_past_beams_public_api():
    offenders = []
    for path in glob.glob(os.path.join(ROOT, "pipeline", "**", "*.py"), recursive=True) + [
            os.path.join(ROOT, "cli.py")]:
        if path.endswith("beam_internals.py"):
            continue
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if PRIVATE.search(line):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not offenders, "Beam internals outside pipeline/beam_internals.py:\n" + "\n".join(
        offenders)


# A Python without dask, as after `pip install augbatch` (dask is the [dask] extra).
WITHOUT_DASK = """
import sys
class NoDask:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dask", "distributed"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoDask())
try:
    import dask
    sys.exit("dask imported")
except ModuleNotFoundError:
    pass
import cli
cli.main(sys.argv[1:], prog_name="augbatch")
"""


def test_a_direct_run_needs_no_dask(small_folder, tmp_path):
    """The DirectRunner (the default) runs without the dask extra: Beam's Dask runner modules,
    which import dask, are imported only by a Dask run (it once failed at the first step)."""
    out, config = tmp_path / "out", tmp_path / "job.yaml"
    config.write_text("augment:\n  chain: [{op: tfa.image.rotate, max_degrees: 10}]\n")
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_DASK, "expand", "-q", "-c", str(config), "-i",
         small_folder, "-o", str(out), "--copies", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["errored"] == 0
    assert manifest["counts"]["outputs"] == 2 * manifest["counts"]["written"] > 0


class Split(beam.DoFn):
    """Odd numbers to the main output, even ones tagged; a count from finish_bundle."""

    def start_bundle(self):
        self.seen = 0

    def process(self, n, offset):
        self.seen += 1
        if n % 2:
            yield n + offset[0]
        else:
            yield beam.pvalue.TaggedOutput("even", n)

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindows
        yield beam.pvalue.TaggedOutput("seen", GlobalWindows.windowed_value(self.seen))


def write(_, path, odd, even, seen, grouped):
    with open(path, "w") as f:
        json.dump({"odd": sorted(odd), "even": sorted(even), "seen": sum(seen),
                   "grouped": sorted(grouped)}, f)


def test_the_runner_machinery_runs_a_pipeline_on_dask(tmp_path):
    """Side inputs, tagged outputs, finish_bundle outputs, Create, Reshuffle, GroupByKey and
    Flatten through the internals, on a dask cluster in this process."""
    from dask.distributed import LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster:
        p = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(
            ["--runner=pipeline.dask_runner.DaskRunner",
             f"--dask_client_address={cluster.scheduler_address}"]))
        offset = p | "Offset" >> beam.Create([100])
        numbers = p | "Numbers" >> beam.Create(range(10)) | "Spread" >> beam.Reshuffle()
        split = numbers | "Split" >> beam.ParDo(Split(), beam.pvalue.AsList(offset)).with_outputs(
            "even", "seen", main="odd")
        grouped = ((split.odd, split.even) | beam.Flatten() | beam.Map(lambda n: (n % 3, n))
                   | beam.GroupByKey() | beam.MapTuple(lambda k, ns: (k, len(list(ns)))))
        (p | "Once" >> beam.Create([None])
         | "Write" >> beam.Map(write, str(tmp_path / "out.json"), beam.pvalue.AsList(split.odd),
                               beam.pvalue.AsList(split.even), beam.pvalue.AsList(split.seen),
                               beam.pvalue.AsList(grouped)))
        p.run().wait_until_finish()
    with open(tmp_path / "out.json") as f:
        out = json.load(f)
    assert out == {"odd": [101, 103, 105, 107, 109], "even": [0, 2, 4, 6, 8], "seen": 10,
                   "grouped": [[0, 3], [1, 3], [2, 4]]}


def test_the_direct_runner_never_tries_prism(caplog):
    """Beam's DirectRunner first tries Prism, a binary it downloads (offline: fails, then falls
    back, at a cost on every run); augbatch's DirectRunner goes straight to the in-memory one."""
    import logging

    from pipeline import run, runners
    caplog.set_level(logging.INFO)
    from apache_beam.testing.util import assert_that, equal_to
    with runners.new_pipeline(run.beam_options([])) as p:
        counted = p | beam.Create([1, 2, 3]) | beam.combiners.Count.Globally()
        assert_that(counted, equal_to([3]))
        assert p.run().wait_until_finish() == "DONE"
    said = [r.getMessage() for r in caplog.records]
    assert said and not [m for m in said if "Prism" in m], said


def test_bundles_end_without_waiting_for_beams_state_sampler():
    """Beam's state sampler sleeps up to 200 ms between samples, and every bundle's end waits
    for its sleep (a tenth of a second idle after each long bundle); in a process that built an
    augbatch DirectRunner pipeline it sleeps SAMPLER_PERIOD_MS at most, unless told a period."""
    from apache_beam.runners.worker.statesampler import StateSampler
    from apache_beam.utils.counters import CounterFactory

    from pipeline import run, runners
    with runners.new_pipeline(run.beam_options([])):
        pass
    assert beam_internals.SAMPLER_PERIOD_MS < 200
    sampler = StateSampler("step", CounterFactory())
    assert sampler.sampling_period_ms == beam_internals.SAMPLER_PERIOD_MS
    sampler.start()
    sampler.stop()
    assert StateSampler("other", CounterFactory(), 500).sampling_period_ms == 500


class CountPerKey(beam.DoFn):
    """A stateful DoFn (user state in its class's process method)."""
    SEEN = beam.transforms.userstate.BagStateSpec("seen", beam.coders.VarIntCoder())

    def process(self, pair, seen=beam.DoFn.StateParam(SEEN)):
        seen.add(pair[1])
        yield pair[0], len(list(seen.read()))


class Totals:
    """Its bound method, wrapped by beam.FlatMap, carries user state."""
    SUM = beam.transforms.userstate.CombiningValueStateSpec("sum", sum)

    def add(self, pair, total=beam.DoFn.StateParam(SUM)):
        total.add(pair[1])
        yield pair[0], total.read()


def test_dofn_specs_are_kept_per_class_unless_the_instance_binds_methods():
    """Beam looks for state and timers in every method of a DoFn about nine times per DoFn and
    run; the answer is kept per class, the same answer Beam gives. A DoFn holding a bound
    method of its own (beam.FlatMap over a method) is asked each time. Stateful DoFns of both
    kinds still run as stateful in an augbatch pipeline."""
    from apache_beam.testing.util import assert_that, equal_to
    from apache_beam.transforms import userstate

    from pipeline import run, runners, sinks, transforms
    with runners.new_pipeline(run.beam_options([])) as p:
        specs = userstate.get_dofn_specs
        plain = beam.Map(len).fn
        for dofn in [transforms.DecodeImage(3, 10_000, True), sinks.WriteBuckets("/nowhere", 2),
                     plain]:
            assert specs(dofn) == (set(), set())
            assert type(dofn) in specs.per_class
        state, timers = specs(CountPerKey())
        assert [s.name for s in state] == ["seen"] and not timers
        assert CountPerKey in specs.per_class and userstate.is_stateful_dofn(CountPerKey())
        bound = beam.FlatMap(Totals().add).fn
        assert type(bound) is type(plain)  # (the same class as Map(len)'s, another answer)
        state, timers = specs(bound)
        assert [s.name for s in state] == ["sum"] and not timers
        assert specs(plain) == (set(), set())
        counted = (p | "Pairs" >> beam.Create([("a", 5), ("b", 6), ("a", 7)])
                   | beam.ParDo(CountPerKey()))
        assert_that(counted, equal_to([("a", 1), ("a", 2), ("b", 1)]), label="Counted")
        summed = (p | "More" >> beam.Create([("a", 5), ("b", 6), ("a", 7)])
                  | beam.FlatMap(Totals().add))
        assert_that(summed, equal_to([("a", 5), ("a", 12), ("b", 6)]), label="Summed")
        assert p.run().wait_until_finish() == "DONE"


def test_option_views_are_kept_and_share_their_values():
    """One view per options object and group, given again: what one view sets, every view of
    the same options reads, as with Beam's fresh views; other options objects (a pipeline's
    deep copy) have views of their own."""
    import copy

    from apache_beam.options.pipeline_options import (DebugOptions, PipelineOptions,
                                                      StandardOptions)

    from pipeline import run, runners
    options = run.beam_options(["--runner", "DirectRunner", "--experiments", "a"])
    with runners.new_pipeline(options):  # (puts the cache in place)
        pass
    assert PipelineOptions.view_as.views is not None
    standard = options.view_as(StandardOptions)
    assert options.view_as(StandardOptions) is standard
    assert standard.runner == "DirectRunner"
    standard.streaming = True
    assert options.view_as(StandardOptions).streaming is True
    options.view_as(DebugOptions).experiments.append("b")
    assert options.view_as(DebugOptions).experiments == ["a", "b"]
    assert options.get_all_options()["experiments"] == ["a", "b"]
    twin = copy.deepcopy(options)
    assert twin.view_as(StandardOptions) is not standard
    twin.view_as(StandardOptions).streaming = False
    assert standard.streaming is True and options.view_as(StandardOptions).streaming is True
    assert standard.view_as(DebugOptions).experiments == ["a", "b"]  # (a view's own view)

    class Unhashable(PipelineOptions):  # (no weak key: asked each time, as Beam does)
        __hash__ = None
    odd = Unhashable(["--runner", "DirectRunner"])
    assert odd.view_as(StandardOptions).runner == "DirectRunner"
    assert odd.view_as(StandardOptions) is not odd.view_as(StandardOptions)
