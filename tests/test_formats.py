"""Labelled datasets as labelling tools export them (pipeline/formats): COCO, YOLO, Pascal VOC,
image + mask folder pairs and CSV / JSON-lines manifests, each built here from the sample
photos and the hand-drawn outlines of sample_data/detection, expanded end to end and read back."""
import csv
import importlib.util
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

from cli import main
from pipeline.formats import coco
from tests.conftest import ROOT, SAMPLE_IMAGES, assert_accounted, run_job

BOX_KEYS = ("ymin", "xmin", "ymax", "xmax")
SPEC = {"image/encoded": tf.io.FixedLenFeature((), tf.string),
        "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=b""),
        "image/class/label": tf.io.FixedLenFeature((), tf.int64, default_value=-1),
        "image/class/text": tf.io.FixedLenFeature((), tf.string, default_value=b""),
        "augment/copy_index": tf.io.FixedLenFeature((), tf.int64),
        "image/object/class/label": tf.io.VarLenFeature(tf.int64),
        "image/object/class/text": tf.io.VarLenFeature(tf.string),
        "image/object/mask": tf.io.VarLenFeature(tf.string),
        "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
        "image/object/difficult": tf.io.VarLenFeature(tf.int64),
        "image/object/keypoint/x": tf.io.VarLenFeature(tf.float32),
        "image/object/keypoint/y": tf.io.VarLenFeature(tf.float32),
        "image/object/keypoint/visibility": tf.io.VarLenFeature(tf.int64),
        "image/segmentation/class/encoded": tf.io.VarLenFeature(tf.string),
        **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32) for k in BOX_KEYS}}
FLIP = [{"op": "tf.image.flip_left_right"}]


def _outlines():
    """sample_data/make_detection_data.py's outlines: photo -> [(class, kind, points)]."""
    spec = importlib.util.spec_from_file_location(
        "make_detection_data", os.path.join(ROOT, "sample_data", "make_detection_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DETECTION = _outlines()


def scene():
    """The OD API sample records: photo name -> (bytes, width, height, [(class, name,
    (x0, y0, x1, y1) pixels, polygon points)])."""
    out = {}
    path = os.path.join(ROOT, "sample_data", "detection", "objects.tfrecord")
    for record in tf.data.TFRecordDataset(path):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        name = f["image/filename"].bytes_list.value[0].decode()
        width, height = f["image/width"].int64_list.value[0], f["image/height"].int64_list.value[0]
        boxes = np.stack([f[f"image/object/bbox/{k}"].float_list.value for k in BOX_KEYS], 1)
        boxes = np.round(boxes * [height, width, height, width]).astype(int)
        objects = []
        for (label, kind, points), box in zip(DETECTION.ANNOTATIONS[name], boxes):
            ymin, xmin, ymax, xmax = (int(v) for v in box)
            if kind == "ellipse":  # as a polygon of 16 points on the ellipse
                (x0, y0), (x1, y1) = points
                t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                points = np.stack([(x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(t),
                                   (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(t)], 1).tolist()
            objects.append((label, DETECTION.CLASSES[label], (xmin, ymin, xmax, ymax), points))
        out[name] = (f["image/encoded"].bytes_list.value[0], width, height, objects)
    return out


def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_coco(root, photos, with_masks=True):
    images, annotations = [], []
    for image_id, (name, (data, width, height, objects)) in enumerate(sorted(photos.items()), 1):
        put(os.path.join(root, "images", name), data)
        images.append({"id": image_id, "file_name": f"images/{name}", "width": width,
                       "height": height})
        for label, _, (x0, y0, x1, y1), points in objects:
            annotation = {"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0],
                          "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            if with_masks:
                annotation["segmentation"] = [np.ravel(points).tolist()]
            annotations.append(annotation)
    categories = [{"id": i, "name": n} for i, n in DETECTION.CLASSES.items()]
    put(os.path.join(root, "annotations.json"), json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return str(root)


def write_yolo(root, photos):
    names = {i - 1: n for i, n in DETECTION.CLASSES.items()}
    put(os.path.join(root, "data.yaml"), "names:\n" + "".join(
        f"  {i}: {n}\n" for i, n in names.items()))
    for name, (data, width, height, objects) in photos.items():
        put(os.path.join(root, "images", name), data)
        put(os.path.join(root, "labels", os.path.splitext(name)[0] + ".txt"), "".join(
            f"{label - 1} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
            f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}\n"
            for label, _, (x0, y0, x1, y1), _ in objects))
    return str(root)


def voc_xml(filename, width, height, objects, difficult=()):
    return (f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            + "".join(f"<object><name>{text}</name><pose>Unspecified</pose>"
                      f"<truncated>0</truncated><difficult>{int(i in difficult)}</difficult>"
                      f"<bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax>"
                      f"<ymax>{y1}</ymax></bndbox></object>"
                      for i, (_, text, (x0, y0, x1, y1), _) in enumerate(objects))
            + "</annotation>")


def write_voc(root, photos):
    for name, (data, width, height, objects) in photos.items():
        flat = name.replace("/", "_")
        put(os.path.join(root, "JPEGImages", flat), data)
        put(os.path.join(root, "Annotations", os.path.splitext(flat)[0] + ".xml"),
            voc_xml(flat, width, height, objects))
    return str(root)


def outputs(out):
    files = sorted(p.path for p in os.scandir(out) if ".tfrecord" in p.name)
    rows = []
    for record in tf.data.TFRecordDataset(files):
        parsed = tf.io.parse_single_example(record, SPEC)
        row = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v).numpy()
               for k, v in parsed.items()}
        row["image"] = tf.io.decode_image(parsed["image/encoded"]).numpy()
        row["key"] = tf.train.Example.FromString(record.numpy()).features.feature[
            "image/source_id"].bytes_list.value[0].decode()
        row["boxes"] = np.stack([row[f"image/object/bbox/{k}"] for k in BOX_KEYS], 1)
        rows.append(row)
    return rows


def within_a_pixel(mask, expected):
    """Whether `mask` differs from `expected` only along its outline (by a pixel at most)."""
    def grow(m):
        padded = np.pad(m, 1)
        return np.max([padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0)
    inner = 1 - grow(1 - expected)
    return bool(np.all(mask <= grow(expected)) and np.all(inner <= mask) and mask.sum() > 0)


def pixel_boxes(row):
    height, width = row["image"].shape[:2]
    return row["boxes"] * [height, width, height, width]


def test_the_same_scene_from_coco_yolo_voc_and_od_api_gives_the_same_boxes(tmp_path):
    photos = scene()
    inputs = {"coco": write_coco(tmp_path / "coco", photos, with_masks=False),
              "yolo": write_yolo(tmp_path / "yolo", photos),
              "voc": write_voc(tmp_path / "voc", photos),
              "tfrecord": os.path.join(ROOT, "sample_data", "detection", "objects.tfrecord")}
    boxes = {}
    for kind, path in inputs.items():
        manifest = run_job(path, tmp_path / f"out-{kind}", FLIP, copies=1, format="png")
        assert manifest["input"]["kind"] == kind  # told from the files
        assert_accounted(manifest)
        assert manifest["counts"]["written"] == 4 and manifest["counts"]["errored"] == 0
        for row in outputs(tmp_path / f"out-{kind}"):
            # the photo, whatever the key (COCO images/portraits/x.jpg, VOC portraits_x.jpg;
            # the TFRecord keeps its image/filename)
            seen = (row["image/filename"].decode() or row["key"]).replace("/", "_")
            photo = next(n for n in photos if n.replace("/", "_") in seen)
            boxes[kind, photo, int(row["augment/copy_index"])] = (
                pixel_boxes(row), list(row["image/object/class/text"]))
    for (kind, photo, copy), (found, texts) in boxes.items():
        _, width, height, objects = photos[photo]
        truth = np.array([(y0, x0, y1, x1) for _, _, (x0, y0, x1, y1), _ in objects], float)
        if copy == 1:  # mirrored
            truth[:, [1, 3]] = width - truth[:, [3, 1]]
        assert np.abs(found - truth).max() <= 1.0, (kind, photo, copy)
        assert texts == [text.encode() for _, text, _, _ in objects], (kind, photo)


def rle_string(mask):
    """COCO's compressed RLE of a mask (the inverse of coco.rle_counts), for the test data."""
    flat = np.asarray(mask, np.uint8).T.ravel()
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        counts = [0] + counts
    text = ""
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = value & 0x1F
            value >>= 5
            more = value != -1 if c & 0x10 else value != 0
            text += chr((c | (0x20 if more else 0)) + 48)
    return text, counts


def test_polygon_masks_are_the_pixels_whose_centre_is_inside():
    """formats.polygon_mask against the rule it states, pixel by pixel: a centre (x + 0.5,
    y + 0.5) is inside when an odd number of the polygon's edges cross its row at or left of
    it (each edge half-open in y); any polygon of the list covers it. Random polygons of 3 to
    8 points, half on pixel edges and centres, some outside the frame."""
    from pipeline import formats

    def by_rule(polygons, height, width):
        mask = np.zeros((height, width), np.uint8)
        for polygon in polygons:
            points = np.asarray(polygon, np.float64).reshape(-1, 2)
            if len(points) < 3:
                continue
            for y in range(height):
                cy = y + 0.5
                crossings = []
                for (x0, y0), (x1, y1) in zip(points, np.roll(points, -1, 0)):
                    if (y0 <= cy) != (y1 <= cy):
                        crossings.append(x0 + (cy - y0) * (x1 - x0) / (y1 - y0))
                for x in range(width):
                    if sum(c <= x + 0.5 for c in crossings if np.isfinite(c)) % 2:
                        mask[y, x] = 1
        return mask
    rng = np.random.default_rng(3)
    for _ in range(150):
        height, width = (int(v) for v in rng.integers(1, 24, 2))
        polygons = []
        for _ in range(rng.integers(0, 3)):
            points = rng.uniform(-4, max(height, width) + 4, (rng.integers(3, 9), 2))
            if rng.random() < 0.5:
                points = np.round(points * 2) / 2
            polygons.append(points.ravel().tolist())
        got = formats.polygon_mask(polygons, height, width)
        assert got.dtype == np.uint8 and got.shape == (height, width)
        np.testing.assert_array_equal(got, by_rule(polygons, height, width),
                                      err_msg=str(polygons))
    square = formats.polygon_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 8)  # along pixel edges
    assert square.sum() == 12 and square[1:4, 2:6].all()


def test_rle_counts_round_trip_and_reject_bad_runs():
    rng = np.random.default_rng(0)
    mask = (rng.random((13, 17)) > 0.6).astype(np.uint8)
    text, counts = rle_string(mask)
    assert coco.rle_counts(text) == counts
    assert np.array_equal(coco.rle_mask(text, 13, 17), mask)
    assert np.array_equal(coco.rle_mask(counts, 13, 17), mask)
    with pytest.raises(ValueError, match="cover"):
        coco.rle_mask(counts[:-1], 13, 17)


def test_coco_official_layout_masks_rle_keypoints_crowd_and_sizes(tmp_path):
    """annotations/instances_val2017.json beside val2017/: polygons, both RLE forms, keypoints,
    a crowd flag and non-contiguous category ids; a size that disagrees is an error record."""
    root = tmp_path / "coco"
    photo = os.path.join(SAMPLE_IMAGES, "objects", "coffee_01.jpg")
    with Image.open(photo) as image:
        width, height = image.size
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        put(os.path.join(root, "val2017", name), open(photo, "rb").read())
    square = np.zeros((height, width), np.uint8)
    square[10:30, 20:50] = 1
    blob = np.zeros((height, width), np.uint8)
    blob[40:70, 60:75] = 1
    text, counts = rle_string(blob)
    categories = [{"id": 3, "name": "cup"}, {"id": 90, "name": "person",
                                             "keypoints": ["nose", "tail"]}]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [20, 10, 30, 20], "area": 600,
         "iscrowd": 0, "segmentation": [[20, 10, 50, 10, 50, 30, 20, 30]]},
        {"id": 2, "image_id": 7, "category_id": 90, "bbox": [60, 40, 15, 30], "area": 450,
         "iscrowd": 1, "segmentation": {"size": [height, width], "counts": text},
         "keypoints": [65, 45, 2, 0, 0, 0], "num_keypoints": 1},
        {"id": 3, "image_id": 8, "category_id": 90, "bbox": [60, 40, 15, 30], "area": 450,
         "iscrowd": 1, "segmentation": {"size": [height, width], "counts": counts}}]
    images = [{"id": 7, "file_name": "a.jpg", "width": width, "height": height},
              {"id": 8, "file_name": "b.jpg", "width": width, "height": height},
              {"id": 9, "file_name": "c.jpg", "width": width + 1, "height": height}]
    put(os.path.join(root, "annotations", "instances_val2017.json"), json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    out = tmp_path / "out"
    manifest = run_job(str(root / "annotations" / "instances_val2017.json"), out, FLIP,
                       copies=1, format="png", augment_splits=("val",))  # (a val split)
    assert manifest["input"]["kind"] == "coco"
    assert manifest["input"]["label_map"] == {"cup": 3, "person": 90}
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["errored"] == 1
    errors = [json.loads(line) for line in open(out / "errors.jsonl")]
    assert errors[0]["key"] == "val2017/c.jpg" and "not rescaled" in errors[0]["message"]
    assert errors[0]["reason"] == "annotation size differs from the image"
    rows = {(r["key"], int(r["augment/copy_index"])): r for r in outputs(out)}
    a = rows["val2017/a.jpg", 0]
    assert list(a["image/object/class/label"]) == [3, 90]
    assert list(a["image/object/class/text"]) == [b"cup", b"person"]
    assert list(a["image/object/is_crowd"]) == [0, 1]
    masks = [np.asarray(Image.open(io.BytesIO(m))) for m in a["image/object/mask"]]
    assert np.array_equal(masks[1], blob)  # RLE: exact
    assert within_a_pixel(masks[0], square)  # a polygon
    assert np.allclose(pixel_boxes(a), [[10, 20, 30, 50], [40, 60, 70, 75]], atol=1)
    # 2 keypoints per object: the cup has none, the person its nose
    assert np.allclose(a["image/object/keypoint/x"][2] * width, 65)
    assert np.allclose(a["image/object/keypoint/y"][2] * height, 45)
    assert list(a["image/object/keypoint/visibility"]) == [0, 0, 2, 0]
    b = rows["val2017/b.jpg", 0]  # uncompressed RLE
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(b["image/object/mask"][0]))), blob)
    flipped = np.asarray(Image.open(io.BytesIO(rows["val2017/b.jpg", 1]["image/object/mask"][0])))
    assert np.array_equal(flipped, blob[:, ::-1])


def test_yolo_segment_with_splits_and_a_missing_label_file(tmp_path):
    root = tmp_path / "yolo"
    photo = open(os.path.join(SAMPLE_IMAGES, "objects", "rocket_01.jpg"), "rb").read()
    with Image.open(io.BytesIO(photo)) as image:
        width, height = image.size
    put(os.path.join(root, "data.yaml"), "path: .\ntrain: images/train\nval: images/val\n"
        "names: [rocket, tower]\n")
    put(os.path.join(root, "images", "train", "a.jpg"), photo)
    put(os.path.join(root, "images", "train", "b.jpg"), photo)  # no label file: no objects
    put(os.path.join(root, "images", "val", "c.jpg"), photo)
    polygon = [(78, 32), (84, 32), (86, 103), (76, 103)]
    put(os.path.join(root, "labels", "train", "a.txt"),
        "0 " + " ".join(f"{x / width:.6f} {y / height:.6f}" for x, y in polygon) + "\n"
        f"1 {13.5 / width:.6f} {51.5 / height:.6f} {25 / width:.6f} {103 / height:.6f}\n")
    put(os.path.join(root, "labels", "val", "c.txt"), "1 0.5 0.5 0.2 0.4\n")
    out = tmp_path / "out"
    manifest = run_job(str(root), out, FLIP, copies=1, format="png")
    assert manifest["input"]["kind"] == "yolo"
    assert manifest["input"]["label_map"] == {"rocket": 0, "tower": 1}
    assert_accounted(manifest)
    rows = {(r["key"], int(r["augment/copy_index"])): r for r in outputs(out)}
    a = rows["images/train/a.jpg", 0]
    assert list(a["image/object/class/text"]) == [b"rocket", b"tower"]
    assert np.allclose(pixel_boxes(a), [[32, 76, 103, 86], [0, 1, 103, 26]], atol=1)
    mask = np.asarray(Image.open(io.BytesIO(a["image/object/mask"][0])))
    expected = DETECTION.outline_mask("polygon", polygon, (width, height))
    assert within_a_pixel(mask, expected)
    assert len(rows["images/train/b.jpg", 0]["boxes"]) == 0  # no label file: no objects
    assert np.allclose(pixel_boxes(rows["images/val/c.jpg", 0]),
                       [[0.3 * height, 0.4 * width, 0.7 * height, 0.6 * width]], atol=1)
    # the splits data.yaml names: val is written untouched, in its own shards
    assert ("images/val/c.jpg", 1) not in rows and ("images/train/a.jpg", 1) in rows
    assert manifest["output"]["shards"] == ["augmented-train-00000-of-00001.tfrecord",
                                            "augmented-val-00000-of-00001.tfrecord"]


def test_yolo_pose_keypoints(tmp_path):
    root = tmp_path / "pose"
    photo = open(os.path.join(SAMPLE_IMAGES, "portraits", "chelsea_01.jpg"), "rb").read()
    put(os.path.join(root, "data.yaml"), "kpt_shape: [2, 3]\nnames: {0: cat}\n")
    put(os.path.join(root, "images", "a.jpg"), photo)
    put(os.path.join(root, "labels", "a.txt"), "0 0.5 0.5 0.5 0.5 0.25 0.5 2 0 0 0\n")
    out = tmp_path / "out"
    manifest = run_job(str(root), out, FLIP, copies=1, format="png")
    assert manifest["input"]["kind"] == "yolo" and manifest["counts"]["written"] == 1
    rows = {int(r["augment/copy_index"]): r for r in outputs(out)}
    assert np.allclose(rows[0]["image/object/keypoint/x"][0], 0.25, atol=0.01)
    assert np.allclose(rows[1]["image/object/keypoint/x"][0], 0.75, atol=0.01)
    assert np.allclose(rows[0]["image/object/keypoint/y"][0], 0.5, atol=0.01)
    assert list(rows[1]["image/object/keypoint/visibility"]) == [2, 0]


def test_voc_converts_one_based_pixels_and_keeps_difficult_with_a_label_map(tmp_path):
    root = tmp_path / "voc"
    photo = open(os.path.join(SAMPLE_IMAGES, "objects", "coffee_01.jpg"), "rb").read()
    with Image.open(io.BytesIO(photo)) as image:
        width, height = image.size
    objects = [(0, "cup", (18, 18, 120, 98), None), (0, "spoon", (79, 59, 99, 82), None)]
    put(os.path.join(root, "a.jpg"), photo)  # LabelImg: the XML beside its image
    put(os.path.join(root, "a.xml"), voc_xml("a.jpg", width, height, objects, difficult={1}))
    put(os.path.join(root, "b.jpg"), photo)
    put(os.path.join(root, "b.xml"), voc_xml("b.jpg", width + 2, height, objects))
    out = tmp_path / "out"
    manifest = run_job(str(root), out, copies=0, format="png",
                       label_map=(("cup", 44), ("spoon", 45)))
    assert manifest["input"]["kind"] == "voc"
    assert manifest["counts"]["written"] == 1 and manifest["counts"]["errored"] == 1
    [row] = outputs(out)
    assert np.allclose(pixel_boxes(row), [[18, 18, 98, 120], [59, 79, 82, 99]], atol=1e-4)
    assert list(row["image/object/class/label"]) == [44, 45]
    assert list(row["image/object/difficult"]) == [0, 1]


def _jpeg(width=32, height=24):
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="JPEG")
    return out.getvalue()


def test_a_voc_xml_that_cannot_be_used_is_its_images_error_record_and_the_run_goes_on(tmp_path):
    """An object without a bndbox, a coordinate that is not a number, an XML that does not
    parse: each is that image's error record (they stopped the run, exit 2); the rest is
    written. The class names of an XML that parses count for the label map."""
    voc = tmp_path / "VOC2012"
    cup = [(0, "cup", (4, 4, 20, 16), None)]
    xmls = {"a": voc_xml("a.jpg", 32, 24, cup),
            "b": voc_xml("b.jpg", 32, 24, cup).replace(
                "</annotation>", "<object><name>spoon</name><difficult>0</difficult></object>"
                "</annotation>"),
            "c": voc_xml("c.jpg", 32, 24, cup).replace("<xmax>20</xmax>", "<xmax>20px</xmax>"),
            "d": voc_xml("d.jpg", 32, 24, cup)[:-len("</annotation>")],
            "e": voc_xml("e.jpg", 32, 24, cup)}
    for name, xml in xmls.items():
        put(str(voc / "JPEGImages" / f"{name}.jpg"), _jpeg())
        put(str(voc / "Annotations" / f"{name}.xml"), xml)
    out = tmp_path / "out"
    manifest = run_job(str(voc), out, copies=0, format="png")
    assert_accounted(manifest)
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["errored"] == 3
    assert manifest["input"]["label_map"] == {"cup": 1, "spoon": 2}
    errors = {e["key"]: e for e in map(json.loads, open(out / "errors.jsonl"))}
    assert sorted(errors) == ["JPEGImages/b.jpg", "JPEGImages/c.jpg", "JPEGImages/d.jpg"]
    assert {(e["stage"], e["reason"]) for e in errors.values()} == {("read", "bad annotation")}
    xml = str(voc / "Annotations")
    assert errors["JPEGImages/b.jpg"]["message"] == (
        f"{xml}/b.xml: object 'spoon' has no numeric bndbox xmin, ymin, xmax, ymax")
    assert errors["JPEGImages/c.jpg"]["message"] == (
        f"{xml}/c.xml: object 'cup' has no numeric bndbox xmin, ymin, xmax, ymax")
    assert errors["JPEGImages/d.jpg"]["message"].startswith(f"{xml}/d.xml: not valid XML: ")
    assert sorted(row["key"] for row in outputs(out)) == ["JPEGImages/a.jpg", "JPEGImages/e.jpg"]


def test_a_vocdevkit_image_without_its_xml_is_an_error_and_one_beside_labelimgs_has_a_split(
        tmp_path):
    """VOCdevkit has an XML for every image: one without it was written with no objects (its
    objects became background) and in no split; it is an error record. In LabelImg's layout an
    image without an XML has no objects, in the split ImageSets' lists give it."""
    voc = tmp_path / "VOC2012"
    cup = [(0, "cup", (4, 4, 20, 16), None)]
    for name in ("a", "b", "c"):
        put(str(voc / "JPEGImages" / f"{name}.jpg"), _jpeg())
    for name in ("a", "c"):
        put(str(voc / "Annotations" / f"{name}.xml"), voc_xml(f"{name}.jpg", 32, 24, cup))
    put(str(voc / "ImageSets" / "Main" / "train.txt"), "a\nb\n")
    put(str(voc / "ImageSets" / "Main" / "val.txt"), "c\n")
    out = tmp_path / "out"
    manifest = run_job(str(voc), out, copies=0, format="png")
    assert_accounted(manifest)
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["errored"] == 1
    [error] = [json.loads(line) for line in open(out / "errors.jsonl")]
    assert (error["key"], error["stage"], error["reason"]) == (
        "JPEGImages/b.jpg", "read", "no annotation")
    assert error["message"] == (f"{voc / 'JPEGImages' / 'b.jpg'} has no annotation: "
                                f"{voc / 'Annotations' / 'b.xml'} is missing")
    assert sorted(row["key"] for row in outputs(out)) == ["JPEGImages/a.jpg", "JPEGImages/c.jpg"]

    labelimg = tmp_path / "labelimg"
    for name in ("x", "y"):
        put(str(labelimg / f"{name}.jpg"), _jpeg())
    put(str(labelimg / "x.xml"), voc_xml("x.jpg", 32, 24, cup))
    put(str(labelimg / "ImageSets" / "Main" / "train.txt"), "x\n")
    put(str(labelimg / "ImageSets" / "Main" / "val.txt"), "y\n")
    out = tmp_path / "out_labelimg"
    manifest = run_job(str(labelimg), out, copies=0, format="png")
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["errored"] == 0
    assert {split: counts["written"] for split, counts in
            manifest["counts"]["per_split"].items()} == {"train": 1, "val": 1}
    rows = {row["key"]: row for row in outputs(out)}
    assert len(rows["x.jpg"]["boxes"]) == 1 and len(rows["y.jpg"]["boxes"]) == 0


def _palette_png(indices):
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 200, 30, 30, 30, 200, 30] + [0] * 759)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_image_and_mask_folders_give_class_masks_of_palette_indices(tmp_path):
    root = tmp_path / "seg"
    photo = open(os.path.join(SAMPLE_IMAGES, "objects", "coffee_01.jpg"), "rb").read()
    with Image.open(io.BytesIO(photo)) as image:
        width, height = image.size
    indices = np.zeros((height, width), np.uint8)
    indices[10:40, 5:60], indices[50:90, 70:100] = 1, 2
    for split in ("train", "val"):
        put(os.path.join(root, "images", split, "a.jpg"), photo)
        put(os.path.join(root, "masks", split, "a.png"), _palette_png(indices))
    put(os.path.join(root, "images", "train", "lonely.jpg"), photo)  # no mask: an error
    out = tmp_path / "out"
    manifest = run_job(str(root), out, FLIP, copies=1, format="png")
    assert manifest["input"]["kind"] == "masks"
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["errored"] == 1
    assert json.loads(open(out / "errors.jsonl").readline())["reason"] == \
        "no mask for the image"
    for row in outputs(out):
        mask = np.asarray(Image.open(io.BytesIO(row["image/segmentation/class/encoded"][0])))
        copy = int(row["augment/copy_index"])
        assert np.array_equal(mask, indices if copy == 0 else indices[:, ::-1])


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_manifest_gives_paths_labels_and_names(tmp_path, suffix):
    rows = [("objects/coffee_01.jpg", "cup"), ("portraits/chelsea_01.jpg", "cat"),
            ("objects/coffee_02.jpg", "cup")]
    for name, _ in rows:
        put(os.path.join(tmp_path, "data", name),
            open(os.path.join(SAMPLE_IMAGES, name), "rb").read())
    path = tmp_path / "data" / f"labels.{suffix}"
    if suffix == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows(rows)
    else:
        put(str(path), "".join(json.dumps({"path": p, "label": label}) + "\n"
                               for p, label in rows))
    out = tmp_path / "out"
    manifest = run_job(str(path), out, copies=0, format="png")
    assert manifest["input"]["kind"] == "manifest"
    assert manifest["counts"]["per_label"] == {"cat": 1, "cup": 2}
    found = {r["key"]: (int(r["image/class/label"]), r["image/class/text"]) for r in outputs(out)}
    assert found == {"objects/coffee_01.jpg": (1, b"cup"), "objects/coffee_02.jpg": (1, b"cup"),
                     "portraits/chelsea_01.jpg": (0, b"cat")}


def test_input_kind_overrides_and_a_chain_that_cannot_carry_masks_is_refused(tmp_path):
    photos = dict(list(scene().items())[:1])
    root = write_coco(tmp_path / "coco", photos)
    runner = CliRunner()
    result = runner.invoke(main, ["expand", "-i", root, "-o", str(tmp_path / "out"),
                                  "--input-kind", "folder", "--copies", "0"])
    assert result.exit_code == 0, result.output  # as a folder: the JSON is not an image
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest["input"]["kind"] == "folder" and manifest["counts"]["errored"] == 1
    put(str(tmp_path / "c.yaml"), "augment:\n  chain:\n    - op: keras.layers.RandomRotation\n"
        "      factor: 0.1\n")
    result = runner.invoke(main, ["expand", "-c", str(tmp_path / "c.yaml"), "-i", root,
                                  "-o", str(tmp_path / "out2"), "--input-kind", "coco"])
    assert result.exit_code == 2 and "instance masks" in result.output, result.output
    assert not os.path.exists(tmp_path / "out2")


def test_splits_stay_splits_only_train_is_augmented_and_each_has_its_shards(tmp_path):
    """A manifest's split column: train gets copies, val is written untouched (copy 0 only),
    each split in its own shards, counted apart; augment.splits chooses."""
    names = ["objects/coffee_01.jpg", "objects/coffee_02.jpg", "portraits/chelsea_01.jpg"]
    for name in names:
        put(os.path.join(tmp_path, "data", name),
            open(os.path.join(SAMPLE_IMAGES, name), "rb").read())
    put(str(tmp_path / "data" / "all.jsonl"), "".join(
        json.dumps({"path": n, "label": n.split("/")[0], "split": s}) + "\n"
        for n, s in zip(names, ["train", "train", "val"])))
    out = tmp_path / "out"
    manifest = run_job(str(tmp_path / "data" / "all.jsonl"), out, FLIP, copies=2,
                       keep_original=False)
    assert manifest["output"]["shards"] == ["augmented-train-00000-of-00001.tfrecord",
                                            "augmented-val-00000-of-00001.tfrecord"]
    assert manifest["counts"]["per_split"] == {
        "train": {"augmented": True, "written": 2, "outputs": 4},
        "val": {"augmented": False, "written": 1, "outputs": 1}}
    assert manifest["counts"]["written"] == 3
    assert_accounted(manifest)
    val = outputs_of(out / "augmented-val-00000-of-00001.tfrecord")
    assert [(r["key"], r["copy_index"]) for r in val] == [("portraits/chelsea_01.jpg", 0)]
    assert val[0]["image/encoded"] == open(os.path.join(SAMPLE_IMAGES, names[2]), "rb").read()
    train = outputs_of(out / "augmented-train-00000-of-00001.tfrecord")
    assert sorted(r["copy_index"] for r in train) == [1, 1, 2, 2]
    both = run_job(str(tmp_path / "data" / "all.jsonl"), tmp_path / "both", FLIP, copies=2,
                   augment_splits=("train", "val"))
    assert both["counts"]["per_split"]["val"] == {"augmented": True, "written": 1,
                                                  "outputs": 3}


def outputs_of(path):
    rows = []
    for record in tf.data.TFRecordDataset(str(path)):
        f = tf.train.Example.FromString(record.numpy()).features.feature
        rows.append({"key": f["image/source_id"].bytes_list.value[0].decode(),
                     "copy_index": f["augment/copy_index"].int64_list.value[0],
                     "image/encoded": f["image/encoded"].bytes_list.value[0]})
    return sorted(rows, key=lambda r: (r["key"], r["copy_index"]))


def test_overwrite_knows_the_split_shards_of_a_run_that_died(tmp_path):
    """A crashed run's lock names its split shards: --overwrite may delete exactly those."""
    from pipeline import run
    stale = json.loads(json.dumps({"prefix": "augmented", "compression": "none",
                                   "num_shards": (("train", 2), ("val", 1))}))
    names = ["augmented-train-00000-of-00002.tfrecord", "augmented-train-00001-of-00002.tfrecord",
             "augmented-val-00000-of-00001.tfrecord", "augmented-test-00000-of-00001.tfrecord"]
    assert run._ours(str(tmp_path), names, stale) == set(names[:3])


def test_discovery_finds_vocdevkit_splits_roboflow_yolo_and_says_what_it_cannot_use(tmp_path):
    """Discovery alone (no pipeline): VOCdevkit's ImageSets lists, a YOLO export with
    train/images beside train/labels, a COCO JSON beside an image it does not name."""
    from pipeline import config, sources
    photo = open(os.path.join(SAMPLE_IMAGES, "objects", "coffee_01.jpg"), "rb").read()
    objects = [(0, "cup", (18, 18, 120, 98), None)]
    voc = tmp_path / "VOC2012"
    for name in ("a", "b"):
        put(str(voc / "JPEGImages" / f"{name}.jpg"), photo)
        put(str(voc / "Annotations" / f"{name}.xml"), voc_xml(f"{name}.jpg", 150, 100, objects))
    put(str(voc / "Annotations" / "gone.xml"), voc_xml("gone.jpg", 150, 100, objects))
    put(str(voc / "ImageSets" / "Main" / "train.txt"), "a\n")
    put(str(voc / "ImageSets" / "Main" / "val.txt"), "b\n")

    def discover(path):
        return sources.discover(config.Job(input=(str(path),), output=str(tmp_path / "out"),
                                           chain=()))
    found = discover(voc)
    assert found.kind == "voc" and found.label_map == {"cup": 1}
    assert [(r.key, r.split) for r in found.refs] == [("JPEGImages/a.jpg", "train"),
                                                      ("JPEGImages/b.jpg", "val")]
    assert [(r.key, reason) for r, _, reason, _ in found.rejected] == [
        ("Annotations/gone.xml", "image of the annotation not found")]

    yolo = tmp_path / "roboflow"
    for split in ("train", "valid"):
        put(str(yolo / split / "images" / "a.jpg"), photo)
        put(str(yolo / split / "labels" / "a.txt"), "0 0.5 0.5 0.2 0.2\n")
    found = discover(yolo)
    assert found.kind == "yolo" and found.kinds == {"boxes"}
    assert [(r.key, r.split) for r in found.refs] == [("train/images/a.jpg", "train"),
                                                      ("valid/images/a.jpg", "valid")]

    coco_root = write_coco(tmp_path / "coco", dict(list(scene().items())[:1]))
    put(os.path.join(coco_root, "images", "stray.jpg"), photo)
    found = discover(coco_root)
    assert found.kind == "coco" and found.kinds == {"boxes", "instance masks"}
    assert [(r.key, reason) for r, _, reason, _ in found.rejected] == [
        ("images/stray.jpg", "image not in the COCO annotations")]
