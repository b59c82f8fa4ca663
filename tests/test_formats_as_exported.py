"""Datasets as labelling tools export them, where an audit found labels silently wrong or lost:
keypoints' left and right sides through a mirror, boxes beyond the image, annotations of no
listed image, class ids without a name, class names in classes.txt, split names in capitals."""
import io
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from cli import main
from pipeline import progress, targets
from pipeline.errors import ConfigError, UserError
from pipeline.run import NothingWritten
from tests.conftest import assert_accounted, run_job
from tests.test_formats import FLIP, outputs, put

# A face seen from the front: nose, left eye, right eye (the subject's sides, as COCO names
# them), each a dot of its own colour.
DOTS = {"nose": ((48, 40), (0, 200, 0)), "left_eye": ((30, 20), (220, 0, 0)),
        "right_eye": ((66, 20), (0, 0, 220))}
WIDTH, HEIGHT = 96, 64


def face_png():
    image = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for (x, y), colour in DOTS.values():
        draw.rectangle([x - 3, y - 3, x + 3, y + 3], fill=colour)
    data = io.BytesIO()
    image.save(data, "PNG")
    return data.getvalue()


def colour_under_each_keypoint(row):
    """The colour of the pixel under each keypoint slot of the first object."""
    height, width = row["image"].shape[:2]
    xs, ys = row["image/object/keypoint/x"] * width, row["image/object/keypoint/y"] * height
    return [tuple(int(v) for v in row["image"][int(y), int(x)]) for x, y in zip(xs, ys)]


def assert_slots_follow(out, order):
    """Copy 0's keypoint slots lie on their own dots; copy 1, mirrored, has slot i on the dot
    of keypoint order[i], mirrored: its left eye is the eye that now shows where a left eye
    shows (the mirrored right eye), as a model learning sides must see it."""
    rows = outputs(out)
    assert {int(r["augment/copy_index"]) for r in rows} == {0, 1}
    colours = [colour for _, colour in DOTS.values()]
    for row in rows:
        found = colour_under_each_keypoint(row)
        expected = [colours[i] for i in (order if row["augment/copy_index"] else range(3))]
        assert np.abs(np.subtract(found, expected)).max() < 40, (row["augment/copy_index"],
                                                                 found, expected)


def write_coco_face(root, names=tuple(DOTS), extra=None):
    put(os.path.join(root, "face.png"), face_png())
    keypoints = [v for (x, y), _ in DOTS.values() for v in (x + 0.5, y + 0.5, 2)]
    data = {"images": [{"id": 1, "file_name": "face.png", "width": WIDTH, "height": HEIGHT}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [20, 10, 56, 40],
                             "area": 56 * 40, "iscrowd": 0, "keypoints": keypoints,
                             "num_keypoints": 3}],
            "categories": [{"id": 1, "name": "face", "keypoints": list(names)}]}
    for key, values in (extra or {}).items():
        data[key] += values
    put(os.path.join(root, "annotations.json"), json.dumps(data))
    return str(root)


def errors_of(out):
    with open(os.path.join(out, "errors.jsonl")) as f:
        return {e["key"]: e for e in map(json.loads, f)}


def test_yolo_flip_idx_swaps_the_sides_of_a_mirrored_copy(tmp_path):
    root = tmp_path / "pose"
    put(os.path.join(root, "data.yaml"),
        "kpt_shape: [3, 3]\nflip_idx: [0, 2, 1]\nnames: {0: face}\n")
    put(os.path.join(root, "images", "face.png"), face_png())
    values = [v for (x, y), _ in DOTS.values() for v in ((x + .5) / WIDTH, (y + .5) / HEIGHT, 2)]
    put(os.path.join(root, "labels", "face.txt"),
        "0 0.5 0.47 0.58 0.62 " + " ".join(f"{v:.5f}" for v in values) + "\n")
    out = tmp_path / "out"
    manifest = run_job(str(root), out, FLIP, copies=1, format="png")
    assert manifest["config"]["target_rules"]["keypoint_flip"] == [0, 2, 1]
    assert_slots_follow(out, [0, 2, 1])

    put(os.path.join(root, "data.yaml"), "kpt_shape: [3, 3]\nflip_idx: [0, 2]\nnames: [face]\n")
    with pytest.raises(UserError, match="flip_idx .* is not an order of the 3 keypoints"):
        run_job(str(root), tmp_path / "out2", FLIP, copies=1)


def test_coco_keypoints_named_left_and_right_swap_in_a_mirrored_copy(tmp_path):
    out = tmp_path / "out"
    manifest = run_job(write_coco_face(tmp_path / "coco"), out, FLIP, copies=1, format="png")
    assert manifest["config"]["target_rules"]["keypoint_flip"] == [0, 2, 1]
    assert targets.MIRRORED_IN_PLACE not in manifest["targets"]
    assert_slots_follow(out, [0, 2, 1])
    # The config's order wins over the names' (here: keep every slot, as asked).
    run_job(str(tmp_path / "coco"), tmp_path / "kept", FLIP, copies=1, format="png",
            target_rules=targets.Rules(keypoint_flip=(0, 1, 2)))
    assert_slots_follow(tmp_path / "kept", [0, 1, 2])


def test_a_mirror_with_keypoints_and_no_flip_order_is_counted_and_warned(tmp_path, caplog):
    out = tmp_path / "out"
    manifest = run_job(write_coco_face(tmp_path / "coco", names=("a", "b", "c")), out, FLIP,
                       copies=2, format="png")
    assert manifest["config"]["target_rules"]["keypoint_flip"] == []
    assert manifest["targets"][targets.MIRRORED_IN_PLACE] == 2
    assert "2 mirrored copies kept each keypoint in its slot" in caplog.text
    assert "set targets.keypoint_flip" in caplog.text


def test_a_keypoint_flip_of_another_length_is_refused_before_the_run(tmp_path):
    root = write_coco_face(tmp_path / "coco")
    rules = targets.Rules(keypoint_flip=(0, 2, 1, 4, 3))
    with pytest.raises(ConfigError, match="targets.keypoint_flip: orders 5 keypoints, but the "
                                          "inputs' objects have 3 each"):
        run_job(root, tmp_path / "out", FLIP, copies=1, target_rules=rules)
    assert not os.path.exists(tmp_path / "out")
    config = tmp_path / "c.yaml"
    config.write_text(f"input: {root}\noutput: {tmp_path / 'out'}\naugment:\n  chain:\n"
                      "    - op: tf.image.flip_left_right\n"
                      "targets: {keypoint_flip: [0, 2, 1, 4, 3]}\n")
    done = CliRunner().invoke(main, ["validate", str(config)])
    assert done.exit_code == 2 and "orders 5 keypoints" in done.output, done.output
    # TFRecords say their keypoints only when read: each record is an error record, saying so.
    run_job(root, tmp_path / "records", copies=0)
    out = tmp_path / "again"
    with pytest.raises(NothingWritten):  # (its one input failed)
        run_job(str(tmp_path / "records" / "*.tfrecord"), out, FLIP, copies=1,
                target_rules=rules)
    (error,) = errors_of(out).values()
    assert "targets.keypoint_flip orders 5 keypoints, but this input's objects have 3" in \
        error["message"]


def test_coco_boxes_beyond_the_image_orphan_annotations_and_odd_polygons(tmp_path, caplog):
    root = tmp_path / "coco"
    write_coco_face(root, extra={
        "images": [{"id": 2, "file_name": "past.png", "width": WIDTH, "height": HEIGHT},
                   {"id": 3, "file_name": "edge.png", "width": WIDTH, "height": HEIGHT},
                   {"id": 4, "file_name": "odd.png", "width": WIDTH, "height": HEIGHT}],
        "annotations": [
            {"id": 8, "image_id": 2, "category_id": 1, "bbox": [60, 10, 60, 20]},
            {"id": 9, "image_id": 3, "category_id": 1, "bbox": [60, 10, WIDTH - 60 + 0.4, 20]},
            {"id": 10, "image_id": 4, "category_id": 1, "bbox": [10, 10, 20, 20],
             "segmentation": [[10, 10, 30, 10, 30]]},
            {"id": 11, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]}]})
    for name in ("past.png", "edge.png", "odd.png"):
        put(os.path.join(root, name), face_png())
    out = tmp_path / "out"
    manifest = run_job(str(root), out, FLIP, copies=1, format="png")
    assert_accounted(manifest)
    errors = errors_of(out)
    assert set(errors) == {"past.png", "odd.png"}
    assert errors["past.png"]["reason"] == "box outside the image"
    assert "annotation 8 is the box (60, 10) - (120, 30) pixels, beyond the 96x64 image" in \
        errors["past.png"]["message"] and "annotations.json" in errors["past.png"]["message"]
    assert "annotation 10 has the polygon [10, 10, 30, 10, 30]; expected x, y pairs" in \
        errors["odd.png"]["message"]
    edge = next(r for r in outputs(out) if r["key"] == "edge.png" and r["augment/copy_index"] == 0)
    assert edge["image/object/bbox/xmax"][0] == 1.0  # 0.4 pixel over, as exports round: kept
    assert "1 annotation names image ids that are not in its images list (99): left out" in \
        caplog.text


def test_coco_images_are_found_when_the_first_one_is_missing(tmp_path):
    root = tmp_path / "coco"
    write_coco_face(root, extra={"images": [
        {"id": 2, "file_name": "second.png", "width": WIDTH, "height": HEIGHT}]})
    put(os.path.join(root, "images", "face.png"), face_png())  # (beside the JSON in images/)
    put(os.path.join(root, "images", "second.png"), face_png())
    os.remove(os.path.join(root, "face.png"))
    data = json.loads((root / "annotations.json").read_text())
    data["images"].insert(0, {"id": 3, "file_name": "gone.png", "width": 9, "height": 9})
    (root / "annotations.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    manifest = run_job(str(root), out, copies=0)
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["errored"] == 1
    assert errors_of(out)["images/gone.png"]["stage"] == "read"


def test_yolo_class_ids_without_a_name_and_names_from_classes_txt(tmp_path, caplog):
    root = tmp_path / "yolo"
    put(os.path.join(root, "labels", "classes.txt"), "red\nblue\n")
    for name, line in (("a", "1 0.5 0.5 0.2 0.2"), ("b", "5 0.5 0.5 0.2 0.2"),
                       ("c", "0 0.95 0.5 0.3 0.2")):
        put(os.path.join(root, "images", f"{name}.png"), face_png())
        put(os.path.join(root, "labels", f"{name}.txt"), line + "\n")
    out = tmp_path / "out"
    manifest = run_job(str(root), out, copies=0)
    assert manifest["input"]["label_map"] == {"red": 0, "blue": 1}
    (row,) = outputs(out)
    assert list(row["image/object/class/text"]) == [b"blue"]
    errors = errors_of(out)
    assert "labels/b.txt line 1: class 5 has no name (the names are of classes 0-1)" in \
        errors["images/b.png"]["message"]
    assert errors["images/c.png"]["reason"] == "box outside the image"
    assert "labels/c.txt: line 1 is the box" in errors["images/c.png"]["message"]
    os.remove(os.path.join(root, "labels", "classes.txt"))
    manifest = run_job(str(root), tmp_path / "unnamed", copies=0)
    assert manifest["counts"]["written"] == 2  # class ids only: 1 and 5
    assert "no class names for the YOLO labels" in caplog.text


def test_split_names_in_a_manifest_are_read_in_lower_case(tmp_path):
    for name in ("a", "b", "c"):
        put(os.path.join(tmp_path, "data", f"{name}.png"), face_png())
    put(os.path.join(tmp_path, "data", "labels.csv"),
        "path,label,split\na.png,x,Train\nb.png,x,TRAIN\nc.png,x,Val\n")
    out = tmp_path / "out"
    manifest = run_job(str(tmp_path / "data" / "labels.csv"), out, copies=1)
    per_split = manifest["counts"]["per_split"]
    assert set(per_split) == {"train", "val"}, per_split
    assert per_split["train"]["augmented"] and per_split["train"]["outputs"] == 4


def test_messages_name_the_mask_file_the_exif_turn_and_the_image_listed_twice(tmp_path):
    root = tmp_path / "segmentation"
    os.makedirs(root / "masks")
    for name, mask in (("a", Image.new("L", (32, 32))), ("b", Image.new("RGB", (WIDTH, HEIGHT)))):
        put(os.path.join(root, "images", f"{name}.png"), face_png())
        mask.save(os.path.join(root, "masks", f"{name}.png"))
    put(os.path.join(root, "images", "c.png"), face_png())
    Image.new("L", (WIDTH, HEIGHT)).save(os.path.join(root, "masks", "c.png"))
    out = tmp_path / "out"
    manifest = run_job(str(root), out, FLIP, copies=1)
    assert manifest["counts"]["written"] == 1
    errors = errors_of(out)
    assert "masks/a.png is 32x32, the image 96x64" in errors["images/a.png"]["message"]
    assert "masks/b.png is a RGB image" in errors["images/b.png"]["message"]
    assert "turned into indices" in errors["images/b.png"]["message"]
    assert progress.summary(manifest)[1] == "  written: 1 input, errored: 2"

    # A phone photo stored on its side, its COCO size that of the stored pixels.
    coco = tmp_path / "coco"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = io.BytesIO()
    Image.open(io.BytesIO(face_png())).save(photo, "JPEG", exif=exif)
    write_coco_face(coco)
    put(os.path.join(coco, "face.png"), photo.getvalue())  # (a JPEG by its bytes)
    with pytest.raises(NothingWritten):
        run_job(str(coco), tmp_path / "turned", copies=1)
    message = errors_of(tmp_path / "turned")["face.png"]["message"]
    assert "says the image is 96x64, but" in message and "is 64x96: not rescaled (the " \
        "photo's EXIF orientation turns it upright" in message

    data = json.loads((coco / "annotations.json").read_text())
    data["images"].append({**data["images"][0], "id": 2})
    (coco / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="annotations.json: images 1 and 2 are both 'face.png'"):
        run_job(str(coco), tmp_path / "twice", copies=1)


def test_what_a_dataset_holds_beside_its_images_is_warned_not_dropped_silently(tmp_path, caplog):
    yolo = tmp_path / "yolo"
    put(os.path.join(yolo, "data.yaml"), "names: [face]\n")
    put(os.path.join(yolo, "images", "a.png"), face_png())
    for name in ("a", "gone"):
        put(os.path.join(yolo, "labels", f"{name}.txt"), "0 0.5 0.5 0.2 0.2\n")
    run_job(str(yolo), tmp_path / "out-yolo", copies=0)
    assert "1 YOLO label file has no image (" in caplog.text and "labels/gone.txt" in caplog.text

    masks = tmp_path / "masks"
    put(os.path.join(masks, "images", "a.png"), face_png())
    os.makedirs(masks / "masks")
    for name in ("a", "gone"):
        Image.new("L", (WIDTH, HEIGHT)).save(os.path.join(masks, "masks", f"{name}.png"))
    run_job(str(masks), tmp_path / "out-masks", copies=0)
    assert "1 mask has no image (" in caplog.text and "masks/gone.png" in caplog.text

    coco = tmp_path / "coco"
    write_coco_face(coco)
    data = json.loads((coco / "annotations.json").read_text())
    data["categories"][0]["id"] = data["annotations"][0]["category_id"] = 0
    (coco / "annotations.json").write_text(json.dumps(data))
    run_job(str(coco), tmp_path / "out-coco", copies=0)
    assert "category id 0 ('face') is written as label 0" in caplog.text


def test_a_voc_object_without_a_name_is_its_images_error_record(tmp_path):
    root = tmp_path / "voc"
    for name, objects in (("a", "<name>face</name>"), ("b", "")):
        put(os.path.join(root, "JPEGImages", f"{name}.png"), face_png())
        put(os.path.join(root, "Annotations", f"{name}.xml"),
            f"<annotation><filename>{name}.png</filename><size><width>{WIDTH}</width><height>"
            f"{HEIGHT}</height><depth>3</depth></size><object>{objects}<bndbox><xmin>10</xmin>"
            "<ymin>10</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")
    out = tmp_path / "out"
    manifest = run_job(str(root), out, copies=0)
    assert manifest["input"]["label_map"] == {"face": 1}
    error = errors_of(out)["JPEGImages/b.png"]
    assert error["reason"] == "bad annotation" and "an object has no <name>" in error["message"]
