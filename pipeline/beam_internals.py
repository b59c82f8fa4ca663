"""Every Beam name augbatch uses that Beam does not promise to keep, in one place.

The Dask runner (pipeline/dask_runner.py) runs DoFns the way Beam's own runners do, with the
machinery Beam keeps for its runners (runners.common, the Dask runner's modules); the
--dry-run report reads two private names. Nothing else in augbatch may reach past Beam's
public API. tests/test_beam_internals.py checks each name below against the installed Beam and
runs them, so a Beam version that changed one fails there, naming it (Beam pinned: 2.77.0).
"""
import functools
import importlib
import types
import weakref

from apache_beam.runners.common import (  # noqa: F401 - the runner machinery, re-exported
    DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler)
from apache_beam.transforms.resources import ResourceHint
from apache_beam.transforms.sideinputs import SideInputMap

# (module, attribute) pairs used below; the test checks each exists.
USED = [
    ("apache_beam.runners.common", "_OutputHandler"),
    ("apache_beam.runners.common", "DoFnInvoker.create_invoker"),
    ("apache_beam.runners.common", "DoFnSignature"),
    ("apache_beam.runners.common", "DoFnContext"),
    ("apache_beam.runners.common", "Receiver"),
    ("apache_beam.runners.dask.dask_runner", "DaskRunner"),
    ("apache_beam.runners.dask.dask_runner", "DaskRunnerResult"),
    ("apache_beam.runners.dask.dask_runner", "DaskOptions._extract_bag_kwargs"),
    ("apache_beam.runners.dask.overrides", "dask_overrides"),
    ("apache_beam.runners.dask.overrides", "_Create"),
    ("apache_beam.runners.dask.overrides", "_Reshuffle"),
    ("apache_beam.runners.dask.overrides", "_GroupByKeyOnly"),
    ("apache_beam.runners.dask.transform_evaluator", "TRANSLATIONS"),
    ("apache_beam.runners.dask.transform_evaluator", "NoOp"),
    ("apache_beam.runners.dask.transform_evaluator", "Flatten"),
    ("apache_beam.runners.dask.transform_evaluator", "get_windowed_value"),
    ("apache_beam.runners.dask.transform_evaluator", "defenestrate"),
    ("apache_beam.transforms.resources", "ResourceHint._name_to_known_hints"),
    ("apache_beam.pipeline", "Pipeline._root_transform"),
    ("apache_beam.pvalue", "AsSideInput._view_options"),
    ("apache_beam.runners.direct.direct_runner", "SwitchingDirectRunner.is_interactive"),
    ("apache_beam.runners.worker.statesampler", "StateSampler.__init__"),
    ("apache_beam.transforms.userstate", "get_dofn_specs"),
]


@functools.lru_cache(maxsize=None)
def _dask(module):
    """One of Beam's Dask runner modules, imported when first used: they import dask, an
    optional extra (`pip install augbatch[dask]`) that a DirectRunner run must not need."""
    return importlib.import_module(f"apache_beam.runners.dask.{module}")


# The Dask runner's classes, and Dask's replacements for Create, Reshuffle and GroupByKey.
_DASK_NAMES = {"DaskRunner": ("dask_runner", "DaskRunner"),
               "DaskRunnerResult": ("dask_runner", "DaskRunnerResult"),
               "DaskOptions": ("dask_runner", "DaskOptions"),
               "CREATE": ("overrides", "_Create"), "RESHUFFLE": ("overrides", "_Reshuffle"),
               "GROUP_BY_KEY": ("overrides", "_GroupByKeyOnly")}


def __getattr__(name):  # (PEP 562) the names above, on first use
    if name not in _DASK_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _DASK_NAMES[name]
    return getattr(_dask(module), attribute)


def windowed(value, window_fn):
    return _dask("transform_evaluator").get_windowed_value(value, window_fn)


def unwindowed(value):
    return _dask("transform_evaluator").defenestrate(value)


def output_handler(window_fn, main_receiver, tagged_receivers):
    return _OutputHandler(
        window_fn=window_fn, main_receivers=main_receiver, tagged_receivers=tagged_receivers,
        per_element_output_counter=None, output_batch_converter=None,
        process_yields_batches=False, process_batch_yields_elements=False)


def invoker(transform, handler, side_inputs=()):
    """A DoFnInvoker for `transform` (a beam.ParDo), its outputs going to `handler`."""
    args, kwargs = transform.raw_side_inputs
    from apache_beam import DoFn
    return DoFnInvoker.create_invoker(
        DoFnSignature(transform.fn), handler, context=DoFnContext(transform.label, state=None),
        side_inputs=list(side_inputs), input_args=list(args), input_kwargs=kwargs,
        user_state_context=None, bundle_finalizer_param=DoFn.BundleFinalizerParam())


def side_input_spec(side):
    """What a task needs to rebuild side input `side` from its values (picklable)."""
    return type(side), side._view_options(), side._window_mapping_fn


def side_input_map(spec, values):
    view_class, view_options, window_fn = spec
    return SideInputMap(view_class, view_options, [windowed(v, window_fn) for v in values])


def translate_other(node, inputs, bag_kwargs):
    """The bag of a transform that is no ParDo, as Beam's Dask runner translates it (Create,
    GroupByKey, Flatten; anything else passes its input through)."""
    evaluator = _dask("transform_evaluator")
    op = evaluator.TRANSLATIONS.get(type(node.transform), evaluator.NoOp)(
        node, bag_kwargs=bag_kwargs)
    if op.__class__ is evaluator.Flatten:
        return op.apply(inputs)
    return op.apply(inputs[0] if inputs else None)


def replace_for_dask(pipeline):
    pipeline.replace_all(_dask("overrides").dask_overrides())


def bag_kwargs(dask_options):
    """Pops the partitioning options out of `dask_options` (the rest go to the client)."""
    return _dask("dask_runner").DaskOptions._extract_bag_kwargs(dask_options)


def hint_names():
    """{resource hint urn: its option name}."""
    return {hint.urn: name for name, hint in ResourceHint._name_to_known_hints.items()}


def direct_runner():
    """Beam's DirectRunner, kept from first trying Prism: for each run it translates the
    pipeline, starts a worker pool and downloads a Prism binary (offline: fails, then falls
    back to the in-memory FnApiRunner; 0.2-0.3 CPU-s). Its one switch that skips Prism is the
    interactive runner's, which changes nothing else."""
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
    runner = SwitchingDirectRunner()
    runner.is_interactive()
    return runner


# How long Beam's state sampler sleeps at most, in ms (Beam: 200). A thread per bundle samples
# which step the bundle is in, sleeping longer and longer up to this; the bundle's end waits for
# the sleep to end: about a tenth of a second idle at the end of every long bundle.
SAMPLER_PERIOD_MS = 20


def quick_bundle_ends():
    """Bundles run in this process end without waiting up to 200 ms for Beam's state
    sampler: it samples every SAMPLER_PERIOD_MS at most (50 wake-ups a second, nothing to
    measure). Only the default changes: a sampler built with a period keeps it."""
    from apache_beam.runners.worker.statesampler import StateSampler
    StateSampler.__init__.__defaults__ = (SAMPLER_PERIOD_MS,)


def cache_dofn_specs():
    """Beam looks for state and timer parameters in every bound method of a DoFn, with
    inspect.signature, about nine times per DoFn per run (when a ParDo is built, translated,
    and once per bundle): ~8,000 signatures, a tenth of a second or more before the first
    input is read. The answer comes from the DoFn's class (its methods' defaults), except for
    methods bound on the instance itself (beam.FlatMap over a bound method), so it is kept per
    class for DoFns without any; the others are asked every time, as before."""
    from apache_beam.transforms import userstate
    ask = userstate.get_dofn_specs
    if getattr(ask, "per_class", None) is not None:
        return  # (already in place)
    per_class = {}

    def get_dofn_specs(dofn):
        own = getattr(dofn, "__dict__", None)
        if own is None or any(isinstance(v, types.MethodType) for v in own.values()):
            return ask(dofn)
        if type(dofn) not in per_class:
            per_class[type(dofn)] = ask(dofn)
        state_specs, timer_specs = per_class[type(dofn)]
        return set(state_specs), set(timer_specs)
    get_dofn_specs.per_class = per_class
    userstate.get_dofn_specs = get_dofn_specs


def cache_option_views():
    """Beam asks a pipeline's options for one group of them (PipelineOptions.view_as) ~200
    times per run, and each time builds an argument parser of the group's options and parses
    the flags again: about a tenth of a second before the first input is read. A view holds
    no values of its own (they live in the options' dict, shared by every view, which each
    view reads and writes), so one view per options object, group and dict is kept and
    given again."""
    from apache_beam.options.pipeline_options import PipelineOptions
    view_as = PipelineOptions.view_as
    if getattr(view_as, "views", None) is not None:
        return  # (already in place)
    views = weakref.WeakKeyDictionary()

    def cached_view_as(self, cls):
        try:
            mine = views.setdefault(self, {})
        except TypeError:  # (options of a class that cannot be a weak key)
            return view_as(self, cls)
        key = (cls, id(self._all_options))  # (the dict lives as long as its view here)
        if key not in mine:
            mine[key] = view_as(self, cls)
        return mine[key]
    cached_view_as.views = views
    cached_view_as.__doc__ = view_as.__doc__
    PipelineOptions.view_as = cached_view_as


def top_level_steps(pipeline):
    return pipeline._root_transform().parts
