"""augment.balance: how many copies each input gets, by its class.

Two forms:
  * `balance: {copies: {cats: 1, dogs: 6}}`: copies per class (a class folder name or a label);
    a class not listed gets augment.copies;
  * `balance: {target: 500}`: every class is brought to at least 500 outputs (copy 0 included
    with keep_original): each input gets augment.copies, and the inputs of a class below the
    target get more, spread evenly; the first `extra % n` inputs in the order of a hash of
    (seed, key) get one more than the others.
Which inputs get which copies is a function of the seed and the keys only: the copies an input
gets are copies 1..k, and copy c of an input is the same image whatever k is.

The target form needs each class's size before the run: inputs whose labels discovery knows (class
folders). The plan (extra copies per class and the hash threshold of the inputs getting one more)
is made once on the driver and travels with the job to the workers.
"""
import collections
import hashlib

from pipeline.errors import UserError


def order(seed, key):
    """An input's place in its class's order for the extra copies: a salted hash."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8,
                                          person=b"augbatch-balance").digest(), "big")


def labels_of(spec, label_map, path="augment.balance.copies"):
    """{label: copies} of the copies form, class names resolved by the label map."""
    out = {}
    for name, copies in spec:
        if isinstance(name, int):
            out[name] = copies
        elif name in label_map:
            out[label_map[name]] = copies
        else:
            known = ", ".join(sorted(label_map)) or "none: the inputs have no class folders"
            raise UserError(f"{path}.{name}: no such class among the inputs (classes: {known})",
                            hint="name a class folder, or give its label (an integer)")
    return out


def make_plan(job, discovery):
    """The job's balance as the plan the workers apply: ('copies', ((label, copies), ...)) or
    ('target', ((label, extra copies of each input, hash threshold or -1), ...)): the inputs
    whose order() is below the threshold get one more."""
    kind, spec = job.balance
    label_map = dict(discovery.label_map)
    if kind == "copies":
        return ("copies", tuple(sorted(labels_of(spec, label_map).items())))
    if discovery.kind != "folder" or not label_map:
        raise UserError("augment.balance.target needs the classes' sizes before the run: class "
                        "folders (TFRecord inputs are counted only as they are read)",
                        hint="give copies per class instead: augment.balance: {copies: "
                             "{class: copies, ...}}")
    keys = collections.defaultdict(list)
    for ref in discovery.refs:  # (inputs of splits not augmented get no copies)
        split = getattr(ref, "split", None)
        if ref.label is not None and (split is None or split in job.augment_splits):
            keys[ref.label].append(ref.key)
    per_input = job.copies + (1 if job.keep_original else 0)
    plan = []
    for label, members in sorted(keys.items()):
        missing = max(0, spec - len(members) * per_input)
        extra, rest = divmod(missing, len(members))
        ranked = sorted(order(job.seed, key) for key in members)
        plan.append((label, extra, ranked[rest] if rest else -1))
    return ("target", tuple(plan))


def copies_of(job, key, label):
    """How many copies the input `key` of class `label` gets under the job's plan."""
    if job.balance_plan is None or label is None:
        return job.copies
    kind, rows = job.balance_plan
    if kind == "copies":
        return dict(rows).get(label, job.copies)
    for row_label, extra, threshold in rows:
        if row_label == label:
            return job.copies + extra + (threshold >= 0 and order(job.seed, key) < threshold)
    return job.copies


def most_copies(job):
    """The most copies any input gets (batch sizes are planned for it)."""
    if job.balance_plan is None:
        return job.copies
    kind, rows = job.balance_plan
    if kind == "copies":
        return max([job.copies] + [copies for _, copies in rows])
    return job.copies + max([0] + [extra + (threshold >= 0) for _, extra, threshold in rows])


def before_and_after(job, discovery, per_label):
    """{"before": inputs per class, "after": outputs per class} for the manifest; per_label:
    the outputs per label (str(label) -> records)."""
    names = {label: name for name, label in discovery.label_map.items()}
    first = 1 if job.keep_original else 0
    kind, rows = job.balance_plan
    if kind == "target":  # (class folders: discovery counted them)
        before = collections.Counter(ref.label for ref in discovery.refs
                                     if ref.label is not None)
    else:  # every input of a class got the same copies: outputs / (copies + copy 0)
        copies = dict(rows)
        before = {int(label): n // (first + copies.get(int(label), job.copies))
                  for label, n in per_label.items() if label != "None"
                  and first + copies.get(int(label), job.copies)}
    return {"before": {names.get(label, str(label)): n for label, n in sorted(before.items())},
            "after": {names.get(int(label), label): n for label, n in sorted(
                per_label.items(), key=lambda kv: kv[0]) if label != "None"}}
