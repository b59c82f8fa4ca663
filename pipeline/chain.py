"""The augmentation chain: a validated list of steps -> one function (images, seeds) -> images.

A step is one of
    {op: NAME, probability: P, **params}
    {one_of: [steps], weights: [w, ...], probability: P}     pick one step per example
    {some_of: [steps], n: K or [min, max], probability: P}   apply K of them, in list order
    {sequence: [steps], probability: P}                       apply all, in order

Randomness: each example has one seed, a pure function of (global seed, input key, copy index)
(`example_seed`); a step's seed folds in its position in the chain, so every draw is a pure
function of (seed, key, copy, op) whatever the batch holds.
"""
import hashlib
import math
import numbers

import numpy as np

from pipeline.errors import ConfigError, did_you_mean, quote
from pipeline.ops import registry

GROUPS = ("one_of", "some_of", "sequence")
# Tags folded into a step's seed for the draws the chain itself makes.
_COIN, _PICK = 1_000_001, 1_000_002
# Groups inside groups, and ops in all: a chain builds one graph holding every branch, so a
# deep or huge chain costs memory and tracing time far beyond any real use.
MAX_DEPTH = 8
MAX_OPS = 200


def example_seed(global_seed, key, copy_index):
    """The example's stateless seed: two int32s from a hash of (seed, key, copy)."""
    digest = hashlib.blake2b(f"{global_seed}\x00{key}\x00{copy_index}".encode(),
                             digest_size=8).digest()
    return (int.from_bytes(digest[:4], "little", signed=True),
            int.from_bytes(digest[4:], "little", signed=True))


# --- validation --------------------------------------------------------------------------------

def normalize(steps, path="augment.chain", allow_python_ops=False):
    """Check a chain from a config; return it in canonical form with every param resolved.

    `python` ops run user code, so they are refused unless the run allows them explicitly.
    """
    out = _normalize(steps, path, allow_python_ops, 0)
    count = sum(1 for _ in op_paths(out, path))
    if count > MAX_OPS:
        raise ConfigError(path, f"the chain has {count} ops; at most {MAX_OPS}")
    return out


def _normalize(steps, path, allow_python_ops, depth):
    if not isinstance(steps, list):
        raise ConfigError(path, f"expected a list of steps, got {type(steps).__name__}")
    if depth > MAX_DEPTH:
        raise ConfigError(path, f"groups (one_of, some_of, sequence) nested more than "
                          f"{MAX_DEPTH} levels deep")
    if len(steps) > MAX_OPS:
        raise ConfigError(path, f"{len(steps)} steps; a chain has at most {MAX_OPS} ops")
    return [_normalize_step(step, f"{path}[{i}]", allow_python_ops, depth)
            for i, step in enumerate(steps)]


def _probability(step, path):
    p = step.get("probability", 1.0)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ConfigError(f"{path}.probability", f"expected a number in [0, 1], got {quote(p)}")
    return float(p)


def _normalize_step(step, path, allow_python_ops, depth):
    if isinstance(step, str):
        step = {"op": step}
    if not isinstance(step, dict):
        raise ConfigError(path, f"expected a mapping like {{op: NAME, ...}}, got {quote(step)}")
    kinds = [k for k in ("op",) + GROUPS if k in step]
    if len(kinds) != 1:
        raise ConfigError(path, "a step needs exactly one of 'op', 'one_of', 'some_of', "
                                f"'sequence'; found {kinds or list(step)}")
    kind = kinds[0]
    probability = _probability(step, path)
    if kind == "op":
        name = step["op"]
        if not isinstance(name, str):
            raise ConfigError(f"{path}.op", f"expected an op name, got {quote(name)}")
        op = registry.get(name, f"{path}.op")
        if op.family == "python" and not allow_python_ops:
            raise ConfigError(f"{path}.op", f"{name} runs Python code named in the config; "
                              "it runs only when you pass --allow-python-ops")
        params = {k: v for k, v in step.items() if k not in ("op", "probability")}
        resolved = op.resolve(params, path)
        if probability < 1.0 and not op.keeps_shape:
            raise ConfigError(f"{path}.probability", f"{name} changes the image size, so it "
                              "cannot be applied to only some examples")
        return {"op": name, "params": resolved, "probability": probability}

    allowed = {"one_of": {"weights"}, "some_of": {"n"}, "sequence": set()}[kind]
    for key in step:
        if key not in allowed | {kind, "probability"}:
            raise ConfigError(f"{path}.{key}", f"unknown key in a {kind} step"
                              + did_you_mean(key, allowed | {kind, "probability"}))
    children = _normalize(step[kind], f"{path}.{kind}", allow_python_ops, depth + 1)
    if not children:
        raise ConfigError(f"{path}.{kind}", "needs at least one step")
    out = {kind: children, "probability": probability}
    if kind != "sequence" or probability < 1.0:
        for i, child in enumerate(children):
            if not keeps_shape(child):
                raise ConfigError(f"{path}.{kind}[{i}]", "changes the image size, so it cannot "
                                  f"be applied to only some examples inside {kind}")
    if kind == "one_of":
        weights = step.get("weights", [1.0] * len(children))
        if (not isinstance(weights, list) or len(weights) != len(children)
                or any(isinstance(w, bool) or not isinstance(w, numbers.Real) or w < 0
                       for w in weights) or sum(weights) <= 0):
            raise ConfigError(f"{path}.weights", f"expected {len(children)} non-negative "
                              f"numbers, not all zero, got {quote(weights)}")
        out["weights"] = [float(w) for w in weights]
    if kind == "some_of":
        n = step.get("n", [1, len(children)])
        n = [n, n] if isinstance(n, int) and not isinstance(n, bool) else n
        if (not isinstance(n, list) or len(n) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in n)
                or not 0 <= n[0] <= n[1] <= len(children)):
            raise ConfigError(f"{path}.n", f"expected a count or [min, max] within 0.."
                              f"{len(children)}, got {quote(step.get('n'))}")
        out["n"] = n
    return out


def keeps_shape(step):
    if "op" in step:
        return registry.get(step["op"]).keeps_shape
    return all(keeps_shape(child) for kind in GROUPS for child in step.get(kind, []))


def op_paths(steps, path="augment.chain"):
    """(config path, op name) of every op the chain uses, depth first."""
    for i, step in enumerate(steps):
        if "op" in step:
            yield f"{path}[{i}]", step["op"]
        for kind in GROUPS:
            yield from op_paths(step.get(kind, []), f"{path}[{i}].{kind}")


# --- building ----------------------------------------------------------------------------------

def build(steps, fuse=True, start=0, record=False, path="augment.chain"):
    """The chain as ``fn(images float32 [B,H,W,C] in [0,1], seeds int32 [B,2]) -> images``.

    Call it inside a tf.function (the DoFn and the Keras layer do).
    Consecutive geometric ops that resample alike are fused into one resample (`fuse`).
    `record`: the chain in record mode (traced inside draw.recording(); see `build_record`).
    """
    from pipeline.ops import geometry
    fns = [_build_step(step, record, f"{path}[{start + i}]") for i, step in enumerate(steps)]
    if record:
        fuse = False  # each op's own geometry is recorded
    # Fusion keeps each op's own seed (its position in the chain) and resamples only when the
    # ops share interpolation and fill, so the draws and the geometry stay the same; see
    # geometry.fuse_runs for where the pixels can differ from one-by-one.
    runs = geometry.fuse_runs(fns) if fuse else [[(i, fn)] for i, fn in enumerate(fns)]
    # Part of a chain (augment.py compiles some parts) keeps its steps' seeds: start + index.
    runs = [[(start + i, fn) for i, fn in members] for members in runs]

    def run(images, seeds):
        from pipeline.ops import draw
        for members in runs:
            if len(members) == 1:
                index, fn = members[0]
                images = fn(images, draw.fold_in(seeds, index))
            else:
                images = geometry.resample_run(
                    [(fn, draw.fold_in(seeds, index)) for index, fn in members], images)
        return images
    return run


def build_levels(steps, start=0):
    """The chain on the 256 levels of uint8 pixels, ``fn(values, seeds, mean_of) -> values``
    (the form tf_image._on_levels describes), with `build`'s draws; or None unless every step
    is an op that has that form (colour ops whose pixels depend only on their value, their
    channel and the image's channel means)."""
    fns = []
    for step in steps:
        levels = (getattr(registry.get(step["op"]).build(step["params"]), "levels", None)
                  if "op" in step else None)
        if levels is None:
            return None
        if step["probability"] < 1.0:
            levels = _levels_with_probability(levels, step["probability"])
        fns.append(levels)

    def run(values, seeds, mean_of):
        from pipeline.ops import draw
        for index, fn in enumerate(fns, start):
            values = fn(values, draw.fold_in(seeds, index), mean_of)
        return values
    return run


def _build_step(step, record=False, path=None):
    if "op" in step:
        body = registry.get(step["op"]).build(step["params"])
        if record:
            body = _recorded_op(step, body, path)
    elif "sequence" in step:
        body = build(step["sequence"], record=record, path=f"{path}.sequence")
    else:
        kind = "one_of" if "one_of" in step else "some_of"
        children = [_build_step(s, record, f"{path}.{kind}[{i}]")
                    for i, s in enumerate(step[kind])]
        where = f"{path}.{kind}" if record else None
        body = (_one_of(children, step["weights"], where) if kind == "one_of"
                else _some_of(children, step["n"], where))
    if step["probability"] < 1.0:
        return _with_probability(body, step["probability"],
                                 f"{path}.probability" if record else None)
    return body


def _apply_where(fn, mask, images, seeds, record=None):
    """fn on the examples where `mask` holds, the others untouched (no wasted work).
    `record`: in record mode, the config path deciding `mask` (fn is traced for all)."""
    import tensorflow as tf
    if record:
        from pipeline.ops import draw
        with draw.only_where(record, mask):
            fn(images, seeds)
        return images  # (groups and probabilities take only steps that keep the size)
    parts = tf.cast(mask, tf.int32)
    index = tf.dynamic_partition(tf.range(tf.shape(images)[0]), parts, 2)
    kept, chosen = tf.dynamic_partition(images, parts, 2)
    _, chosen_seeds = tf.dynamic_partition(seeds, parts, 2)
    # Ops need not handle an empty batch: skip the call when no example is chosen.
    changed = tf.cond(tf.size(index[1]) > 0,
                      lambda: tf.cast(fn(chosen, chosen_seeds), images.dtype),
                      lambda: chosen)
    return tf.dynamic_stitch(index, [kept, changed])


def _chosen(seeds, probability):
    """The examples a step with this probability applies to: a coin per example."""
    from pipeline.ops import draw
    return draw.coin(draw.fold_in(seeds, _COIN), probability)


def _with_probability(fn, probability, record=None):
    from pipeline.ops import geometry

    def chosen(seeds):
        return _chosen(seeds, probability)

    def run(images, seeds):
        return _apply_where(fn, chosen(seeds), images, seeds, record)
    if isinstance(fn, geometry.Projective):
        return fn.sometimes(chosen, standalone=run)  # still fusable, with the same coin
    return run


def _levels_with_probability(fn, probability):
    """A step's form on levels with its coin: the values of the images it skips unchanged
    (each image's values depend only on its own draws and pixels, so computing them for all
    and keeping the chosen is what running it on the chosen gives)."""
    def run(values, seeds, mean_of):
        import tensorflow as tf
        from pipeline.ops import draw
        chosen = draw.expand(_chosen(seeds, probability))
        return tf.where(chosen, fn(values, seeds, mean_of), values)
    return run


def _one_of(fns, weights, record=None):
    import tensorflow as tf
    from pipeline.ops import draw
    bounds = tf.constant(weights, tf.float32)
    bounds = tf.math.cumsum(bounds / tf.reduce_sum(bounds))

    def run(images, seeds):
        u = draw.uniform(draw.fold_in(seeds, _PICK), 0.0, 1.0)
        pick = tf.minimum(tf.searchsorted(bounds, u, side="right"),
                          len(fns) - 1)
        for index, fn in enumerate(fns):
            images = _apply_where(lambda x, s, fn=fn, i=index: fn(x, draw.fold_in(s, i)),
                                  tf.equal(pick, index), images, seeds, record)
        return images
    return run


def _some_of(fns, n, record=None):
    import tensorflow as tf
    from pipeline.ops import draw

    def run(images, seeds):
        # Each example ranks the steps by a random key and applies its `count` lowest-ranked.
        keys = draw.uniform(draw.fold_in(seeds, _PICK), 0.0, 1.0, shape=(len(fns),))
        count = draw.uniform(draw.fold_in(seeds, _COIN), n[0], n[1] + 1, dtype=tf.int32)
        rank = tf.argsort(tf.argsort(keys, axis=1), axis=1)
        chosen = rank < count[:, None]
        for index, fn in enumerate(fns):
            images = _apply_where(lambda x, s, fn=fn, i=index: fn(x, draw.fold_in(s, i)),
                                  chosen[:, index], images, seeds, record)
        return images
    return run


# --- where the pixels go (for an input's targets) ----------------------------------------------

def build_geometry(steps, start=0):
    """The chain's geometry: ``fn(seeds [B, 2], height, width) -> [Move, ...]``, the moves each
    example's pixels make, in order, drawn exactly as `build(steps, start=start)` draws them
    (same seeds, same coins and picks). Steps that only change pixel values make no move; a
    fused run of geometric ops is one move, as it is one resample. Targets follow the moves
    (targets.py). A step that cannot say where its pixels go raises (validation refuses such
    chains for inputs with targets first: targets.check_chain).
    """
    from pipeline.ops import draw, geometry
    fns = [_build_step(step) for step in steps]
    moves = [_step_geometry(step, fn) for step, fn in zip(steps, fns)]
    runs = geometry.fuse_runs(fns)

    def run(seeds, height, width):
        out = []
        for members in runs:
            if len(members) == 1:
                index, _ = members[0]
                step_moves = moves[index](draw.fold_in(seeds, start + index), height, width)
            else:  # one resample: one move, the composed transform
                transforms = geometry.compose([
                    fn.projective(draw.fold_in(seeds, start + index), _f(height), _f(width))
                    for index, fn in members])
                step_moves = [Move(transforms, height, width)]
            for move in step_moves:
                out.append(move)
                height, width = move.height, move.width
        return out
    return run


class Move(tuple):
    """One resample's geometry: transforms [B, 8] (output pixel -> input pixel, geometry.py's
    convention) and the output height and width."""
    __slots__ = ()

    def __new__(cls, transforms, height, width):
        return super().__new__(cls, (transforms, height, width))

    transforms = property(lambda self: self[0])
    height = property(lambda self: self[1])
    width = property(lambda self: self[2])


def _f(value):
    import tensorflow as tf
    return tf.cast(value, tf.float32)


def _select(chosen, moves, height, width):
    """`moves` where chosen [B] holds, identity elsewhere (the size is kept: probability and
    groups allow only steps that keep it)."""
    import tensorflow as tf
    from pipeline.ops import geometry
    identity = geometry.identity(tf.shape(chosen)[0])
    return [Move(tf.where(chosen[:, None], m.transforms, identity), height, width)
            for m in moves]


def _step_geometry(step, fn):
    """fn(seeds, height, width) -> [Move] for one step (its image function is `fn`)."""
    import tensorflow as tf
    from pipeline.ops import draw, geometry
    if "op" in step:
        op = registry.get(step["op"])
        if op.targets == registry.UNCHANGED:
            return lambda seeds, height, width: []
        if op.targets != registry.TRANSFORMED:
            raise ValueError(f"{op.name} cannot carry targets")
        if isinstance(fn, geometry.Projective):  # its coin, if any, is in its matrices
            return lambda seeds, height, width: [
                Move(fn.projective(seeds, _f(height), _f(width)), height, width)]
        if op.geometry is None:  # a geometric op with no geometry this time (idg: colour only)
            return lambda seeds, height, width: []
        body = op.geometry(**step["params"])

        def body_moves(seeds, height, width):
            return [Move(*body(seeds, height, width))]
    elif "sequence" in step:
        body_moves = build_geometry(step["sequence"])
    elif "one_of" in step:
        body_moves = _one_of_geometry(step)
    else:
        body_moves = _some_of_geometry(step)
    if step["probability"] < 1.0:
        def sometimes(seeds, height, width):
            chosen = draw.coin(draw.fold_in(seeds, _COIN), step["probability"])
            return _select(chosen, body_moves(seeds, height, width), height, width)
        return sometimes
    return body_moves


def _children_geometry(children):
    return [_step_geometry(child, _build_step(child)) for child in children]


def _padded(moves, length, height, width, batch):
    """Moves padded with identities to `length` (branches make different numbers of moves)."""
    from pipeline.ops import geometry
    return moves + [Move(geometry.identity(batch), height, width)] * (length - len(moves))


def _one_of_geometry(step):
    import tensorflow as tf
    from pipeline.ops import draw, geometry
    branches = _children_geometry(step["one_of"])
    weights = tf.constant(step["weights"], tf.float32)

    def run(seeds, height, width):
        bounds = tf.math.cumsum(weights / tf.reduce_sum(weights))
        u = draw.uniform(draw.fold_in(seeds, _PICK), 0.0, 1.0)
        pick = tf.minimum(tf.searchsorted(bounds, u, side="right"), len(branches) - 1)
        each = [branch(draw.fold_in(seeds, i), height, width) for i, branch in enumerate(branches)]
        length, batch = max(len(m) for m in each), tf.shape(seeds)[0]
        out = [Move(geometry.identity(batch), height, width) for _ in range(length)]
        for i, moves in enumerate(each):
            moves = _padded(moves, length, height, width, batch)
            out = [Move(tf.where(tf.equal(pick, i)[:, None], m.transforms, o.transforms),
                        height, width) for m, o in zip(moves, out)]
        return out
    return run


def _some_of_geometry(step):
    import tensorflow as tf
    from pipeline.ops import draw
    children, n = _children_geometry(step["some_of"]), step["n"]

    def run(seeds, height, width):
        keys = draw.uniform(draw.fold_in(seeds, _PICK), 0.0, 1.0, shape=(len(children),))
        count = draw.uniform(draw.fold_in(seeds, _COIN), n[0], n[1] + 1, dtype=tf.int32)
        chosen = tf.argsort(tf.argsort(keys, axis=1), axis=1) < count[:, None]
        out = []
        for i, child in enumerate(children):
            out += _select(chosen[:, i], child(draw.fold_in(seeds, i), height, width),
                           height, width)
        return out
    return run


# --- what was done to each copy (the augment/ops feature) --------------------------------------
# The chain traced once more in record mode: the same steps, seeds, coins and picks as `build`,
# but each op notes what it drew (ops/draw.py's recorder) and, for a geometric op, its move,
# instead of changing pixels. Only the notes are returned, so TensorFlow prunes the pixel work.

MAX_NOTED = 8  # draws per op kept in a record; an op drawing more (noise) records its seed


def _recorded_op(step, body, path):
    """One op in record mode: `fn(images, seeds) -> images` of the size the op outputs (the
    pixels are not the op's: nothing reads them)."""
    import tensorflow as tf
    from pipeline.ops import draw, geometry
    op = registry.get(step["op"])
    moves = None
    if op.targets == registry.TRANSFORMED:
        if isinstance(body, geometry.Projective):
            def moves(seeds, height, width):
                return body.projective(seeds, _f(height), _f(width)), height, width
        elif op.geometry is not None:
            moves = op.geometry(**step["params"])

    def run(images, seeds):
        with draw.op_step(path, step["op"], seeds) as noted:
            if op.family == "python":  # user code draws with numpy: its seed says it all
                return images  # (and it is not run again: it keeps the size)
            if moves is None:
                out = body(images, seeds)
                return images if op.keeps_shape else out
            shape = tf.shape(images)
            transforms, height, width = moves(seeds, shape[1], shape[2])
            noted.move = (transforms, shape[1], shape[2], height, width)
            del noted.draws[:]  # (the move says what they were)
            if isinstance(body, geometry.Projective) and body.finish is not None:
                body.finish(images, seeds)  # its per-pixel draws (idg's brightness ...)
            if op.keeps_shape:
                return images
            return tf.zeros(tf.stack([shape[0], height, width, shape[3]]), images.dtype)
    return run


def build_record(steps, start=0):
    """``fn(seeds [B, 2], images) -> (notes, images)``: what each op step of
    ``build(steps, start=start)`` does to each example of the size of `images` (float32
    [B or 1, H, W, C]; their pixels do not matter), and images of the size it outputs.
    `notes`, one per op step: {"conditions": [bool [B]], "draws": [[B, ...]], "move":
    (transforms [B, 8], in height, in width, out height, out width) or (), "seeds": [B, 2]}
    (sizes may be [B] too); `fn.steps` holds their (config path, op name, [config paths of
    the conditions]) once traced."""
    import tensorflow as tf
    from pipeline.ops import draw

    fn = build(steps, start=start, record=True)  # (once: Keras layers made once)

    def run(seeds, images):
        with draw.recording() as recorder:
            out = fn(images, seeds)
        run.steps = [(s.path, s.name, [p for p, _ in s.conditions]) for s in recorder.steps]
        notes = [{"conditions": [m for _, m in s.conditions], "draws": list(s.draws),
                  "move": tuple(map(tf.convert_to_tensor, s.move)) if s.move is not None
                  else (), "seeds": s.seeds}  # (a fixed output size is a Python int)
                 for s in recorder.steps]
        return notes, out
    run.steps = []
    return run


def op_records(steps, notes, count):
    """The notes of `build_record` (as numpy) -> per example, a list of one dict per op step:
    {"at": config path, "op": name, "ran": bool, "by": what skipped it, then what it drew:
    a move (describe_move; "identity": true for none, e.g. a flip whose coin said no),
    "drew": [values], or "seed" for an op drawing inside TensorFlow's own random ops}."""
    def rows(value):  # [B, ...] -> B Python values (lists), or a scalar for every row
        value = np.asarray(value)
        return value.reshape(count, -1).tolist() if value.ndim > 1 else (
            value.tolist() if value.ndim else [value.item()] * count)
    columns = []  # per step: its values as Python lists, one row per example
    for (path, name, where), note in zip(steps, notes):
        draws = [rows(d) if np.ndim(d) > 1 else [[v] for v in rows(d)] for d in note["draws"]]
        columns.append((path, name, list(zip(where, map(rows, note["conditions"]))), draws,
                        [rows(v) for v in note["move"]], rows(note["seeds"]),
                        registry.get(name).random))
    out = []
    for row in range(count):
        entries = []
        for path, name, conditions, draws, move, seeds, random in columns:
            entry = {"at": path, "op": name, "ran": True}
            skipped = None
            for condition, mask in conditions:  # (a loop: most steps have none)
                if not mask[row]:
                    skipped = condition
                    break
            if skipped:
                entry.update(ran=False, by=skipped)
                entries.append(entry)
                continue
            if move:
                entry.update(describe_move(*[v[row] for v in move]) or {"identity": True})
            drawn = [value for d in draws for value in d[row]]
            if drawn and len(drawn) <= MAX_NOTED:
                entry["drew"] = [_plain_number(v) for v in drawn]
            elif random and (drawn or not move):
                entry["seed"] = [int(s) for s in seeds[row]]
            entries.append(entry)
        out.append(entries)
    return out


def _plain_number(value, digits=4):
    if type(value) is float:  # (most draws; the abstract checks below cost more than this)
        return round(value, digits)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (numbers.Integral, np.integer)):
        return int(value)
    return round(float(value), digits)


def _is_identity(t):
    """Whether the 8 numbers are the identity transform's, each within 1e-6 (the first alone
    first: most moves differ there)."""
    return (abs(t[0] - 1.0) < 1e-6
            and max(abs(a - b) for a, b in zip(t, (1, 0, 0, 0, 1, 0, 0, 0))) < 1e-6)


def describe_move(transform, in_h, in_w, out_h, out_w):
    """A geometric op's transform (8 numbers, output pixel -> input point, geometry.py's
    convention) in words: {"box": [x0, y0, x1, y1]} the input region shown (pixel edges) for
    crops and zooms, {"shift": [dx, dy]} for a translation (pixels), "flip": "x", "y" or "xy"
    for a mirrored one (a flip alone: no box); else "angle" (degrees,
    counter-clockwise as tfa.image.rotate), "scale" [sx, sy], "shift" [dx, dy] (where the
    input's centre went, pixels) and "flip": "x" when mirrored first; "matrix" for what these
    cannot say (perspective, shear). {} for no move."""
    t = [float(v) for v in transform]
    size = [int(in_h), int(in_w), int(out_h), int(out_w)]
    if size[:2] == size[2:] and _is_identity(t):
        return {}
    r = lambda v, digits=2: round(float(v), digits) + 0.0  # noqa: E731 (+0.0: no -0.0)
    if abs(t[6]) > 1e-9 or abs(t[7]) > 1e-9:
        return {"matrix": [r(v, 5) for v in t]}
    a0, a1, a2, b0, b1, b2 = t[:6]
    if abs(a1) < 1e-6 and abs(b0) < 1e-6:  # axis-aligned: a window of the input, maybe mirrored
        xs = sorted(a0 * e + a2 + 0.5 for e in (-0.5, out_w - 0.5))
        ys = sorted(b1 * e + b2 + 0.5 for e in (-0.5, out_h - 0.5))
        box = [r(xs[0], 1), r(ys[0], 1), r(xs[1], 1), r(ys[1], 1)]
        flip = ("x" if a0 < 0 else "") + ("y" if b1 < 0 else "")
        out = {"flip": flip} if flip else {}
        if box == [0, 0, int(in_w), int(in_h)] and size[:2] == size[2:]:
            return out  # a mere flip
        if abs(abs(a0) - 1) < 1e-6 and abs(abs(b1) - 1) < 1e-6 and size[:2] == size[2:]:
            # a shift (after the flip): where the input's centre went
            out["shift"] = [r(((int(in_w) - 1) / 2 - a2) / a0 - (int(out_w) - 1) / 2, 1),
                            r(((int(in_h) - 1) / 2 - b2) / b1 - (int(out_h) - 1) / 2, 1)]
            return out
        out["box"] = box
        return out
    # The forward map (input point -> output pixel), in closed form: its linear part
    # [[p, q], [s, u]] is the inverse of [[a0, a1], [b0, b1]].
    det = a0 * b1 - a1 * b0
    p, q, s, u = b1 / det, -a1 / det, -b0 / det, a0 / det
    # where the input's centre goes: forward @ [cx, cy, 1]
    cx, cy = (int(in_w) - 1) / 2 - a2, (int(in_h) - 1) / 2 - b2
    centre = (p * cx + q * cy, s * cx + u * cy)
    out = {}
    if det < 0:  # mirrored: a flip of x first, then the rest
        p, s = -p, -s
        out["flip"] = "x"
    sx = math.hypot(p, s)
    sy = (p * u - q * s) / sx
    angle = math.degrees(math.atan2(-s, p))
    out.update(angle=r(angle), scale=[r(sx, 3), r(sy, 3)],
               shift=[r(centre[0] - (int(out_w) - 1) / 2, 1),
                      r(centre[1] - (int(out_h) - 1) / 2, 1)])
    shear = (p * q + s * u) / (sx * sy)
    if abs(shear) > 1e-3:
        out["matrix"] = [r(v, 5) for v in t]
    return out
