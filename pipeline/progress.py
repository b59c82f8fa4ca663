"""Live progress of an expand run: counters the DoFns bump, and a display on stderr that reads them.

The counters live in this process. The DirectRunner's default (in_memory) and multi_threading
modes run the DoFns here, so the display follows them live. Runners that run the DoFns
elsewhere (multi_processing, Dask, Dataflow, ...) leave them at zero: then the display shows
nothing live and the final summary (from the manifest) still tells what happened. The same
counts are also Beam metrics (namespace "augbatch"), which those runners' own UIs show.

On a terminal the display is a tqdm bar; otherwise (a log file, CI) it prints a line every
AUGBATCH_PROGRESS_INTERVAL seconds (default 10).
"""
import collections
import os
import sys
import threading
import time

from apache_beam.metrics import Metrics

NAMESPACE = "augbatch"
READ, DONE, OUTPUTS = "inputs_read", "inputs_done", "outputs_made"
DECODED = "inputs_decoded"  # a Beam metric only (the Dask tests count work done once)
INTERVAL_ENV = "AUGBATCH_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0

_lock = threading.Lock()
_counts = collections.Counter()
_beam_counters = {}


def count(name, n=1):
    """Add `n` to counter `name` (called from the DoFns; cheap and thread-safe)."""
    with _lock:
        _counts[name] += n
        counter = _beam_counters.get(name)
        if counter is None:
            counter = _beam_counters[name] = Metrics.counter(NAMESPACE, name)
    counter.inc(n)


def counts():
    with _lock:
        return dict(_counts)


def reset():
    with _lock:
        _counts.clear()


def plural(n, word):
    """'1 shard', '3 shards'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def duration(seconds):
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def status_line(done, total, outputs, elapsed):
    """'12/40 inputs (30%), 36 outputs, 2.5 inputs/s, ETA 11s' (the parts that are known)."""
    parts = [f"{done}/{plural(total, 'input')} ({100 * done // total}%)" if total
             else plural(done, "input"), plural(outputs, "output")]
    if done and elapsed > 0:
        rate = done / elapsed
        parts.append(f"{rate:.1f} inputs/s")
        if total and done < total:
            parts.append(f"ETA {duration((total - done) / rate)}")
    parts.append(f"elapsed {duration(elapsed)}")
    return ", ".join(parts)


class _Lines:
    """Not a terminal: one plain line per interval, and only when something moved."""

    def __init__(self, total, stream, interval):
        self.total, self.stream, self.interval = total, stream, interval
        self.started = time.monotonic()
        self.last = (0, 0)  # (inputs done, outputs): a line only when they move
        self.write(f"progress: {plural(total, 'input')} to augment" if total else
                   "progress: reading the input records")

    def write(self, text):
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, now):
        values = counts()
        done, total = values.get(DONE, 0), self.total or values.get(READ, 0)
        state = (done, values.get(OUTPUTS, 0))
        if state != self.last:
            self.last = state
            self.write("progress: " + status_line(done, total, state[1], now - self.started))

    def close(self):
        if any(counts().values()):  # zero: the runner ran the DoFns elsewhere
            self.update(time.monotonic())


class _Bar:
    """A terminal: a live tqdm bar (rate and ETA by tqdm), removed when the run ends. Log lines
    meanwhile are written above it (through tqdm), not into it. Until the first batch is done,
    the inputs read so far show that the run moves."""

    def __init__(self, total, stream, interval):
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm
        self.total = total
        self.bar = tqdm(total=total, file=stream, unit="input", desc="augmenting",
                        dynamic_ncols=True, leave=False, mininterval=0.2)
        self.logs_above = logging_redirect_tqdm(tqdm_class=tqdm)
        self.logs_above.__enter__()

    def update(self, now):
        values = counts()
        if not self.total and values.get(READ):
            self.bar.total = values[READ]
        done = values.get(DONE, 0)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"{values.get(READ, 0)} read, {values.get(OUTPUTS, 0)} outputs",
                                 refresh=False)
        self.bar.refresh()

    def close(self):
        self.bar.close()
        self.logs_above.__exit__(None, None, None)


class Shown:
    """Context manager: show the progress of the inputs on `stream` while the body runs.

    `total` is the number of inputs (None when it is only known once they are read, as for
    TFRecords); `done` of them are finished before the body starts (rejected at discovery).
    Not `enabled`: nothing is shown (--quiet).
    """

    def __init__(self, total, enabled=True, stream=None, interval=None, done=0):
        self.total, self.enabled, self.done = total, enabled, done
        self.stream = stream or sys.stderr
        self.interval = interval if interval is not None else float(
            os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
        self._stop = threading.Event()

    def __enter__(self):
        reset()
        with _lock:
            _counts[DONE] = self.done
        if not self.enabled:
            return self
        is_terminal = getattr(self.stream, "isatty", lambda: False)()
        self.display = (_Bar if is_terminal else _Lines)(self.total, self.stream, self.interval)
        period = 0.25 if is_terminal else self.interval
        self.thread = threading.Thread(target=self._poll, args=(period,), daemon=True,
                                       name="augbatch-progress")
        self.thread.start()
        return self

    def _poll(self, period):
        while not self._stop.wait(period):
            self.display.update(time.monotonic())

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self.thread.join()
            self.display.close()
        return False


def summary(manifest):
    """The lines printed when an expand run ends (from its manifest, so right on any runner)."""
    counts_, output = manifest["counts"], manifest["output"]
    seconds = manifest.get("timings", {}).get("total_s", 0.0)
    rate = f", {counts_['discovered'] / seconds:.1f} inputs/s" if seconds else ""
    shards = output["num_shards"]
    lines = [f"done in {duration(seconds)}: {plural(counts_['discovered'], 'input')} -> "
             f"{plural(counts_['outputs'], 'record')} in {plural(shards, 'shard')}"
             f"{rate}",
             f"  written: {plural(counts_['written'], 'input')}, errored: {counts_['errored']}"]
    lines += error_lines(manifest)
    lines.append(f"output: {output['directory']}")
    return lines


def error_lines(manifest, top=5):
    """Errors by stage, then the most frequent reasons (none when nothing failed)."""
    stages = manifest.get("errors_by_stage")
    if not stages:
        return []
    lines = ["  errors by stage: " + ", ".join(f"{stage} {n}" for stage, n in stages.items()),
             "  top reasons:"]
    reasons = manifest.get("errors_by_reason", [])
    shown = reasons if len(reasons) <= top + 1 else reasons[:top]
    for r in shown:
        lines.append(f"    {r['count']:>6} x {r['reason']} ({r['stage']})")
    if len(reasons) > len(shown):
        rest = sum(r["count"] for r in reasons[len(shown):])
        lines.append(f"    {rest:>6} x {len(reasons) - len(shown)} other reasons")
    lines.append(f"  every error, with its file and record: "
                 f"{manifest['output']['directory'].rstrip('/')}/errors.jsonl")
    return lines
