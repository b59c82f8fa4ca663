"""Keep TensorFlow and Beam quiet and tidy: no start-up chatter, no temporary files left behind.

TensorFlow's native log chatter stays off the console when TF_CPP_MIN_LOG_LEVEL asks for it.

TF_CPP_MIN_LOG_LEVEL filters TensorFlow's own C++ logging, but some of TensorFlow (grappler's
cost model, e.g. "Error in PredictCost() for the op: CropAndResize") logs through absl, which
ignores that variable and, as nobody calls absl::InitializeLog, prints every warning. The fix is
to give absl the same level, through absl::SetMinLogLevel in TensorFlow's library; the two
scales are the same (0 info, 1 warning, 2 error, 3 fatal). Where the library or the function
cannot be found (another platform or TensorFlow), nothing changes.
"""
import contextlib
import ctypes
import glob
import logging
import mmap
import os
import re
import shutil
import signal
import sys
import tempfile
import warnings

log = logging.getLogger("augbatch")
# The name carries absl's version ("lts_20230125"), so it is looked up in the library itself.
_SET_MIN_LOG_LEVEL = re.compile(rb"_ZN4absl\d+lts_\d+14SetMinLogLevelENS0_18LogSeverityAtLeastE")
_applied = False
_xla_notice_spent = False


def native_logs_follow_tf_level():
    """Apply TF_CPP_MIN_LOG_LEVEL to the absl logging in TensorFlow (once per process)."""
    global _applied
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
    if _applied or not level.isdigit() or int(level) < 1:
        return
    _applied = True
    try:
        import tensorflow as tf
        for path in glob.glob(os.path.join(os.path.dirname(tf.__file__),
                                           "libtensorflow_framework*")):
            # (mapped, not read: the library is ~50 MB, and the name lies in its first few)
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                found = _SET_MIN_LOG_LEVEL.search(data)
                name = found and found.group().decode()
            if name:
                set_min_log_level = getattr(ctypes.CDLL(path), name)
                set_min_log_level(ctypes.c_int(min(int(level), 3)))
                return
    except (OSError, AttributeError) as e:
        log.debug("could not set absl's log level: %s", e)


# TensorFlow >= 2.19 logs while it is imported, through absl, before anything can set a level
# (tensorflow/tensorflow#100442): "oneDNN custom operations are on", "Could not find cuda
# drivers". Those lines start with their severity, I/W/E/F (0-3, TF_CPP_MIN_LOG_LEVEL's scale).
_NATIVE_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
                          r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) ")
_ABSL_NOT_INITIALIZED = "WARNING: All log messages before absl::InitializeLog() is called"


def _below(line, level):
    if line.startswith(_ABSL_NOT_INITIALIZED):
        return level >= 1
    match = _NATIVE_LINE.match(line)
    return bool(match) and "IWEF".index(match.group(1) or match.group(2)) < level


@contextlib.contextmanager
def native_logs_filtered():
    """Within the block, drop the native log lines below TF_CPP_MIN_LOG_LEVEL that reach
    stderr; everything else written to stderr meanwhile is written when the block ends."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
    if not level.isdigit() or int(level) < 1:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not _below(line, int(level)):
                    sys.stderr.write(line)


def import_tensorflow():
    """Import TensorFlow, keeping the native log lines it prints meanwhile to those at or above
    TF_CPP_MIN_LOG_LEVEL."""
    with native_logs_filtered(), _pythons_own_distutils():
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def _pythons_own_distutils():
    """TensorFlow 2.15 imports distutils. In a virtual environment setuptools' import hook (its
    distutils-precedence.pth) answers with setuptools' own copy, which imports setuptools and
    pkg_resources: 0.1-0.25 s of every command's start-up here, and nothing else in a run uses
    them. Within the block that hook is off, so a Python that still has its own distutils
    (3.11) gives that, as SETUPTOOLS_USE_DISTUTILS=stdlib would (and its deprecation warning is
    not shown: the import is TensorFlow's)."""
    hooks = [finder for finder in sys.meta_path
             if type(finder).__module__ == "_distutils_hack"]
    for hook in hooks:
        sys.meta_path.remove(hook)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The distutils package is deprecated",
                                    DeprecationWarning)
            yield
    finally:
        sys.meta_path[:0] = hooks


def spend_xla_notice():
    """XLA's first compilation in a process logs "Compiled cluster using XLA!" (once) through
    an absl of its own, which TF_CPP_MIN_LOG_LEVEL and SetMinLogLevel do not reach: compile a
    trivial function now, filtered, so the notice is spent before the real work prints."""
    global _xla_notice_spent
    if _xla_notice_spent:
        return
    _xla_notice_spent = True
    import tensorflow as tf
    with native_logs_filtered():
        tf.function(lambda x: x + 1, jit_compile=True, autograph=False)(tf.zeros([1]))


class _BeamImportNoise(logging.Filter):
    """Drops Beam's import-time warning about optional GCP clients (logged on the root logger)."""

    def filter(self, record):
        return not ("apache_beam" in record.pathname and "apitools" in record.getMessage())


_BEAM_NOISE = _BeamImportNoise()


class _HeartbeatAtShutdown(logging.Filter):
    """Drops a local worker's report that its heartbeat found the scheduler gone, with its
    traceback: as a run ends the cluster closes the scheduler while a busy worker may still be
    sending one (seen under load). A scheduler lost during a run is augbatch's own error, in
    the main process (dask_runner)."""

    def filter(self, record):
        return not record.getMessage().startswith(
            "Failed to communicate with scheduler during heartbeat")


def _quiet_at_exit(unraisable, finalizing=sys.is_finalizing, show=sys.__unraisablehook__):
    """Errors in destructors while Python shuts down (TensorFlow functions outliving the
    module state their __del__ needs) cannot affect the results: not shown. (What it needs is
    bound now: by then this module's globals may be gone.)"""
    if not finalizing():
        show(unraisable)


def python_noise_off():
    """In this process: no Beam warning about optional GCP clients, no destructor errors while
    Python shuts down (the command line's process, and the local Dask workers it starts)."""
    root = logging.getLogger()
    if _BEAM_NOISE not in root.filters:
        root.addFilter(_BEAM_NOISE)
    sys.unraisablehook = _quiet_at_exit


def dask_setup(worker):
    """Run by each worker of a local cluster augbatch starts, before anything imports Beam
    (runners.dask_cluster preloads this module): the workers as quiet as the command line, and
    deaf to the terminal's Ctrl-C, which reaches their process group too (each printed its
    traceback): the command stops them itself, once their running tasks are done."""
    python_noise_off()
    logging.getLogger("distributed.worker").addFilter(_HeartbeatAtShutdown())
    with contextlib.suppress(ValueError):  # (not the process's main thread: left as it is)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def own_tempdir():
    """Beam's runners (and TensorFlow's autograph) make temporary folders and files in the
    system's temp folder and leave them there (autograph's are removed at exit, which the
    command line's quick exit skips): inside this block they go in a folder of ours, removed
    after it."""
    folder, previous = tempfile.mkdtemp(prefix="augbatch-"), tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)
