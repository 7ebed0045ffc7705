"""Images with boxes: PASCAL VOC 2007 and ImageFolder + XML readers (coordinate conversion,
resizing, labels, layouts, bad input) on tiny fake trees, and the synthetic set as a BoxDataset."""
import numpy as np
import pytest
import torch
from PIL import Image

from gradmask.saliency.boxes import (
    VOC_CLASSES,
    BoxDataset,
    load_box_dataset,
    parse_voc_xml,
    read_voc2007,
    read_xml_boxes,
    scale_boxes,
    voc_to_boxes,
)


def write_image(path, width, height, rects=(), background=(20, 20, 20)):
    """An image with white rectangles given as 0-based inclusive (x0, y0, x1, y1) pixel ranges."""
    a = np.zeros((height, width, 3), dtype=np.uint8)
    a[:] = background
    for x0, y0, x1, y1 in rects:
        a[y0:y1 + 1, x0:x1 + 1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, quality=98) if path.suffix == ".jpg" else Image.fromarray(a).save(path)


def voc_xml(objects, width=None, height=None):
    """objects: (name, xmin, ymin, xmax, ymax[, difficult]) in VOC's 1-based inclusive convention."""
    parts = ["<annotation><folder>VOC2007</folder>"]
    if width is not None:
        parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for obj in objects:
        name, xmin, ymin, xmax, ymax = obj[:5]
        difficult = obj[5] if len(obj) > 5 else 0
        parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    parts.append("</annotation>")
    return "".join(parts)


def make_voc(root, images, split="test"):
    """images: {id: (width, height, objects)} -> root/VOCdevkit/VOC2007 with a white rectangle
    drawn on each object's pixels."""
    base = root / "VOCdevkit" / "VOC2007"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, (w, h, objects) in images.items():
        rects = [(o[1] - 1, o[2] - 1, o[3] - 1, o[4] - 1) for o in objects]  # 1-based -> 0-based pixels
        write_image(base / "JPEGImages" / f"{image_id}.jpg", w, h, rects)
        (base / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objects, w, h))
    (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")
    return base


VOC_IMAGES = {
    "000001": (40, 20, [("dog", 1, 1, 20, 10), ("person", 11, 5, 30, 20)]),
    "000002": (30, 30, [("cat", 4, 7, 18, 25)]),
    "000003": (24, 24, [("tvmonitor", 1, 1, 24, 24, 1), ("bird", 5, 5, 8, 8)]),
}


def test_voc_to_boxes_convention():
    # 1-based inclusive columns 1..20 are 0-based 0..19, exclusive end 20
    assert voc_to_boxes(1, 1, 20, 10) == (0, 0, 20, 10)
    assert voc_to_boxes(0, 0, 19, 9, one_based=False) == (0, 0, 20, 10)


def test_read_voc_native_size_matches_pixels(tmp_path):
    """Without resizing, every converted box covers exactly the object's drawn pixels."""
    make_voc(tmp_path, {"000002": VOC_IMAGES["000002"]})
    ds = read_voc2007(tmp_path, "test", image_size=30)
    assert isinstance(ds, BoxDataset) and len(ds) == 1 and ds.images.shape == (1, 3, 30, 30)
    assert ds.boxes[0].tolist() == [[3, 6, 18, 25]]
    bright = ds.images[0].float().mean(0) > 128
    ys, xs = bright.nonzero(as_tuple=True)
    assert (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1) == (3, 6, 18, 25)
    assert ds.labels.tolist() == [VOC_CLASSES.index("cat")]


def test_read_voc_resized_boxes_labels_and_names(tmp_path):
    make_voc(tmp_path, VOC_IMAGES)
    ds = read_voc2007(tmp_path / "VOCdevkit", "test", image_size=20)
    assert ds.images.shape == (3, 3, 20, 20) and ds.images.dtype == torch.uint8
    assert ds.names == ["000001", "000002", "000003"]
    assert ds.classes == list(VOC_CLASSES) and ds.name == "voc2007" and ds.split == "test"
    # 000001 is 40x20 (WxH): x scaled by 1/2, y by 1
    # dog (0, 0, 20, 10) -> (0, 0, 10, 10); person (10, 4, 30, 20) -> (5, 4, 15, 20)
    assert ds.boxes[0].tolist() == [[0, 0, 10, 10], [5, 4, 15, 20]]
    assert ds.object_labels[0].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    # label: the largest object (person: 20 x 16 px > dog: 20 x 10 px)
    assert ds.labels[0].item() == VOC_CLASSES.index("person")
    # 000002 is 30x30: (3, 6, 18, 25) * 2/3 = (2, 4, 12, 16.67) -> rounded (2, 4, 12, 17)
    assert ds.boxes[1].tolist() == [[2, 4, 12, 17]]
    # difficult objects count by default: 000003 has two objects, the difficult monitor the largest
    assert len(ds.boxes[2]) == 2 and ds.labels[2].item() == VOC_CLASSES.index("tvmonitor")
    assert ds.boxes[2].tolist()[0] == [0, 0, 20, 20]


def test_read_voc_roots_limit_difficult_default_size(tmp_path):
    base = make_voc(tmp_path, VOC_IMAGES)
    for root in (tmp_path, tmp_path / "VOCdevkit", base):
        assert read_voc2007(root, image_size=8, limit=2).names == ["000001", "000002"]
    ds = read_voc2007(base, include_difficult=False)
    assert ds.images.shape[-1] == 224  # image_size=None
    assert ds.boxes[2].shape == (1, 4) and ds.labels[2].item() == VOC_CLASSES.index("bird")
    # bird: 1-based 5..8 -> 0-based (4, 4, 8, 8) on 24 px -> x 224/24
    assert ds.boxes[2].tolist() == [[round(4 * 224 / 24), round(4 * 224 / 24), round(8 * 224 / 24),
                                     round(8 * 224 / 24)]]


def test_load_box_dataset_voc(tmp_path):
    make_voc(tmp_path, VOC_IMAGES)
    ds = load_box_dataset("voc2007", tmp_path, image_size=16)
    assert len(ds) == 3 and ds.split == "test"
    with pytest.raises(ValueError, match="needs root"):
        load_box_dataset("voc2007")
    with pytest.raises(ValueError, match="must be one of"):
        load_box_dataset("coco", tmp_path)


def test_voc_bad_input_names_the_file(tmp_path):
    base = make_voc(tmp_path, VOC_IMAGES)
    with pytest.raises(FileNotFoundError, match="trainval.txt"):
        read_voc2007(tmp_path, "trainval")
    with pytest.raises(FileNotFoundError, match="no VOC 2007 tree"):
        read_voc2007(tmp_path / "VOCdevkit" / "VOC2007" / "Annotations")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_voc2007(tmp_path / "nowhere")
    (base / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000002.jpg"):
        read_voc2007(tmp_path)
    write_image(base / "JPEGImages" / "000002.jpg", 30, 30)
    (base / "Annotations" / "000003.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="000003.xml.*not valid XML"):
        read_voc2007(tmp_path)
    (base / "Annotations" / "000003.xml").write_text(voc_xml([("unicorn", 1, 1, 5, 5)]))
    with pytest.raises(ValueError, match="000003.xml.*unicorn"):
        read_voc2007(tmp_path)
    (base / "Annotations" / "000003.xml").unlink()
    with pytest.raises(FileNotFoundError, match="000003.xml"):
        read_voc2007(tmp_path)
    (base / "Annotations" / "000003.xml").write_text(voc_xml([("bird", 50, 50, 60, 60)]))
    with pytest.raises(ValueError, match="000003.jpg.*no area inside"):
        read_voc2007(tmp_path)
    (base / "JPEGImages" / "000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="000003.jpg"):
        read_voc2007(tmp_path)
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n")
    with pytest.raises(ValueError, match="test.txt lists no image ids"):
        read_voc2007(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        read_voc2007(tmp_path, image_size=0)


@pytest.mark.parametrize("xml,match", [
    ("<annotation></annotation>", "has no <object>"),
    ("<annotation><object><bndbox><xmin>1</xmin></bndbox></object></annotation>", "no <name>"),
    ("<annotation><object><name>dog</name></object></annotation>", "no <bndbox>"),
    ("<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax>"
     "</bndbox></object></annotation>", "no bndbox/ymax"),
    ("<annotation><object><name>dog</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax>"
     "</bndbox></object></annotation>", "not a number"),
    ("<annotation><object><name>dog</name><bndbox><xmin>5</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax>"
     "</bndbox></object></annotation>", "xmax < xmin"),
])
def test_parse_voc_xml_errors(tmp_path, xml, match):
    path = tmp_path / "bad.xml"
    path.write_text(xml)
    with pytest.raises(ValueError, match=f"bad.xml.*{match}"):
        parse_voc_xml(path)


def test_parse_voc_xml_floats_and_difficult(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml([("dog", "1.0", "2.0", "10.0", "12.0"), ("cat", 3, 3, 4, 4, 1)]))
    objects = parse_voc_xml(path)
    assert objects == [("dog", (0.0, 1.0, 10.0, 12.0), False), ("cat", (2, 2, 4, 4), True)]
    assert [o[0] for o in parse_voc_xml(path, include_difficult=False)] == ["dog"]
    path.write_text(voc_xml([("cat", 3, 3, 4, 4, 1)]))
    with pytest.raises(ValueError, match="only difficult"):
        parse_voc_xml(path, include_difficult=False)


def test_scale_boxes_rounding_clipping_minimum_size():
    # a 1-pixel object on a 100 px image keeps one pixel at 10 px
    assert scale_boxes([(50, 50, 51, 51)], (100, 100), (10, 10)).tolist() == [[5, 5, 6, 6]]
    # at the far edge: stays inside
    assert scale_boxes([(99, 99, 100, 100)], (100, 100), (10, 10)).tolist() == [[9, 9, 10, 10]]
    # clipped to the image first (VOC boxes occasionally exceed it)
    assert scale_boxes([(-3, 0, 120, 50)], (100, 100), (10, 10)).tolist() == [[0, 0, 10, 5]]
    with pytest.raises(ValueError, match="here.*no area"):
        scale_boxes([(100, 0, 110, 5)], (100, 100), (10, 10), where="here")


def make_xml_tree(root):
    """root/val/{cat,dog}/*.jpg; XML next to the image (cat/a) or in val_boxes (dog/c); cat/b has
    no XML (skipped)."""
    write_image(root / "val" / "cat" / "a.jpg", 20, 10, [(2, 1, 9, 6)])
    (root / "val" / "cat" / "a.xml").write_text(voc_xml([("n0001", 3, 2, 10, 7)], 20, 10))
    write_image(root / "val" / "cat" / "b.jpg", 20, 10)
    write_image(root / "val" / "dog" / "c.png", 10, 10, [(0, 0, 4, 4)])
    (root / "val_boxes" / "dog").mkdir(parents=True)
    (root / "val_boxes" / "dog" / "c.xml").write_text(voc_xml([("dog", 1, 1, 5, 5), ("cat", 6, 6, 10, 10)]))


def test_read_xml_boxes_layouts_labels(tmp_path):
    make_xml_tree(tmp_path)
    ds = read_xml_boxes(tmp_path, "val", image_size=10)
    assert ds.classes == ["cat", "dog"] and ds.names == ["cat/a.jpg", "dog/c.png"]
    assert ds.labels.tolist() == [0, 1]  # the class folder, not the object names
    # a.jpg: 20x10, 1-based (3, 2, 10, 7) -> (2, 1, 10, 7) -> x / 2 -> (1, 1, 5, 7)
    assert ds.boxes[0].tolist() == [[1, 1, 5, 7]]
    assert ds.boxes[1].tolist() == [[0, 0, 5, 5], [5, 5, 10, 10]]
    assert ds.object_labels[0].tolist() == [-1] and ds.object_labels[1].tolist() == [1, 0]
    # the box covers the drawn pixels of c.png (native size)
    bright = ds.images[1].float().mean(0) > 128
    assert bright[0:5, 0:5].all() and bright.sum() == 25
    assert len(read_xml_boxes(tmp_path, "val", image_size=10, limit=1)) == 1
    ds0 = read_xml_boxes(tmp_path, "val", image_size=10, one_based=False)
    assert ds0.boxes[1].tolist()[0] == [1, 1, 6, 6]
    assert len(load_box_dataset("xml", tmp_path, image_size=10)) == 2  # default split "val"


def test_read_xml_boxes_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_xml_boxes(tmp_path / "missing", "val")
    write_image(tmp_path / "val" / "cat" / "b.jpg", 20, 10)
    with pytest.raises(ValueError, match="no box XML"):
        read_xml_boxes(tmp_path, "val")
    (tmp_path / "val" / "cat" / "b.xml").write_text("<annotation>")
    with pytest.raises(ValueError, match="b.xml"):
        read_xml_boxes(tmp_path, "val")
    with pytest.raises(ValueError, match="no split folder"):
        read_xml_boxes(tmp_path, "train")


def test_synthetic_box_dataset_and_subset():
    ds = load_box_dataset("synthetic", limit=30)
    assert len(ds) == 30 and ds.images.shape == (30, 3, 32, 32) and ds.split == "test"
    assert all(b.shape == (1, 4) for b in ds.boxes)
    from gradmask.data import load_dataset
    ref = load_dataset("synthetic", split="test", n=30, seed=0)
    assert torch.equal(ds.images, ref.images) and torch.equal(torch.cat(ds.boxes), ref.boxes)
    sub = ds.subset(torch.tensor([3, 1]))
    assert torch.equal(sub.images, ds.images[[3, 1]]) and sub.boxes[0].tolist() == ds.boxes[3].tolist()
    mask = torch.zeros(30, dtype=torch.bool)
    mask[[2, 5]] = True
    assert ds.subset(mask).labels.tolist() == ds.labels[[2, 5]].tolist()
    assert len(ds.subset(slice(0, 4))) == 4


def test_box_dataset_validation():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0, 1])
    ok = [torch.tensor([[0, 0, 8, 8]]), torch.tensor([[1, 1, 3, 3], [2, 2, 4, 4]])]
    BoxDataset(images, labels, ok, ["a", "b"])
    with pytest.raises(ValueError, match="one \\(k, 4\\) tensor per image"):
        BoxDataset(images, labels, ok[:1], ["a", "b"])
    with pytest.raises(ValueError, match="inside the 8x8 image"):
        BoxDataset(images, labels, [ok[0], torch.tensor([[0, 0, 9, 2]])], ["a", "b"])
    with pytest.raises(ValueError, match="non-empty int64"):
        BoxDataset(images, labels, [ok[0], torch.zeros(0, 4, dtype=torch.int64)], ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie"):
        BoxDataset(images, labels, ok, ["a"])


def test_a_registered_box_dataset_loads_by_name_and_names_are_unique(monkeypatch):
    from gradmask.saliency import boxes
    monkeypatch.setattr(boxes, "BOX_DATASETS", dict(boxes.BOX_DATASETS))   # leave the real registry as it was

    @boxes.register_box_dataset("toy")
    def toy(root=None, split="val", image_size=None, limit=None, **kw):
        n = limit or 3
        return BoxDataset(torch.zeros(n, 3, 8, 8, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64),
                          [torch.tensor([[1, 1, 4, 4]])] * n, ["thing"], name="toy", split=split)

    ds = load_box_dataset("toy", limit=2, split="train")
    assert len(ds) == 2 and ds.split == "train" and ds.name == "toy"
    with pytest.raises(ValueError, match="'toy' is already registered"):
        boxes.register_box_dataset("toy")(toy)
    with pytest.raises(ValueError, match="box dataset must be one of .*toy"):
        load_box_dataset("nope")
    assert set(boxes.BOX_DATASETS) >= {"synthetic", "voc2007", "xml", "toy"}
