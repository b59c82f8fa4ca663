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
import numbers

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

def build(steps, fuse=True, start=0):
    """The chain as ``fn(images float32 [B,H,W,C] in [0,1], seeds int32 [B,2]) -> images``.

    Call it inside a tf.function (the DoFn and the Keras layer do).
    Consecutive geometric ops that resample alike are fused into one resample (`fuse`).
    """
    from pipeline.ops import geometry
    fns = [_build_step(step) for step in steps]
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


def _build_step(step):
    if "op" in step:
        body = registry.get(step["op"]).build(step["params"])
    elif "sequence" in step:
        body = build(step["sequence"])
    elif "one_of" in step:
        body = _one_of([_build_step(s) for s in step["one_of"]], step["weights"])
    else:
        body = _some_of([_build_step(s) for s in step["some_of"]], step["n"])
    if step["probability"] < 1.0:
        return _with_probability(body, step["probability"])
    return body


def _apply_where(fn, mask, images, seeds):
    """fn on the examples where `mask` holds, the others untouched (no wasted work)."""
    import tensorflow as tf
    parts = tf.cast(mask, tf.int32)
    index = tf.dynamic_partition(tf.range(tf.shape(images)[0]), parts, 2)
    kept, chosen = tf.dynamic_partition(images, parts, 2)
    _, chosen_seeds = tf.dynamic_partition(seeds, parts, 2)
    # Ops need not handle an empty batch: skip the call when no example is chosen.
    changed = tf.cond(tf.size(index[1]) > 0,
                      lambda: tf.cast(fn(chosen, chosen_seeds), images.dtype),
                      lambda: chosen)
    return tf.dynamic_stitch(index, [kept, changed])


def _with_probability(fn, probability):
    from pipeline.ops import draw, geometry

    def chosen(seeds):
        return draw.coin(draw.fold_in(seeds, _COIN), probability)

    def run(images, seeds):
        return _apply_where(fn, chosen(seeds), images, seeds)
    if isinstance(fn, geometry.Projective):
        return fn.sometimes(chosen, standalone=run)  # still fusable, with the same coin
    return run


def _one_of(fns, weights):
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
                                  tf.equal(pick, index), images, seeds)
        return images
    return run


def _some_of(fns, n):
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
                                  chosen[:, index], images, seeds)
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
