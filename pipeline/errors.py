"""Errors a user can act on. The CLI prints them as one line and exits 2, no traceback."""
import difflib
import reprlib
import signal


class UserError(Exception):
    """A problem with what the user asked for (paths, flags, output dir), not a bug."""

    exit_code = 2

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.hint = hint


class ConfigError(UserError):
    """A config problem, always naming where in the config it is (`augment.chain[2].max_delta`)."""

    def __init__(self, path, message, hint=None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message, hint)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt."""


stopped_by = None  # the signal that stopped this process's work, once one did


def stop(signum, frame):
    """The CLI's SIGINT and SIGTERM handler. Beam may wrap the exception in one of its own
    types on the way out: `stopped_by` tells what happened whatever arrives."""
    global stopped_by
    stopped_by = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def did_you_mean(name, candidates):
    """' (did you mean X?)' for the nearest candidate, or ''."""
    close = difflib.get_close_matches(str(name)[:100], [str(c) for c in candidates], n=1,
                                      cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 80
_QUOTE.maxlist = _QUOTE.maxtuple = _QUOTE.maxdict = 6
_QUOTE.maxlevel = 3


def quote(value):
    """repr(value), cut short: a message quotes a few levels and items of a big value, never
    all of it (a config can expand to a huge value)."""
    text = _QUOTE.repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
