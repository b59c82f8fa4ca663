"""Errors a user can act on. The CLI prints them as one line and exits 2, no traceback."""
import difflib


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


def did_you_mean(name, candidates):
    """' (did you mean X?)' for the nearest candidate, or ''."""
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
