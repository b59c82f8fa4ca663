"""The docs stay true: the op reference matches the registry; README's snippets run."""
from pipeline import opsdoc
from pipeline.ops import registry


def test_op_reference_matches_the_registry():
    assert opsdoc.stale() == [], "run: python -m pipeline.opsdoc"


def test_every_op_is_in_the_reference():
    text = "\n".join(opsdoc.render().values())
    missing = [name for name in registry.all_ops() if f"### `{name}`" not in text]
    assert missing == []
