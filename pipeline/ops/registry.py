"""The op registry: op name -> Op (its parameters and its builder).

Every op works on a batch: ``fn(images, seeds) -> images`` where ``images`` is float32
[B, H, W, C] with values in [0, 1] and ``seeds`` is int32 [B, 2], one stateless seed per
example, already specific to this op (the chain folds in the op's position). An op must draw
its randomness per example from its row of ``seeds``, so an image's output never depends on
what else is in the batch.

Adding an op = one builder function in its family module, decorated with ``@register``.
`augbatch list-ops`, config validation and the registry-driven tests all read this table.
"""
import dataclasses
import importlib
import math
import numbers
from typing import Any, Callable, Optional

from pipeline.errors import ConfigError, did_you_mean, quote

REQUIRED = object()
# Op.targets: what an op does to an input's boxes, masks and keypoints.
UNCHANGED, TRANSFORMED = "unchanged", "transformed"
TARGET_TRAITS = (UNCHANGED, TRANSFORMED, None)

# The family modules, imported on first use of the registry. tfa is imported only by tfa_image.
FAMILY_MODULES = {
    "tf.image": "pipeline.ops.tf_image",
    "tfa.image": "pipeline.ops.tfa_image",
    "keras.layers": "pipeline.ops.keras_layers",
    "idg": "pipeline.ops.idg",
    "python": "pipeline.ops.python_ops",
    "uint8": "pipeline.ops.uint8",
}

# Parameter kinds and the Python values each accepts.
KINDS = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
    "range": "a number or a [low, high] pair",
    "list": "a list",
    "any": "any value",
}


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: str
    default: Any = REQUIRED
    low: Optional[float] = None  # inclusive bounds for numbers (and both ends of a range)
    high: Optional[float] = None
    choices: Optional[tuple] = None
    help: str = ""

    @property
    def required(self):
        return self.default is REQUIRED

    def check(self, value, path):
        """Return the value, normalised; raise ConfigError naming `path` when it does not fit."""
        if value is None and self.default is None:
            return None
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(path, f"expected a number, got {quote(value)}")
            value = float(value)
        elif self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(path, f"expected an integer, got {quote(value)}")
            value = int(value)
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(path, f"expected true or false, got {quote(value)}")
        elif self.kind == "str":
            if not isinstance(value, str):
                raise ConfigError(path, f"expected a string, got {quote(value)}")
        elif self.kind == "range":
            value = _as_range(value, path)
        elif self.kind == "list":
            if not isinstance(value, (list, tuple)):
                raise ConfigError(path, f"expected a list, got {quote(value)}")
            value = list(value)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(path, f"expected one of {list(self.choices)}, got {quote(value)}")
        for number in value if self.kind == "range" else [value]:
            if isinstance(number, numbers.Real) and not isinstance(number, bool):
                if not math.isfinite(number):  # NaN passes every bounds check
                    raise ConfigError(path, f"{number} is not a finite number")
                if self.low is not None and number < self.low:
                    raise ConfigError(path, f"must be >= {self.low}, got {number}")
                if self.high is not None and number > self.high:
                    raise ConfigError(path, f"must be <= {self.high}, got {number}")
        return value

    def describe(self):
        text = f"{self.name}: {self.kind}"
        if not self.required:
            text += f" = {self.default!r}"
        if self.choices:
            text += f" (one of {', '.join(map(str, self.choices))})"
        elif self.low is not None or self.high is not None:
            low = "" if self.low is None else f"{self.low} <= "
            high = "" if self.high is None else f" <= {self.high}"
            text += f" ({low}x{high})"
        return text + (f"  {self.help}" if self.help else "")


def _as_range(value, path):
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [float(value), float(value)]
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)):
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise ConfigError(path, f"range low {low} is above high {high}")
        return [low, high]
    raise ConfigError(path, f"expected a number or a [low, high] pair, got {quote(value)}")


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    family: str
    builder: Callable[..., Callable]  # builder(**params) -> fn(images, seeds) -> images
    params: tuple
    random: bool
    doc: str
    # True when the output has the input's height and width (probability/one_of need it).
    keeps_shape: bool = True
    # Parameters the registry-driven tests run the op with; an op without them fails the tests.
    test_params: Optional[dict] = None
    # Cross-parameter check on the resolved params: returns an error message or None.
    check: Optional[Callable[[dict], Optional[str]]] = None
    # Allows keys that are not declared (an open signature, e.g. a Keras layer's **kwargs).
    open_params: bool = False
    # What happens to an input's targets (boxes, masks, keypoints): "unchanged" (the op only
    # changes pixel values, or occludes), "transformed" (a geometric op: targets follow its
    # geometry), None (it cannot carry them: refused for inputs that have targets).
    targets: Optional[str] = None
    # For a geometric op that is not a geometry.Projective: geometry(**params) ->
    # fn(seeds [B, 2], height, width) -> (transforms [B, 8], out_height, out_width), the
    # output -> input map it applies (geometry.py's convention) and its output size, drawn
    # exactly as the op draws. A Projective carries its own (same size).
    geometry: Optional[Callable] = None
    # Only moves pixels (no arithmetic): exact on uint8, may run before the float conversion.
    uint8_exact: bool = False
    # Computes on uint8 pixels itself when given them (one rounding; on floats, the same map
    # unrounded): may run before the float conversion, and after it (augment.plan).
    uint8_native: bool = False
    # XLA compiles it on CPU and GPU (element-wise colour maths, flips). Explicit: compiling
    # changes the random draws, so what is compiled must not depend on the machine.
    xla: bool = False

    def resolve(self, given, path):
        """Validate the config's params for this op; return them complete with defaults."""
        declared = {p.name: p for p in self.params}
        resolved = {}
        for key, value in given.items():
            if key not in declared:
                if self.open_params:
                    resolved[key] = value
                    continue
                raise ConfigError(f"{path}.{key}", f"unknown parameter of {self.name}"
                                  + did_you_mean(key, declared), hint=self.signature())
            resolved[key] = declared[key].check(value, f"{path}.{key}")
        for param in self.params:
            if param.name not in resolved:
                if param.required:
                    raise ConfigError(f"{path}.{param.name}", f"required by {self.name}",
                                      hint=self.signature())
                resolved[param.name] = param.default
        if self.check:
            problem = self.check(resolved)
            if problem:
                raise ConfigError(path, problem)
        return resolved

    def build(self, params):
        return self.builder(**params)

    def signature(self):
        return f"{self.name}(" + ", ".join(p.describe().split("  ")[0] for p in self.params) + ")"


_OPS = {}
_UNAVAILABLE = {}  # op name -> why this stack lacks it (another stack has it)
_loaded = set()


def register(name, family, params=(), random=False, keeps_shape=True, test_params=None,
             check=None, open_params=False, doc=None, targets=None, geometry=None,
             uint8_exact=False, uint8_native=False, xla=False):
    """Decorator: register `builder` as the op `name` (see Op for the traits)."""
    if targets not in TARGET_TRAITS:
        raise ValueError(f"{name}: targets must be one of {TARGET_TRAITS}")

    def wrap(builder):
        add(Op(name=name, family=family, builder=builder, params=tuple(params), random=random,
               doc=(doc or (builder.__doc__ or "")).strip().split("\n")[0],
               keeps_shape=keeps_shape, test_params=test_params, check=check,
               open_params=open_params, targets=targets, geometry=geometry,
               uint8_exact=uint8_exact, uint8_native=uint8_native, xla=xla))
        return builder
    return wrap


def add(op):
    if op.name in _OPS:
        raise ValueError(f"op {op.name} registered twice")
    _OPS[op.name] = op


def unavailable(name, reason):
    """Record that the op `name` exists on another stack, and why it is missing here."""
    _UNAVAILABLE[name] = reason


def load_families(families=None):
    for family in families or FAMILY_MODULES:
        if family not in _loaded:
            importlib.import_module(FAMILY_MODULES[family])
            _loaded.add(family)


def all_ops(family=None):
    load_families([family] if family else None)
    return {name: op for name, op in sorted(_OPS.items())
            if family is None or op.family == family}


def get(name, path="op"):
    load_families()
    if name in _UNAVAILABLE:
        raise ConfigError(path, f"{name} {_UNAVAILABLE[name]}",
                          hint="`augbatch list-ops` lists the ops of this stack")
    if name not in _OPS:
        raise ConfigError(path, f"unknown op '{name}'" + did_you_mean(name, all_ops()),
                          hint="`augbatch list-ops` lists every op")
    return _OPS[name]  # (not all_ops(): it sorts every op, ~10 us, on every record's call)
