"""The augbatch benchmark: `python -m bench --help`."""
