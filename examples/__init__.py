"""Examples to copy: augbatch's `python` ops (examples/augment_ops.py).

From the repository root they import as `examples.augment_ops` (PYTHONPATH=.); copied into a
package of your own, name that package's module instead.
"""
