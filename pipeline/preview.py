"""`augbatch preview`: a contact sheet of what `expand` would write for a few inputs.

The tiles come from the very code `expand` runs: the same discovery, and the same read, decode
and augment+encode DoFns, called directly without a pipeline; each tile is decoded from the
image bytes of an output record. So a tile's pixels are the pixels expand writes for that key
and copy (JPEG artefacts included).
"""
import dataclasses
import os
import random
from typing import List, Optional

import numpy as np

from pipeline.errors import UserError

MAX_SAMPLE_READ_FACTOR = 4  # TFRecords: read whole files until 4x the sample is in hand


@dataclasses.dataclass
class Row:
    """One sampled input: its original (copy 0) and its copies 1..N, as uint8 [H, W, C]."""
    key: str
    label_text: Optional[str] = None
    original: Optional[np.ndarray] = None
    copies: List[np.ndarray] = dataclasses.field(default_factory=list)
    error: Optional[str] = None  # "decode: not a readable image ..." when the input fails
    original_written: bool = True  # expand writes copy 0 (keep_original)
    ops: List[list] = dataclasses.field(default_factory=list)  # per copy: its augment/ops entries


# --- sampling and reading ------------------------------------------------------------------------

def _rng(seed):
    return random.Random(f"augbatch-preview:{seed}")


def sample(job, n):
    """Up to n inputs of `job` (Inputs, or ErrorRecords of those that fail to read), picked at
    random but always the same for the same job.seed; sorted by key."""
    from pipeline import sources
    from pipeline import transforms as T
    discovery = sources.discover(job)
    if not discovery.refs:
        raise UserError(f"no input images found in {', '.join(job.input)}",
                        hint="give a folder of images or TFRecord files with --input")
    rng = _rng(job.seed)
    read = reader(job, discovery)
    if discovery.kind != "tfrecord":
        refs = rng.sample(discovery.refs, min(n, len(discovery.refs)))
    else:
        # A TFRecord's records are only known by reading it: read whole files in a random
        # order until there is enough to pick from.
        refs = rng.sample(discovery.refs, len(discovery.refs))
    found = []
    for ref in refs:
        found.extend(_unwrap(out) for out in read.process(ref))
        if discovery.kind == "tfrecord" and len(found) >= n * MAX_SAMPLE_READ_FACTOR:
            break
    if discovery.kind == "tfrecord":
        found = rng.sample(found, min(n, len(found)))
    return sorted(found, key=lambda item: item.key)


def reader(job, discovery):
    """The DoFn expand reads these inputs with (InputRef -> Inputs or error records)."""
    from pipeline import formats
    from pipeline import transforms as T
    if discovery.kind == "tfrecord":
        return T.ReadTFRecordFile(job.image_feature, job.label_feature)
    if discovery.kind == "folder":
        return T.ReadImageFile({label: name for name, label in discovery.label_map.items()})
    return formats.ReadAnnotated(discovery.kind, exif_orientation=job.exif_orientation)


def _unwrap(out):
    """A DoFn's output: the element, whether on the main output or tagged as an error."""
    return getattr(out, "value", out)


def rows(job, n=6, copies=None):
    """Sample n inputs of `job` and run them as `expand` would: a Row per input.

    The inputs go through expand's own DoFns, called directly: DecodeImage, then
    AugmentAndEncode, whose records are the ones expand writes; each tile is decoded from a
    record's image bytes. copies: how many copies to make (default: the job's); copy c of an
    input is the same whatever the number of copies.
    """
    from pipeline import quiet
    from pipeline import transforms as T
    quiet.native_logs_follow_tf_level()
    copies = job.copies if copies is None else copies
    picked = sample(job, n)
    decode = T.DecodeImage(job.channels, job.max_pixels, job.exif_orientation)
    decode.setup()
    # The original is always shown (as copy 0, which expand writes when keep_original is on).
    # (in augbatch's own layout, whatever output.tfds: the tiles read image/encoded; with
    # what was done to each copy recorded, for --explain)
    shown = dataclasses.replace(job, copies=copies, keep_original=True, tfds=False,
                                record_ops=True)
    augment = T.AugmentAndEncode(shown, shown.config_hash)
    augment.setup()
    out = []
    for item in picked:
        if isinstance(item, T.ErrorRecord):
            out.append(Row(item.key, error=f"{item.stage}: {item.message}"))
            continue
        decoded = _unwrap(next(iter(decode.process(item))))
        if isinstance(decoded, T.ErrorRecord):
            out.append(Row(item.key, item.label_text, error=f"{decoded.stage}: {decoded.message}"))
            continue
        records = [r for r in map(_unwrap, augment.process_now([decoded]))
                   if isinstance(r, (T.OutputRecord, T.ErrorRecord))]  # (not target counts)
        failed = [r for r in records if isinstance(r, T.ErrorRecord)]
        if failed:
            out.append(Row(item.key, item.label_text, error=f"{failed[0].stage}: "
                           f"{failed[0].message}"))
            continue
        images = {r.copy_index: _image_of(r.payload) for r in records}
        ops = {r.copy_index: _ops_of(r.payload) for r in records}
        out.append(Row(item.key, item.label_text, original=images.pop(0),
                       copies=[images[c] for c in sorted(images)],
                       original_written=job.keep_original,
                       ops=[ops[c] for c in sorted(images)]))
    return out


def _ops_of(payload):
    """The augment/ops entries of an output record (a serialized tf.train.Example)."""
    import json
    import tensorflow as tf
    from pipeline.example import OPS_KEY
    feature = tf.train.Example.FromString(payload).features.feature[OPS_KEY]
    return json.loads(feature.bytes_list.value[0])["ops"]


def _image_of(payload):
    """The pixels of an output record (a serialized tf.train.Example), as a reader gets them,
    with its boxes, masks and keypoints drawn on."""
    import tensorflow as tf
    example = tf.train.Example.FromString(payload)
    data = example.features.feature["image/encoded"].bytes_list.value[0]
    image = tf.io.decode_image(data, channels=0, expand_animations=False).numpy()
    return draw_targets(image, example.features.feature)


# Colours of objects, by class (the class mask's classes alike).
COLOURS = [(230, 60, 60), (60, 170, 60), (50, 110, 230), (240, 170, 30), (170, 60, 200),
           (30, 190, 200), (240, 110, 180), (130, 130, 30)]


def draw_targets(image, features):
    """uint8 [H, W, C] with the targets in `features` (a tf.Example's feature map) drawn on:
    class masks and instance masks tinted, boxes outlined, visible keypoints dotted. Records
    without targets, or whose targets do not read, come back as they are."""
    from PIL import Image, ImageDraw
    from pipeline import targets
    if not targets.has_targets(features):
        return image
    try:
        found = targets.decode(targets.from_features(features), *image.shape[:2])
    except targets.TargetError:
        return image
    height, width = image.shape[:2]
    rgb = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]
    tinted = rgb.astype(np.float32)
    classes = found.objects.get(targets.CLASS_KEY, (None, []))[1]

    def colour(i):
        return np.array(COLOURS[int(classes[i] if i < len(classes) else i) % len(COLOURS)])
    if found.class_mask is not None:
        for value in np.unique(found.class_mask):
            where = found.class_mask == value
            shade = (255, 255, 255) if value == 255 else COLOURS[int(value) % len(COLOURS)]
            if value:
                tinted[where] = 0.55 * tinted[where] + 0.45 * np.array(shade)
    for i, mask in enumerate(found.masks if found.masks is not None else []):
        where = mask > 0
        tinted[where] = 0.6 * tinted[where] + 0.4 * colour(i)
    sheet = Image.fromarray(tinted.astype(np.uint8))
    draw = ImageDraw.Draw(sheet)
    line = max(1, min(height, width) // 120)
    for i, (ymin, xmin, ymax, xmax) in enumerate(found.boxes):
        draw.rectangle([xmin * width, ymin * height, xmax * width - 1, ymax * height - 1],
                       outline=tuple(int(c) for c in colour(i)), width=line)
    if found.keypoints is not None:
        for points, visible in zip(found.keypoints, found.visibility):
            for (y, x), seen in zip(points, visible):
                if seen:
                    r = line + 1
                    draw.ellipse([x * width - r, y * height - r, x * width + r, y * height + r],
                                 fill=(255, 230, 0))
    return np.asarray(sheet)


# --- drawing -------------------------------------------------------------------------------------

@dataclasses.dataclass
class Tile:
    image: Optional[np.ndarray]  # uint8 [H, W, C]; None: a text-only tile (an error)
    caption: List[str]
    highlight: bool = False  # a coloured frame (the original)
    text: str = ""  # shown inside a tile without an image


BACKGROUND, PANEL, INK, FAINT = (246, 246, 244), (226, 226, 222), (34, 34, 34), (110, 110, 110)
ACCENT, ERROR = (38, 110, 200), (190, 40, 40)
PAD, LINE = 10, 15


def _font(size):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _fit_text(draw, text, font, width):
    """`text`, shortened in the middle with '…' until it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        short = text[:keep // 2] + "…" + text[len(text) - (keep - keep // 2):]
        if draw.textlength(short, font=font) <= width:
            return short
    return "…"


def _wrap(draw, text, font, width, max_lines):
    """`text` in lines that fit `width` pixels, at most `max_lines`: the last one kept ends with
    '…' when there was more."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [lines[max_lines - 1] + " …"]
    return [_fit_text(draw, text_line, font, width) for text_line in lines]


def _thumbnail(array, size):
    """uint8 [H, W, C] -> an RGB PIL image filling size x size (aspect kept). Tiny images are
    enlarged by whole pixels, so their pixels stay visible as pixels."""
    from PIL import Image
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array[..., :3])
    image = image.convert("RGB")
    scale = min(size / image.width, size / image.height)
    if scale >= 3:
        scale = int(scale)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    return image.resize((width, height), Image.NEAREST if scale >= 3 else Image.LANCZOS)


def render(grid, title_lines, tile_size=160):
    """Draw rows of Tiles under a title: the PIL image of the sheet."""
    from PIL import Image, ImageDraw
    title_font, font = _font(15), _font(12)
    columns = max(len(row) for row in grid) if grid else 1
    captions = max((len(tile.caption) for row in grid for tile in row), default=2)
    cell_w, cell_h = tile_size, tile_size + max(2, captions) * LINE + 4
    width = max(PAD + columns * (cell_w + PAD), 480)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title = [(i, text) for i, line in enumerate(title_lines)
             for text in _wrap(measure, line, title_font, width - 2 * PAD, max_lines=4)]
    title_h = PAD + len(title) * (LINE + 4) + PAD
    height = title_h + len(grid) * (cell_h + PAD) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for row, (i, text) in enumerate(title):
        draw.text((PAD, PAD + row * (LINE + 4)), text, fill=INK if i == 0 else FAINT,
                  font=title_font)
    for r, row in enumerate(grid):
        top = title_h + r * (cell_h + PAD)
        for c, tile in enumerate(row):
            left = PAD + c * (cell_w + PAD)
            draw.rectangle([left, top, left + cell_w - 1, top + tile_size - 1], fill=PANEL)
            if tile.image is not None:
                thumb = _thumbnail(tile.image, tile_size)
                sheet.paste(thumb, (left + (cell_w - thumb.width) // 2,
                                    top + (tile_size - thumb.height) // 2))
            else:
                for i, line in enumerate(_wrap(draw, tile.text, font, cell_w - 12,
                                               tile_size // LINE - 1)):
                    draw.text((left + 6, top + 6 + i * LINE), line, fill=ERROR, font=font)
            if tile.highlight:
                draw.rectangle([left - 2, top - 2, left + cell_w + 1, top + tile_size + 1],
                               outline=ACCENT, width=2)
            for i, line in enumerate(tile.caption):
                draw.text((left, top + tile_size + 3 + i * LINE),
                          _fit_text(draw, line, font, cell_w), fill=INK if i == 0 else FAINT,
                          font=font)
    return sheet


def _size(array):
    return f"{array.shape[1]}x{array.shape[0]}"


def tiles_of(row, explain=False):
    """The Tiles of one preview Row: original first, then its copies (`explain`: captioned
    with what was done to each, replay.caption)."""
    if row.error:
        return [Tile(None, [row.key, "not written (errors.jsonl)"], text=row.error)]
    # The label, unless the key already shows it (class folders).
    label = (f" · {row.label_text}" if row.label_text
             and not row.key.startswith(f"{row.label_text}/") else "")
    original = "original" if row.original_written else "input (not written)"
    out = [Tile(row.original, [row.key, f"{original}{label} · {_size(row.original)}"],
                highlight=True)]
    from pipeline import replay
    out += [Tile(image, [row.key, f"copy {c} · {_size(image)}"]
                 + (replay.caption(ops) if explain else []))
            for c, (image, ops) in enumerate(zip(row.copies, row.ops), start=1)]
    return out


def check_extension(path):
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UserError(f"cannot write a preview as '{extension or path}'",
                        hint="name the file .png (or .jpg / .webp)")
    return extension


def save(sheet, path):
    """Write the sheet (PNG, or JPEG/WebP by the file's extension)."""
    options = {".png": {"optimize": True}}.get(check_extension(path), {"quality": 88})
    sheet.save(path, **options)


def chain_summary(job):
    from pipeline import chain as chain_mod
    names = [name for _, name in chain_mod.op_paths(job.chain)]
    return "chain: " + (" > ".join(names) if names else "(empty: copies equal the original)")


def write(job, path, n=6, copies=None, tile_size=160, explain=False):
    """Preview `job` on n sampled inputs into the image file `path`; return the Rows.
    `explain`: each copy's tile says what was done to it."""
    check_extension(path)  # before the work, not after
    copies = min(job.copies, 8) if copies is None else copies
    preview_rows = rows(job, n, copies)
    config = os.path.basename(job.config_path) if job.config_path else "(no config)"
    title = [f"augbatch preview · {config} · seed {job.seed} · {len(preview_rows)} inputs, "
             f"original + {copies} copies · {job.format}"
             + (f" q{job.quality}" if job.format != "png" else ""),
             chain_summary(job)]
    save(render([tiles_of(row, explain) for row in preview_rows], title, tile_size), path)
    return preview_rows
