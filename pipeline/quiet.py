"""Keep TensorFlow's native log chatter off the console when TF_CPP_MIN_LOG_LEVEL asks for it.

TF_CPP_MIN_LOG_LEVEL filters TensorFlow's own C++ logging, but some of TensorFlow (grappler's
cost model, e.g. "Error in PredictCost() for the op: CropAndResize") logs through absl, which
ignores that variable and, as nobody calls absl::InitializeLog, prints every warning. The fix is
to give absl the same level, through absl::SetMinLogLevel in TensorFlow's library; the two
scales are the same (0 info, 1 warning, 2 error, 3 fatal). Where the library or the function
cannot be found (another platform or TensorFlow), nothing changes.
"""
import ctypes
import glob
import logging
import os
import re

log = logging.getLogger("augbatch")
# The name carries absl's version ("lts_20230125"), so it is looked up in the library itself.
_SET_MIN_LOG_LEVEL = re.compile(rb"_ZN4absl\d+lts_\d+14SetMinLogLevelENS0_18LogSeverityAtLeastE")
_applied = False


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
            with open(path, "rb") as f:
                name = _SET_MIN_LOG_LEVEL.search(f.read())
            if name:
                set_min_log_level = getattr(ctypes.CDLL(path), name.group().decode())
                set_min_log_level(ctypes.c_int(min(int(level), 3)))
                return
    except (OSError, AttributeError) as e:
        log.debug("could not set absl's log level: %s", e)
