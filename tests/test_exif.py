"""Phone photos: the EXIF orientation is applied at decode, so every copy (copy 0 too) comes
out as a viewer shows the photo."""
import io
import os

import numpy as np
from PIL import Image, ImageOps

from pipeline import transforms
from tests.conftest import SAMPLE_IMAGES, assert_accounted, decode_file, read_outputs, run_job

# A stored image showing as `upright` under orientation o is upright turned by o's inverse
# (6 and 8 undo each other; every other orientation undoes itself).
INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}
CHAIN = [{"op": "tf.image.random_brightness", "max_delta": 0.005}]  # moves no pixel


def upright_photo():
    """A real photo, 40 x 64 (not square), with a red marker in its top-left corner: each of
    the 8 orientations of it looks different."""
    photo = decode_file(os.path.join(SAMPLE_IMAGES, "objects", "coffee_01.jpg"))
    image = np.asarray(Image.fromarray(photo).resize((64, 40))).copy()
    image[2:12, 3:20] = (230, 20, 20)
    return image


def phone_photos(folder, upright):
    """One JPEG per EXIF orientation 1-8, each stored turned so that it shows as `upright`."""
    os.makedirs(folder / "phone")
    for o in range(1, 9):
        exif = Image.Exif()
        exif[transforms.EXIF_ORIENTATION] = o
        stored = Image.fromarray(transforms.upright(upright, INVERSE[o]))
        stored.save(folder / "phone" / f"o{o}.jpg", quality=95, exif=exif.tobytes())
        # What a viewer shows (Pillow's exif_transpose) is the upright photo.
        with Image.open(folder / "phone" / f"o{o}.jpg") as shown:
            assert np.abs(np.asarray(ImageOps.exif_transpose(shown), np.float32)
                          - upright).mean() < 6, o  # (JPEG's loss)
    return str(folder)


def test_every_exif_orientation_comes_out_upright_in_every_copy(tmp_path):
    upright = upright_photo()
    photos = phone_photos(tmp_path / "photos", upright)
    manifest = run_job(photos, tmp_path / "out", CHAIN, copies=2, num_shards=1)
    assert_accounted(manifest)
    rows = read_outputs(tmp_path / "out")
    assert len(rows) == 8 * 3
    mirrored = upright[:, ::-1].astype(np.float32)
    for row in rows:
        image = row["image"].astype(np.float32)
        assert image.shape == upright.shape, (row["source_id"], row["copy_index"])
        error = np.abs(image - upright).mean()
        assert error < 10 and error < np.abs(image - mirrored).mean() / 3, (
            row["source_id"], row["copy_index"], error)
        assert (row["image/height"], row["image/width"]) == (40, 64)
    originals = {r["source_id"]: r["image/encoded"] for r in rows if r["copy_index"] == 0}
    # Copy 0 of a photo stored upright keeps its bytes; a turned one is encoded upright.
    assert originals["phone/o1.jpg"] == open(os.path.join(photos, "phone", "o1.jpg"), "rb").read()
    assert all(Image.open(io.BytesIO(originals[f"phone/o{o}.jpg"])).getexif().get(
        transforms.EXIF_ORIENTATION, 1) == 1 for o in range(2, 9))
    assert manifest["input"]["exif_orientation"] == {
        "applied": True, "turned_upright": 7, "per_orientation": {str(o): 1 for o in range(2, 9)}}


def test_exif_orientation_off_keeps_the_stored_pixels(tmp_path):
    upright = upright_photo()
    photos = phone_photos(tmp_path / "photos", upright)
    manifest = run_job(photos, tmp_path / "out", CHAIN, copies=1, num_shards=1,
                       exif_orientation=False)
    assert manifest["input"]["exif_orientation"]["turned_upright"] == 0
    assert manifest["config"]["exif_orientation"] is False
    for row in read_outputs(tmp_path / "out"):
        o = int(row["source_id"][len("phone/o"):-len(".jpg")])
        stored = transforms.upright(upright, INVERSE[o]).astype(np.float32)
        assert row["image"].shape == stored.shape
        assert np.abs(row["image"].astype(np.float32) - stored).mean() < 8, row["source_id"]


def test_upright_turns_as_pillow_does():
    image = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    for o in range(1, 9):
        exif = Image.Exif()
        exif[transforms.EXIF_ORIENTATION] = o
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", exif=exif.tobytes())
        with Image.open(buffer) as stored:
            stored.load()
            assert np.array_equal(np.asarray(ImageOps.exif_transpose(stored)),
                                  transforms.upright(image, o)), o


def test_boxes_of_a_turned_photo_are_those_drawn_on_the_photo_as_shown(tmp_path):
    """A YOLO dataset labelled on the photo as a viewer shows it (a labelling tool's view):
    the photo is stored turned (EXIF orientation 6); its box comes out where it was drawn."""
    import tensorflow as tf
    upright = upright_photo()
    root = tmp_path / "yolo"
    os.makedirs(root / "images")
    os.makedirs(root / "labels")
    (root / "data.yaml").write_text("names:\n  0: marker\n")
    exif = Image.Exif()
    exif[transforms.EXIF_ORIENTATION] = 6
    Image.fromarray(transforms.upright(upright, INVERSE[6])).save(
        root / "images" / "photo.jpg", quality=95, exif=exif.tobytes())
    # The red marker: columns 3-20, rows 2-12 of the 64 x 40 photo as shown.
    (root / "labels" / "photo.txt").write_text(
        f"0 {11.5 / 64:.6f} {7 / 40:.6f} {17 / 64:.6f} {10 / 40:.6f}\n")
    manifest = run_job(str(root), tmp_path / "out", copies=0, format="png", num_shards=1)
    assert manifest["counts"]["written"] == 1, manifest["errors_by_reason"]
    record = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" / (
        manifest["output"]["shards"][0])))))
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    box = [feature[f"image/object/bbox/{k}"].float_list.value[0]
           for k in ("ymin", "xmin", "ymax", "xmax")]
    np.testing.assert_allclose(box, [2 / 40, 3 / 64, 12 / 40, 20 / 64], atol=1e-4)
    image = tf.io.decode_png(feature["image/encoded"].bytes_list.value[0]).numpy()
    assert image.shape == upright.shape
    assert image[2:12, 3:20, 0].mean() > 200 and image[2:12, 3:20, 1].mean() < 60  # the marker
