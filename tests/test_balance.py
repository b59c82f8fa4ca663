"""augment.balance: copies per class, or rare classes oversampled to a target count."""
import os

import numpy as np
import pytest
from PIL import Image

from pipeline import balance, config, run
from pipeline.errors import ConfigError, UserError
from tests.conftest import SAMPLE_TFRECORDS, assert_accounted, read_outputs

FLIP = [{"op": "tf.image.random_flip_left_right"}]


def folder(root, sizes):
    """Class folders of small distinct PNGs: {class: number of images}."""
    rng = np.random.default_rng(0)
    for name, count in sizes.items():
        os.makedirs(root / name)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (16, 24, 3), np.uint8)).save(
                root / name / f"{name}_{i}.png")
    return str(root)


def expand(images, out, **fields):
    job = config.load(None, overrides={"input": (images,), "output": str(out), "chain": FLIP,
                                       "format": "png", "num_shards": 1, **fields})
    manifest = run.run_expand(job)
    assert_accounted(manifest)
    return manifest, read_outputs(out)


def copies_per_key(rows):
    out = {}
    for row in rows:
        out.setdefault(row["source_id"], set()).add(row["copy_index"])
    return out


def test_rare_classes_are_oversampled_to_the_target(tmp_path):
    images = folder(tmp_path / "images", {"common": 4, "rare": 2})
    manifest, rows = expand(images, tmp_path / "out", copies=1, seed=3,
                            balance={"target": 7})
    # common: 4 inputs x (copy 0 + 1) = 8 >= 7: as configured. rare: 2 x 2 = 4, 3 short:
    # one more copy each, and one more again for the input first in the seeded order.
    assert manifest["balance"] == {"before": {"common": 4, "rare": 2},
                                   "after": {"common": 8, "rare": 7}}
    assert manifest["counts"]["per_label"] == {"common": 8, "rare": 7}
    first = min(["rare/rare_0.png", "rare/rare_1.png"], key=lambda k: balance.order(3, k))
    other = ({"rare/rare_0.png", "rare/rare_1.png"} - {first}).pop()
    per_key = copies_per_key(rows)
    assert per_key[first] == {0, 1, 2, 3} and per_key[other] == {0, 1, 2}
    assert all(per_key[f"common/common_{i}.png"] == {0, 1} for i in range(4))
    # Copy c of an input is the same image whatever the number of copies: a plain run of
    # the rare class with 3 copies writes the same bytes for the copies both runs have.
    only_rare = tmp_path / "only_rare"
    os.makedirs(only_rare)
    os.rename(os.path.join(images, "rare"), only_rare / "rare")
    _, plain = expand(str(only_rare), tmp_path / "plain", copies=3, seed=3)
    plain = {(r["source_id"], r["copy_index"]): r["image/encoded"] for r in plain}
    for row in rows:
        if row["source_id"].startswith("rare/"):
            assert row["image/encoded"] == plain[(row["source_id"], row["copy_index"])]


def test_copies_per_class(tmp_path):
    images = folder(tmp_path / "images", {"common": 3, "rare": 1})
    manifest, rows = expand(images, tmp_path / "out", copies=1,
                            balance={"copies": {"common": 0, "rare": 4}})
    assert manifest["balance"] == {"before": {"common": 3, "rare": 1},
                                   "after": {"common": 3, "rare": 5}}
    per_key = copies_per_key(rows)
    assert per_key["rare/rare_0.png"] == {0, 1, 2, 3, 4}
    assert all(per_key[f"common/common_{i}.png"] == {0} for i in range(3))


def test_balance_is_checked(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("augment:\n  balance: {target: 0}\n  chain: [tf.image.random_flip_up_down]\n")
    with pytest.raises(ConfigError, match="augment.balance.target: must be between 1 and"):
        config.load(str(cfg), require_paths=False)
    cfg.write_text("augment:\n  balance: {copies: {cats: 0}}\n  keep_original: false\n"
                   "  chain: [tf.image.random_flip_up_down]\n")
    with pytest.raises(ConfigError, match="augment.balance.copies.cats: 0 copies with "
                                          "keep_original false"):
        config.load(str(cfg), require_paths=False)
    cfg.write_text("augment:\n  balance: {oversample: 3}\n")
    with pytest.raises(ConfigError, match=r"augment.balance: expected \{copies: "):
        config.load(str(cfg), require_paths=False)
    images = folder(tmp_path / "images", {"cats": 1})
    job = config.load(None, overrides={"input": (images,), "output": str(tmp_path / "out"),
                                       "chain": FLIP, "balance": {"copies": {"dogs": 2}}})
    with pytest.raises(UserError, match="augment.balance.copies.dogs: no such class among "
                                        "the inputs \\(classes: cats\\)"):
        run.run_expand(job)
    job = config.load(None, overrides={"input": (SAMPLE_TFRECORDS,), "output": str(
        tmp_path / "out2"), "chain": FLIP, "balance": {"target": 10}})
    with pytest.raises(UserError, match="augment.balance.target needs the classes' sizes"):
        run.run_expand(job)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
