"""The IoU localisation measure (Table 3) on hand-made maps and boxes."""
import pytest
import torch

from gradmask.data.synthetic import render_synthetic
from gradmask.saliency import box_iou, localization_scores, saliency_box, saliency_boxes, select_images


def block_map(h, w, y0, y1, x0, x1, value=1.0):
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = value
    return m


def test_saliency_box_top_block():
    m = block_map(10, 10, 2, 5, 3, 7)  # 3 rows x 4 cols = 12 pixels = 12 % of 100
    m += torch.linspace(0, 0.01, 100).view(10, 10)  # no ties in the background
    assert saliency_box(m, top_fraction=0.12) == (3, 2, 7, 5)
    # 0.15 of 100 = 15 pixels: the 12 block pixels + the 3 largest background ones (last row)
    assert saliency_box(m, top_fraction=0.15) == (3, 2, 10, 10)


def test_saliency_box_single_pixel_constant_map_and_ties():
    m = torch.zeros(6, 8)
    m[4, 1] = 5.0
    assert saliency_box(m, top_fraction=0.01) == (1, 4, 2, 5)  # ceil(0.48) = 1 pixel
    assert saliency_box(torch.ones(6, 8), top_fraction=0.15) == (0, 0, 8, 6)  # all tied
    m = torch.zeros(6, 8)
    m[0, 0] = m[5, 7] = 1.0  # two tied maxima, one pixel asked: both kept
    assert saliency_box(m, top_fraction=1 / 48) == (0, 0, 8, 6)
    assert saliency_box(m, top_fraction=1.0) == (0, 0, 8, 6)


def test_top_fraction_count_is_not_inflated_by_float_error():
    m = torch.arange(100, dtype=torch.float32).view(10, 10)  # 0.15 * 100 = 15.000000000000002
    assert saliency_box(m, top_fraction=0.15) == (0, 8, 10, 10)  # 15 pixels: rows 8 (5) and 9


def test_batched_equals_single():
    torch.manual_seed(0)
    maps = torch.rand(5, 12, 9)
    boxes = saliency_boxes(maps, 0.2)
    assert boxes.shape == (5, 4) and boxes.dtype == torch.int64
    for m, b in zip(maps, boxes):
        assert saliency_box(m, 0.2) == tuple(b.tolist())


def test_box_iou_hand_computed():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 4, 4), (0, 0, 2, 2)) == pytest.approx(0.25)
    assert box_iou((0, 0, 2, 2), (2, 0, 4, 2)) == 0.0  # touching: ends are exclusive
    assert box_iou((0, 0, 2, 2), (5, 5, 6, 6)) == 0.0
    assert box_iou((1, 2, 5, 7), (1, 2, 5, 7)) == 1.0
    assert box_iou((0, 0, 3, 2), (1, 0, 4, 3)) == pytest.approx(4 / (6 + 9 - 4))
    batch = box_iou(torch.tensor([[0, 0, 2, 2], [0, 0, 4, 4]]), torch.tensor([1, 1, 3, 3]))
    torch.testing.assert_close(batch, torch.tensor([1 / 7, 4 / 16], dtype=torch.float64))


def test_localization_scores_hand_computed():
    maps = torch.stack([block_map(10, 10, 0, 4, 0, 5),     # 20 pixels, box (0,0,5,4)
                        block_map(10, 10, 5, 10, 5, 10),   # 25 tied pixels, box (5,5,10,10)
                        block_map(10, 10, 0, 2, 0, 10)])   # 20 pixels, box (0,0,10,2)
    gt = torch.tensor([[0, 0, 5, 4],      # IoU 1
                       [5, 5, 10, 7],     # 10 / 25 = 0.4
                       [0, 0, 5, 2]])     # 10 / 20 = 0.5
    out = localization_scores(maps, gt, top_fraction=0.2)   # 20 pixels (ties fill the 2nd block)
    torch.testing.assert_close(out["ious"], torch.tensor([1.0, 0.4, 0.5], dtype=torch.float64))
    assert out["mean_iou"] == pytest.approx(1.9 / 3)
    assert out["frac_iou_ge_05"] == pytest.approx(2 / 3)
    # 21 pixels: the 21st largest value of the first map is 0, tied everywhere -> whole image
    out = localization_scores(maps, gt, top_fraction=0.21)
    assert out["ious"][0].item() == pytest.approx(20 / 100)


def test_localization_scores_several_boxes_best_match_and_empty():
    maps = block_map(10, 10, 0, 4, 0, 4)[None]
    out = localization_scores(maps, [torch.tensor([[5, 5, 10, 10], [0, 0, 4, 8]])], top_fraction=0.16)
    assert out["ious"].tolist() == [0.5]
    empty = localization_scores(torch.zeros(0, 10, 10), torch.zeros(0, 4, dtype=torch.long))
    assert empty["ious"].numel() == 0 and empty["mean_iou"] != empty["mean_iou"]  # NaN


def test_synthetic_box_convention_is_the_same():
    """A map equal to the object's pixel mask recovers the synthetic ground-truth box."""
    r = render_synthetic(4, image_size=32, seed=0)
    maps = r.masks.float()
    for m, box in zip(maps, r.boxes):
        fraction = m.sum().item() / m.numel()
        assert saliency_box(m, fraction) == tuple(box.tolist())
    scores = localization_scores(maps, r.boxes, top_fraction=maps[0].mean().item())
    assert scores["ious"][0] == 1.0


def test_select_images_filters():
    boxes = [torch.tensor([1, 1, 4, 4]),                        # single, 9 / 100
             torch.tensor([[0, 0, 3, 3], [5, 5, 8, 8]]),         # two objects
             torch.tensor([0, 0, 10, 6]),                        # single, 60 / 100
             torch.tensor([[2, 2, 9, 9]])]                       # single, 49 / 100
    assert select_images(boxes, 10).tolist() == [True, False, False, True]
    assert select_images(boxes, 10, single_object=False).tolist() == [True, True, False, True]
    assert select_images(boxes, 10, max_box_fraction=None).tolist() == [True, False, True, True]
    assert select_images(boxes, (10, 10), max_box_fraction=0.4).tolist() == [True, False, False, False]
    correct = torch.tensor([False, True, True, True])
    assert select_images(boxes, 10, correct_mask=correct).tolist() == [False, False, False, True]
    tensor_boxes = torch.tensor([[1, 1, 4, 4], [0, 0, 10, 6]])
    assert select_images(tensor_boxes, 10).tolist() == [True, False]


def test_errors_name_the_argument():
    m = torch.rand(10, 10)
    for bad in (0, 0.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="top_fraction"):
            saliency_box(m, bad)
    with pytest.raises(ValueError, match="maps"):
        saliency_box(torch.rand(2, 10, 10))
    with pytest.raises(ValueError, match="maps"):
        saliency_boxes(torch.full((1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="a must have positive area"):
        box_iou((2, 2, 2, 5), (0, 0, 1, 1))
    with pytest.raises(ValueError, match="b must have positive area"):
        box_iou((0, 0, 1, 1), (3, 4, 1, 5))
    with pytest.raises(ValueError, match="boxes"):
        localization_scores(m[None], torch.tensor([[0, 0, 11, 5]]))     # outside the 10x10 image
    with pytest.raises(ValueError, match="boxes"):
        localization_scores(m[None], torch.tensor([[-1, 0, 5, 5]]))
    with pytest.raises(ValueError, match="boxes"):
        localization_scores(m[None], torch.tensor([[0, 3, 5, 3]]))      # zero area
    with pytest.raises(ValueError, match="boxes"):
        localization_scores(m[None], torch.tensor([[0, 0, 5, 5], [0, 0, 5, 5]]))  # wrong count
    with pytest.raises(ValueError, match="top_fraction"):
        localization_scores(m[None], torch.tensor([[0, 0, 5, 5]]), top_fraction=0)
    with pytest.raises(ValueError, match="boxes"):
        select_images([torch.tensor([0, 0, 5, 12])], 10)
    with pytest.raises(ValueError, match="image_size"):
        select_images([torch.tensor([0, 0, 5, 5])], 0)
    with pytest.raises(ValueError, match="max_box_fraction"):
        select_images([torch.tensor([0, 0, 5, 5])], 10, max_box_fraction=0)
    with pytest.raises(ValueError, match="correct_mask"):
        select_images([torch.tensor([0, 0, 5, 5])], 10, correct_mask=torch.tensor([1]))
