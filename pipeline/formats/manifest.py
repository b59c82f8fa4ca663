"""A CSV or JSON-lines manifest: one image per row, `path,label[,split]` (a CSV with that
header, or {"path": ..., "label": ..., "split": ...} per line; a split is read in lower case).
Paths are relative to the manifest's folder (or absolute, or URLs). Labels that are all whole
numbers are the labels; class names are numbered in sorted order from 0 (as class folders are),
or by input.labels.
"""
import csv
import io
import json
import os
import posixpath

from pipeline import formats, sources
from pipeline.errors import UserError

NAME = "manifest"
EXTENSIONS = (".csv", ".jsonl", ".ndjson")


def detect(found):
    files = [f for f, _ in formats.files_of(found)]
    return bool(files) and all(f.lower().endswith(EXTENSIONS) for f in files)


def _rows(path):
    text = formats.read_text(path)
    if path.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise UserError(f"{path}: a CSV manifest needs a header with a 'path' column "
                            f"(and 'label', optionally 'split'); it has {reader.fieldnames}")
        return [(i + 2, row) for i, row in enumerate(reader)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path} line {number} is not JSON: {e}") from None
            if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                raise UserError(f"{path} line {number}: expected an object with a 'path'")
            rows.append((number, row))
    return rows


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, str) and value.strip().lstrip("-").isdigit())


def discover(job, found):
    entries = []
    for path, _ in formats.files_of(found):
        folder = posixpath.dirname(path) if "://" in path else os.path.dirname(path)
        for number, row in _rows(path):
            image = row.get("path") or ""
            if not image:
                raise UserError(f"{path} line {number}: no path")
            label = row.get("label")
            label = None if label in (None, "") else label
            full = image if "://" in image or os.path.isabs(image) else formats.join(folder,
                                                                                     image)
            # (lower case, as split folders are read: "Train" is the train split)
            split = str(row.get("split") or "").strip().lower() or None
            entries.append((image, full, label, split))
    labels = {e[2] for e in entries if e[2] is not None}
    if all(_whole(v) for v in labels):
        label_map, numbered = {}, True
    else:
        numbered = False
        names = sorted(str(v) for v in labels)
        label_map = dict(job.label_map) if job.label_map else {n: i for i, n in enumerate(names)}
        unknown = [n for n in names if n not in label_map]
        if unknown:
            raise UserError(f"manifest labels {', '.join(map(repr, unknown[:10]))} are not in "
                            "the config's input.labels", hint="add them to input.labels")
    refs = []
    for key, full, label, split in entries:
        if label is None:
            refs.append(formats.Ref(sources.printable(key), full, split=split))
        elif numbered:
            refs.append(formats.Ref(sources.printable(key), full, int(label), split=split))
        else:
            refs.append(formats.Ref(sources.printable(key), full, label_map[str(label)],
                                    str(label), split=split))
    return formats.Listing(refs, label_map, set())


def read(ref, height, width):
    return None  # an image-level label only
