"""augbatch: offline, deterministic dataset augmentation into sharded TFRecords."""
__version__ = "0.1.0"
