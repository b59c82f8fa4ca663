"""The augmentation ops, one module per family; `registry` is the table that names them."""
