"""Detection and segmentation: box ops, metrics, dense sub-networks, COCO data, the CLI path."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mutualnet.data.coco import CocoDataset, parse_coco
from mutualnet.errors import ConfigError, DataError
from mutualnet.models.dense import create_dense_model
from mutualnet.space import Config
from mutualnet.tasks.detection import DetectionTask, batched_nms, coco_map, decode
from mutualnet.tasks.segmentation import IGNORE, SegmentationTask, confusion_matrix, mean_iou

BACKBONE = {"block_setting": [[1, 8, 1, 1], [2, 16, 1, 2], [2, 16, 1, 2], [2, 24, 1, 2],
                              [2, 32, 1, 2]],
            "stem_channels": 8, "last_channels": 32}
HEADS = {"detection": {"fpn_channels": 16, "head_convs": 1},
         "segmentation": {"inter_channels": 16}}


def tiny_dense(task: str, num_classes: int = 3):
    return create_dense_model(task, "mobilenet_v2", num_classes=num_classes, in_chans=3,
                              width_range=(0.5, 1.0), options=BACKBONE, head=HEADS[task])


def flat(output):
    return [output] if torch.is_tensor(output) else [t for o in output for t in flat(o)]


# ------------------------------------------------------------------------------------------
# box operations and metrics


def test_batched_nms_is_greedy_and_per_class():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [20, 20, 30, 30],
                          [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    labels = torch.tensor([0, 0, 1, 0, 1])
    # 1 overlaps 0 (IoU 81/119) and 2 overlaps 4 within their classes; 3 stands alone
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [4, 0, 3]
    # a chain: Z is suppressed by Y, which survives X (IoU 1/3) — greedy, not "fast" NMS
    chain = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [8, 0, 18, 10]], dtype=torch.float32)
    kept = batched_nms(chain, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long),
                       0.5)
    assert kept.tolist() == [0, 1]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).numel() == 0


def test_decode_turns_distances_in_strides_into_pixel_boxes():
    cls = torch.full((1, 2, 4, 4), -20.0)
    ctr = torch.full((1, 1, 4, 4), -20.0)
    box = torch.zeros(1, 4, 4, 4)
    cls[0, 1, 1, 2] = ctr[0, 0, 1, 2] = 10.0
    box[0, :, 1, 2] = torch.tensor([1.0, 0.5, 2.0, 1.0])
    (result,) = decode([(cls, box, ctr)], strides=[8])
    # the location (row 1, column 2) of stride 8 is centred at (20, 12)
    torch.testing.assert_close(result["boxes"], torch.tensor([[12.0, 8.0, 36.0, 20.0]]))
    assert result["labels"].tolist() == [1]
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([10.0])))


def test_the_meter_maps_a_sub_network_s_boxes_back_to_original_image_pixels():
    # a 64x48 image letterboxed into a 32 px canvas (scale 0.5), seen by a 16 px configuration
    target = {"boxes": torch.tensor([[5.0, 10.0, 15.0, 20.0]]), "labels": torch.tensor([1]),
              "iscrowd": torch.tensor([False]), "image_id": 7, "scale": 0.5, "size": 32,
              "file_boxes": torch.tensor([[10.0, 20.0, 20.0, 20.0]]),
              "file_labels": torch.tensor([1]), "file_iscrowd": torch.tensor([False])}
    cls = torch.full((1, 2, 4, 4), -20.0)
    ctr = torch.full((1, 1, 4, 4), 20.0)
    box = torch.zeros(1, 4, 4, 4)
    cls[0, 1, 1, 1] = 20.0
    # centre (6, 6) of stride 4; the box is [2.5, 5, 7.5, 10] in the 16 px input
    box[0, :, 1, 1] = torch.tensor([3.5, 1.0, 1.5, 4.0]) / 4
    meter = DetectionTask([4]).meter()
    meter.update([(cls, box, ctr)], [target], Config(0.5, 16))
    assert meter.ground_truth == [[7, 10.0, 20.0, 20.0, 20.0, 1, 0]]
    assert meter.detections[0][1:5] == pytest.approx([10.0, 20.0, 20.0, 20.0])
    assert meter.result()["map"] == pytest.approx(100.0)


def test_map_of_perfect_detections_is_100_and_of_half_the_objects_51_of_101():
    gt = [[1, 0, 0, 10, 10, 0, 0], [1, 20, 20, 10, 10, 0, 0], [2, 5, 5, 20, 10, 1, 0]]
    perfect = [[g[0], *g[1:5], 0.9, g[5]] for g in gt]
    assert coco_map([1, 2], gt, perfect, 2) == {"map": 100.0, "ap50": 100.0}
    # class 0 finds one of its two objects: precision 1 up to recall 0.5, so 51 of the 101
    # recall points; class 1 is perfect
    half = [perfect[0], perfect[2]]
    expected = 100 * (51 / 101 + 1) / 2
    result = coco_map([1, 2], gt, half, 2)
    assert result["map"] == pytest.approx(expected) and result["ap50"] == pytest.approx(expected)
    assert coco_map([1, 2], gt, [], 2) == {"map": 0.0, "ap50": 0.0}


def test_mean_iou_from_a_hand_computed_confusion_matrix_summable_over_batches():
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    confusion = confusion_matrix(pred, target, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    result = mean_iou(confusion)
    assert result["miou"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)
    assert result["pixel_acc"] == pytest.approx(80.0)
    halves = confusion_matrix(pred[:1], target[:1], 3) + confusion_matrix(pred[1:], target[1:], 3)
    assert torch.equal(halves, confusion)


def test_a_process_without_evaluation_images_still_joins_the_segmentation_merge():
    import threading

    barrier, slots = threading.Barrier(2), [None, None]

    def all_reduce_for(rank):  # two "processes" summing tensors, as torch.distributed would
        def all_reduce(tensor):
            slots[rank] = tensor.clone()
            barrier.wait(timeout=5)
            total = slots[0] + slots[1]
            barrier.wait(timeout=5)
            return total
        return all_reduce

    target = torch.tensor([[[0, 1], [2, 2]]])
    busy, idle = SegmentationTask().meter(), SegmentationTask().meter()
    busy.update(torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float(), target,
                Config(1.0, 2))
    threads = [threading.Thread(target=m.reduce, args=(all_reduce_for(r),))
               for r, m in enumerate((busy, idle))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert busy.result() == idle.result() == {"miou": 100.0, "pixel_acc": 100.0}


# ------------------------------------------------------------------------------------------
# dense networks


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_dense_subnet_matches_the_slimmable_network_and_scripts(task):
    torch.manual_seed(0)
    model = tiny_dense(task).train()
    for _ in range(2):
        model(torch.randn(4, 3, 64, 64))
    model.eval()
    x = torch.randn(2, 3, 48, 48)
    for width in (0.5, 0.75, 1.0):
        model.set_config(width)
        static = model.subnet(width).eval()
        with torch.no_grad():
            want, got = flat(model(x)), flat(static(x))
        assert len(want) == len(got) == (9 if task == "detection" else 1)
        assert max((a - b).abs().max().item() for a, b in zip(want, got)) <= 1e-5
        assert sum(p.numel() for p in static.parameters()) == model.active_param_count()
    with torch.no_grad():
        scripted = flat(torch.jit.script(static)(x))
    assert max((a - b).abs().max().item() for a, b in zip(scripted, got)) <= 1e-5
    if task == "segmentation":
        assert want[0].shape == (2, 3, 48, 48)


def test_a_task_that_is_not_one_is_a_config_error_naming_it():
    """Weights whose saved description names an unknown task (a damaged file) are refused
    in one line, not a KeyError from inside the head builder."""
    from mutualnet.tasks import build_task_model

    with pytest.raises(ConfigError, match="task must be one of classification, detection, "
                                          "segmentation, got ' lassification'"):
        build_task_model(" lassification", "mobilenet_v2", num_classes=3, in_chans=3,
                         width_range=(0.5, 1.0), options={})


def test_dense_models_take_any_2d_backbone_and_refuse_missing_strides():
    small_v1 = {"block_setting": [[16, 1, 1], [16, 1, 2], [24, 1, 2], [32, 1, 2], [48, 1, 2]],
                "stem_channels": 8}
    for name, options in (("mobilenet_v1", small_v1), ("resnet18", {})):
        model = create_dense_model("detection", name, num_classes=2, in_chans=3,
                                   width_range=(0.5, 1.0), options=options,
                                   head=HEADS["detection"])
        shapes = [tuple(t.shape) for t in flat(model(torch.randn(1, 3, 64, 64)))]
        assert shapes[0::3] == [(1, 2, 8, 8), (1, 2, 4, 4), (1, 2, 2, 2)]
    with pytest.raises(ConfigError, match="no stage at stride 64"):
        create_dense_model("detection", "resnet18", num_classes=2, in_chans=3,
                           width_range=(0.5, 1.0), head={"strides": [16, 64]})
    with pytest.raises(ConfigError, match="no option 'fpn'"):
        create_dense_model("detection", "resnet18", num_classes=2, in_chans=3,
                           width_range=(0.5, 1.0), head={"fpn": 3})
    with pytest.raises(ConfigError, match=r"model.head.fpn_channels must be positive integers "
                                          r"up to 4096, got 100000000000000000000000"):
        create_dense_model("detection", "resnet18", num_classes=2, in_chans=3,
                           width_range=(0.5, 1.0), head={"fpn_channels": 10**23})


def _det_target(boxes, labels, size=64):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "iscrowd": torch.zeros(len(labels), dtype=torch.bool), "image_id": 1, "scale": 1.0,
            "size": size}


def test_distillation_resizes_the_teacher_to_the_student_and_has_gradients():
    torch.manual_seed(0)
    model = tiny_dense("detection")
    task = DetectionTask([8, 16, 32])
    x = torch.randn(2, 3, 64, 64)
    targets = [_det_target([[8, 8, 40, 40]], [1]), _det_target([], [])]
    teacher = task.teacher_signal(model(x))
    model.set_config(0.5)
    small = torch.nn.functional.interpolate(x, size=(48, 48), mode="bilinear")
    loss = task.distill_loss(model(small), teacher, targets, Config(0.5, 48))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert model.head.cls_out.weight.grad.abs().sum() > 0
    seg, seg_task = tiny_dense("segmentation"), SegmentationTask()
    mask = torch.randint(0, 3, (2, 64, 64))
    mask[:, :4] = IGNORE
    soft = seg_task.teacher_signal(seg(x))
    seg.set_config(0.5)
    seg_loss = seg_task.distill_loss(seg(small), soft, mask, Config(0.5, 48))
    assert torch.isfinite(seg_loss) and seg_loss > 0


# ------------------------------------------------------------------------------------------
# COCO data written by this test, not by mutualnet


CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}]


def write_coco(root: Path, split: str, count: int, seed: int = 0) -> dict:
    """Non-square images with coloured rectangles (squares: red, bars: blue), polygon masks,
    one RLE mask and category ids that are not 0..K-1."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    data = {"images": [], "annotations": [], "categories": CATEGORIES}
    for i in range(count):
        h, w = 48, 64
        pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for j in range(int(rng.integers(1, 3))):
            square = bool(rng.integers(0, 2))
            bw, bh = (16, 16) if square else (24, 8)
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            pixels[y0:y0 + bh, x0:x0 + bw] = (220, 40, 40) if square else (40, 40, 220)
            if j == 0 and i == 0:
                m = np.zeros((h, w), dtype=np.uint8, order="F")
                m[y0:y0 + bh, x0:x0 + bw] = 1
                rle = mask_utils.encode(m)
                seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            else:
                seg = [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]]
            data["annotations"].append({
                "id": len(data["annotations"]) + 1, "image_id": 100 + i,
                "category_id": 3 if square else 7, "bbox": [x0, y0, bw, bh],
                "area": bw * bh, "iscrowd": 0, "segmentation": seg})
        name = f"img{i}.png"
        Image.fromarray(pixels).save(folder / name)
        data["images"].append({"id": 100 + i, "file_name": name, "width": w, "height": h})
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_coco(root, "train", 16, seed=1)
    write_coco(root, "val", 8, seed=2)
    return root


def test_the_reader_letterboxes_and_flips_boxes_and_masks_together(coco_root):
    from mutualnet.data.coco import read_coco

    det = read_coco(coco_root / "annotations" / "instances_train.json")
    assert det.class_names == ["square", "bar"]
    seg = read_coco(coco_root / "annotations" / "instances_train.json", need_masks=True)
    kwargs = dict(mean=[0.5] * 3, std=[0.25] * 3, image_dir=coco_root / "train")
    plain = CocoDataset(det, "detection", 32, train=False, **kwargs)
    image, target = plain[0]
    assert image.shape == (3, 32, 32) and target["scale"] == 0.5
    assert torch.all(image[:, 24:] == 0)  # 48 px of height -> 24, then padding
    ann = [a for a in json.loads((coco_root / "annotations" / "instances_train.json")
                                 .read_text())["annotations"] if a["image_id"] == 100]
    x, y, w, h = ann[0]["bbox"]
    torch.testing.assert_close(target["boxes"][0], torch.tensor([x, y, x + w, y + h]) / 2.0)
    masks = CocoDataset(seg, "segmentation", 32, train=False, **kwargs)
    _, mask = masks[0]
    assert mask.shape == (32, 32) and torch.all(mask[24:] == IGNORE)
    label = ann[0]["category_id"] == 7  # category 3 -> class 1, 7 -> class 2
    inside = mask[(y + 1) // 2:(y + h) // 2, (x + 1) // 2:(x + w) // 2]  # nearest: pixel 2i
    assert inside.numel() and torch.all(inside == 1 + int(label))
    flipping = CocoDataset(det, "detection", 32, train=True, hflip=True, **kwargs)
    flipped_masks = CocoDataset(seg, "segmentation", 32, train=True, hflip=True, **kwargs)
    for seed in range(8):  # some seeds flip
        torch.manual_seed(seed)
        fimage, ftarget = flipping[0]
        torch.manual_seed(seed)
        _, fmask = flipped_masks[0]
        if torch.equal(fimage, image):
            continue
        torch.testing.assert_close(fimage[:, :, :32].flip(-1), image)
        b = target["boxes"][0]
        torch.testing.assert_close(ftarget["boxes"][0], torch.stack([32 - b[2], b[1],
                                                                     32 - b[0], b[3]]))
        assert torch.equal(fmask.flip(-1), mask)
        break
    else:
        pytest.fail("no seed flipped")
    images, targets = plain.collate_fn([plain[0], plain[1]])
    assert images.shape == (2, 3, 32, 32) and isinstance(targets, list)


def test_segmentation_takes_any_number_of_categories(coco_root):
    """Class 255 and above are classes like the others, not the ignored padding."""
    from mutualnet.data.coco import IGNORE

    data = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    data["categories"] = [{"id": k, "name": f"c{k}"} for k in range(1, 301)]
    for a, category in zip(data["annotations"], (255, 256, 300)):
        a["category_id"] = category
    index = parse_coco(data, "instances_val.json", need_masks=True)
    val = CocoDataset(index, "segmentation", 32, [0.5] * 3, [0.25] * 3, train=False,
                      image_dir=coco_root / "val")
    values = set()
    for i in range(len(val)):
        values |= set(val[i][1].unique().tolist())
    assert {255, 256, 300, IGNORE} <= values
    confusion = confusion_matrix(torch.tensor([255, 0]), torch.tensor([255, IGNORE]), 301)
    assert confusion.sum() == 1 and confusion[255, 255] == 1


def test_16_bit_images_are_scaled_to_8_bits_not_read_as_white(coco_root, tmp_path):
    import shutil

    from PIL import Image

    root = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16)).save(root / "val" / "img0.png")
    index = parse_coco(json.loads((root / "annotations" / "instances_val.json").read_text()),
                       "instances_val.json")
    val = CocoDataset(index, "detection", 32, [0.5] * 3, [0.25] * 3, train=False,
                      image_dir=root / "val")
    assert val._read(0).unique().tolist() == [round(40000 / 65535 * 255)]


def test_an_image_stored_turned_is_read_as_its_annotations_see_it(coco_root, tmp_path):
    """A phone photo is stored sideways with an EXIF orientation saying how to turn it, and
    annotation tools show it turned: with the annotation file's size, it is read turned.
    An image whose stored size is the annotation file's is read as stored."""
    import shutil

    from PIL import Image

    root = Path(shutil.copytree(coco_root, tmp_path / "coco"))
    upright = np.zeros((48, 64, 3), dtype=np.uint8)
    upright[:8, :16] = 255  # a mark at the top left
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # 64 rows, 48 columns
    Image.fromarray(stored).save(root / "val" / "img0.png", exif=exif.tobytes())
    Image.fromarray(upright).save(root / "val" / "img1.png", exif=exif.tobytes())
    index = parse_coco(json.loads((root / "annotations" / "instances_val.json").read_text()),
                       "instances_val.json")  # both 64 wide, 48 high
    val = CocoDataset(index, "detection", 32, [0.5] * 3, [0.25] * 3, train=False,
                      image_dir=root / "val")
    want = torch.from_numpy(upright).permute(2, 0, 1)
    assert torch.equal(val._read(0), want) and torch.equal(val._read(1), want)


def test_detection_is_scored_against_the_boxes_of_the_annotation_file(coco_root):
    """Boxes reaching past the image are clipped for training, not for scoring: detections
    equal to the file's boxes score 100, as pycocotools on the file would give."""
    from types import SimpleNamespace

    from mutualnet.tasks.detection import DetectionMeter

    data = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    for a in data["annotations"]:
        a["bbox"][0] = 64 - a["bbox"][2] / 2  # half of each box past the right edge
    index = parse_coco(data, "instances_val.json")
    val = CocoDataset(index, "detection", 32, [0.5] * 3, [0.25] * 3, train=False,
                      image_dir=coco_root / "val")
    config = Config(1.0, 32)
    pending = []
    decode = lambda output: pending  # noqa: E731 -- the detections of the batch
    meter = DetectionMeter(SimpleNamespace(decode=decode))
    for i in range(len(val)):
        _, target = val[i]
        boxes = torch.tensor([b[0] for b in index.annotations[i]]).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # the file's boxes, in this configuration's pixels
        pending[:] = [{"boxes": boxes * target["scale"], "scores": torch.ones(len(boxes)),
                       "labels": torch.tensor([b[1] for b in index.annotations[i]])}]
        meter.update([[torch.zeros(1, 2)]], [target], config)
    written = sorted((g["image_id"], *g["bbox"]) for g in data["annotations"])
    scored = sorted((g[0], *g[1:5]) for g in meter.ground_truth)
    np.testing.assert_allclose(np.array(scored), np.array(written), atol=1e-4)
    assert meter.result() == {"map": 100.0, "ap50": 100.0}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(images="x"), "'images' is missing or not a list"),
    (lambda d: d["annotations"][0].update(category_id=99), "category_id 99"),
    (lambda d: d["annotations"][0].update(bbox=[0, 0, -1, 2]), "needs a bbox"),
])
def test_bad_annotations_are_one_line_data_errors(coco_root, change, message):
    data = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    change(data)
    with pytest.raises(DataError, match=message):
        parse_coco(data, "instances_val.json")


@pytest.mark.parametrize("task, change, message", [
    ("detection", lambda d: d.update(images=[], annotations=[]),
     r"instances_val.json lists no images; both splits need some"),
    ("segmentation", lambda d: d.update(images=[], annotations=[]),
     r"instances_val.json lists no images"),
    ("detection", lambda d: [a.update(iscrowd=1) for a in d["annotations"]],
     r"instances_val.json has no boxes \(other than crowd regions\) to score detections"),
    ("detection", lambda d: d.update(annotations=[]), r"has no boxes"),
])
def test_a_validation_split_with_nothing_to_score_is_refused(coco_root, tmp_path, task, change,
                                                              message):
    """Scores over no images or no boxes would read as real zeros in the table."""
    import shutil

    from mutualnet.config import DataConfig
    from mutualnet.data import build_datasets

    root = tmp_path / "coco"
    shutil.copytree(coco_root, root)
    path = root / "annotations" / "instances_val.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        build_datasets(DataConfig(format="coco", root=str(root)), 32, task)


def test_boxes_detection_cannot_use_are_named_in_one_warning(coco_root, caplog):
    """A box of zero size, or wholly outside its image, is no target; the reader says so."""
    data = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    data["annotations"][1]["bbox"] = [70, 5, 10, 10]  # the images are 64 x 48
    data["annotations"][3]["bbox"] = [5, 5, 0, 10]
    data["annotations"][4]["bbox"] = [-20, -20, 10, 10]
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        parse_coco(data, "instances_val.json")
    assert ("instances_val.json: 3 box(es) of zero size or wholly outside their image are not "
            "used: annotations[1], annotations[3], annotations[4]") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        parse_coco(data, "instances_val.json", need_masks=True)  # masks, not boxes
        parse_coco(json.loads((coco_root / "annotations" / "instances_val.json").read_text()),
                   "instances_val.json")
    assert caplog.text == ""


@pytest.mark.parametrize("segmentation, iscrowd, message", [
    ({"size": [48, 64], "counts": [5, -3, 10]}, 1, "annotations[0] has an RLE segmentation"),
    ({"size": [10, 10], "counts": [100]}, 1, "annotations[0] has an RLE mask of size [10, 10]"),
    ({"size": [48, 64], "counts": "caf\u00e9"}, 0, "annotations[0] has an RLE segmentation"),
    ([[0, 0, 1e12, 0, 1e12, 1e12]], 0, "annotations[0] has a polygon point far outside"),
    ([[0, 0, 10, 0, 10, 10]], "yes", "annotations[0] has iscrowd 'yes'"),
    ([[0, 0, 10, 0, 10]], 0, "annotations[0] has a polygon (segmentation[0]) of 5 "
                             "coordinates, an odd number"),
    ([[0, 0, 10, 0]], 0, "annotations[0] has a polygon (segmentation[0]) of fewer than 3"),
    ([], 0, "annotations[0] has no segmentation; segmentation needs polygons or RLE"),
    ({"counts": "x"}, 0, "annotations[0] has an RLE segmentation without a size"),
])
def test_bad_masks_are_found_when_the_file_is_read(coco_root, segmentation, iscrowd, message):
    """Masks pycocotools would crash on (a segfault for huge polygon coordinates), reject
    late or misread are refused by the reader, naming the annotation."""
    data = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    data["annotations"][0].update(segmentation=segmentation, iscrowd=iscrowd)
    with pytest.raises(DataError, match=re.escape(message)):
        parse_coco(data, "instances_val.json", need_masks=True)


def test_masks_pycocotools_cannot_decode_are_one_line_errors_naming_the_image(coco_root):
    from mutualnet.data.coco import rasterise

    with pytest.raises(DataError, match=re.escape("img0.png: a segmentation cannot be decoded")):
        rasterise([([0, 0, 4, 4], 0, True, {"size": [8, 8], "counts": [5, -3, 10]})], 8, 8,
                  "instances_val.json: img0.png")


def test_synthetic_scenes_are_deterministic_and_written_as_coco(tmp_path):
    from mutualnet.data.coco import find_split, read_coco
    from mutualnet.data.scenes import make_scenes

    make_scenes.cache_clear()
    a, pa = make_scenes(6, 64, 3, "val")
    make_scenes.cache_clear()
    b, pb = make_scenes(6, 64, 3, "val")
    assert a == b and all(np.array_equal(x, y) for x, y in zip(pa, pb))
    assert a["annotations"] and all(0 < ann["bbox"][2] <= 64 for ann in a["annotations"])
    done = cli("make-scenes", tmp_path, "--train", 4, "--val", 6, "--size", 64, "--seed", 3)
    assert done.returncode == 0, done.stderr
    path, folder = find_split(tmp_path, "val")
    index = read_coco(path, need_masks=True)
    assert len(index.images) == 6 and len(index.class_names) == 10
    data = CocoDataset(index, "segmentation", 64, [0.5] * 3, [0.25] * 3, train=False,
                       image_dir=folder)
    _, mask = data[0]
    from pycocotools import mask as mask_utils

    first = [ann for ann in a["annotations"] if ann["image_id"] == 1]
    for ann in first:  # the reader's mask is the generator's
        m = mask_utils.decode({"size": ann["segmentation"]["size"],
                               "counts": ann["segmentation"]["counts"].encode()})
        assert torch.all(mask[torch.from_numpy(m) > 0] == ann["category_id"])


# ------------------------------------------------------------------------------------------
# the whole path through the CLI


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mutualnet", *map(str, args)],
                          capture_output=True, text=True, env=env)


def recipe(tmp_path: Path, task: str, root: Path, **extra) -> Path:
    cfg = {
        "task": task,
        "model": {"name": "mobilenet_v2", "options": BACKBONE, "head": HEADS[task]},
        "space": {"width_range": [0.5, 1.0], "resolutions": [64, 48]},
        "data": {"format": "coco", "root": str(root), "augment": "none", "num_workers": 0},
        "optim": {"lr": 0.05},
        "train": {"epochs": 1, "batch_size": 8, "progress": False, "log_every": 1,
                  "validate": False},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        cfg[section][name] = value
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def dense_runs(tmp_path_factory, coco_root):
    tmp = tmp_path_factory.mktemp("dense_runs")
    runs = {}
    for task in ("detection", "segmentation"):
        run = tmp / task
        done = cli("train", recipe(tmp, task, coco_root), "--out", run, "--max-steps", "2")
        assert done.returncode == 0, done.stderr
        runs[task] = run
    return runs


@pytest.mark.parametrize("task, metric", [("detection", "map"), ("segmentation", "miou")])
def test_train_calibrate_evaluate_select_through_the_cli(dense_runs, task, metric):
    run = dense_runs[task]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2]
    assert all(np.isfinite(r["loss_full"]) and np.isfinite(r["loss_distill"])
               for r in log if r["kind"] == "train")
    grid = ["--widths", "0.5,1.0", "--batches", "1"]
    done = cli("calibrate", run, *grid)
    assert done.returncode == 0, done.stderr
    done = cli("evaluate", run, *grid, "--batch-size", "4")
    assert done.returncode == 0, done.stderr
    rows = json.loads((run / "grid.json").read_text())
    assert len(rows) == 4 and all(0 <= r[metric] <= 100 and r["mmacs"] > 0 for r in rows)
    assert metric in (run / "grid.csv").read_text().splitlines()[0].split(",")
    assert metric in (run / "query_table.md").read_text()
    done = cli("select", run, "--max-mmacs", max(r["mmacs"] for r in rows))
    assert done.returncode == 0, done.stderr
    chosen = json.loads(done.stdout)
    assert chosen[metric] == max(r[metric] for r in rows)


def test_onnx_export_of_a_dense_subnet_checks_every_output(dense_runs, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "det.onnx"
    done = cli("export", dense_runs["detection"], "--width", "0.5", "--resolution", "48",
               "--format", "onnx", "-o", out)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["max_abs_diff_vs_torch"] <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["cls_0", "box_0", "ctr_0", "cls_1", "box_1", "ctr_1", "cls_2", "box_2",
                     "ctr_2"]
    outputs = session.run(None, {"images": np.zeros((3, 3, 48, 48), dtype=np.float32)})
    assert outputs[0].shape == (3, 2, 6, 6)


def test_torchscript_and_safetensors_exports_of_a_segmenter_match_the_subnet(dense_runs,
                                                                             tmp_path):
    from mutualnet.export import export_run, load_exported
    from mutualnet.run import load_run

    run = load_run(dense_runs["segmentation"])
    config = Config(0.75, 48)
    export_run(run, config, "torchscript", tmp_path / "seg.pt")
    export_run(run, config, "safetensors", tmp_path / "seg.safetensors")
    run.model.set_config(config)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        want = run.model(x)
        torch.testing.assert_close(torch.jit.load(tmp_path / "seg.pt")(x), want, atol=1e-4,
                                   rtol=1e-4)
        loaded = load_exported(tmp_path / "seg.safetensors")
        torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=1e-5)
    # class 0 is the background; the others are the categories in id order
    assert loaded.export_meta["category_ids"] == [None, 3, 7]
    extra = {"mutualnet.json": ""}
    torch.jit.load(tmp_path / "seg.pt", _extra_files=extra)
    assert json.loads(extra["mutualnet.json"])["category_ids"] == [None, 3, 7]


def test_adaptive_model_and_latency_work_for_a_segmenter(dense_runs):
    from mutualnet import AdaptiveModel
    from mutualnet.evaluate import measure_latency

    model = AdaptiveModel.load(dense_runs["segmentation"])
    row = model.set_budget(mmacs=1e9)
    logits = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 3, row["resolution"], row["resolution"])
    static = model.model.subnet(0.5, 48).eval()
    assert measure_latency(static, (1, 3, 48, 48), torch.device("cpu"), 1, 2) > 0


def test_backbone_weights_come_from_a_classification_run_and_must_fit(tmp_path):
    from mutualnet.config import load_config
    from mutualnet.train import train
    from mutualnet.train.loop import build_model, load_backbone_weights

    options = json.dumps(BACKBONE)
    base = ["model.name=mobilenet_v2", f"model.options={options}", "data.format=synthetic",
            "data.num_workers=0", "space.width_range=[0.5, 1.0]", "space.resolutions=[32]",
            "space.num_random=0", "train.batch_size=8", "train.max_steps=1", "train.progress=false",
            "train.validate=false"]
    train(load_config(None, base), tmp_path / "cls")
    cfg = load_config(None, ["task=detection", "data.format=scenes", "data.augment=none",
                             f"model.options={options}", "space.width_range=[0.5, 1.0]",
                             f"model.head={json.dumps(HEADS['detection'])}"])
    model = build_model(cfg, 10, 3)
    load_backbone_weights(model, str(tmp_path / "cls"))
    from mutualnet.run import load_run

    source = load_run(tmp_path / "cls").model.features.state_dict()
    for key, value in model.features.body.state_dict().items():
        if ".calibrated." not in key:
            assert torch.equal(value, source[key]), key
    wider = load_config(None, ["task=detection", "data.format=scenes", "data.augment=none",
                               f"model.options={options}", "space.width_range=[0.5, 1.5]"])
    with pytest.raises(ConfigError, match="does not fit this backbone"):
        load_backbone_weights(build_model(wider, 10, 3), str(tmp_path / "cls"))


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, \
        done.stderr
    return lines[0]


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "annotations" / "instances_val.json").write_text("{not json"),
     "is not valid JSON"),
    (lambda root: (root / "val" / "img3.png").unlink(), "img3.png listed in"),
    (lambda root: (root / "annotations" / "instances_val.json").write_text(
        (root / "annotations" / "instances_val.json").read_text().replace(
            '"category_id": 7', '"category_id": 70')), "category_id 70"),
])
def test_bad_coco_data_stops_the_cli_with_one_line_and_keeps_results(
        dense_runs, tmp_path, damage, message):
    import shutil

    root = tmp_path / "data"
    write_coco(root, "train", 4, seed=1)
    data = write_coco(root, "val", 4, seed=2)
    if "70" in message and not any(a["category_id"] == 7 for a in data["annotations"]):
        pytest.skip("no bar in this sample")
    damage(root)
    run = tmp_path / "run"
    shutil.copytree(dense_runs["detection"], run)
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    line = _one_error_line(cli("evaluate", run, "--data", root, "--widths", "1.0"))
    assert message in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == kept
    line = _one_error_line(cli("train", recipe(tmp_path, "detection", root), "--out",
                               tmp_path / "new", "--max-steps", "1"))
    assert message in line


# ------------------------------------------------------------------------------------------
# metrics merged over processes (two gloo processes, as in a distributed validation)


def _records(seed: int, images: range):
    """Ground truth and noisy, scored detections of ``images`` (COCO rows, 3 classes)."""
    g = torch.Generator().manual_seed(seed)
    ground_truth, detections = [], []
    for i in images:
        for _ in range(2):
            x, y = (torch.rand(2, generator=g) * 60).tolist()
            w, h = (10 + torch.rand(2, generator=g) * 30).tolist()
            label = int(torch.randint(3, (1,), generator=g))
            ground_truth.append([i, x, y, w, h, label, 0])
            jitter = (torch.randn(4, generator=g) * 3).tolist()
            detections.append([i, x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3],
                               float(torch.rand(1, generator=g)), label])
        detections.append([i, 5.0, 5.0, 20.0, 20.0, 0.3, 1])  # a false positive
    return list(images), ground_truth, detections


def _merge_in_process(rank: int, world: int, init: str, shards: list, out: str) -> None:
    import torch.distributed as dist

    from mutualnet.train.distributed import Distributed

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    group = Distributed(rank, world)
    try:
        all_reduce = group.all_reduce_sum
        detection = DetectionTask(strides=[8]).meter()
        images = shards[rank]["images"]
        if images:
            detection.images = images
            detection.ground_truth, detection.detections = shards[rank]["gt"], shards[rank]["dt"]
            detection.num_classes = 3
        detection.reduce(all_reduce)
        segmentation = SegmentationTask().meter()
        if shards[rank]["confusion"] is not None:
            segmentation.confusion = torch.tensor(shards[rank]["confusion"])
        segmentation.reduce(all_reduce)
        Path(f"{out}.{rank}").write_text(json.dumps({**detection.result(),
                                                     **segmentation.result()}))
    finally:
        group.shutdown(wait=True)


@pytest.mark.parametrize("empty_rank", [False, True])
def test_metrics_merged_over_two_processes_equal_one_process_seeing_everything(tmp_path,
                                                                               empty_rank):
    """Each process holds a strided shard of the validation images (the last may hold none);
    after the merge every process reports what one process with all images reports."""
    images, gt, dt = _records(0, range(12))
    confusion = torch.randint(0, 50, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    shards = []
    for rank in range(2):
        if empty_rank:  # rank 0 saw every image, rank 1 none
            mine, parts = (images, [0, 1]) if rank == 0 else ([], [])
        else:  # the strided shards of a distributed validation
            mine, parts = images[rank::2], [rank]
        shards.append({"images": mine, "gt": [r for r in gt if r[0] in mine],
                       "dt": [r for r in dt if r[0] in mine],
                       "confusion": confusion[parts].sum(0).tolist() if parts else None})
    torch.multiprocessing.spawn(_merge_in_process, args=(2, f"file://{tmp_path / 'init'}",
                                                         shards, str(tmp_path / "out")),
                                nprocs=2, join=True)
    expected = {**coco_map(images, gt, dt, 3), **mean_iou(confusion.sum(0))}
    assert 10 < expected["map"] < 95  # a metric the merge can get wrong
    for rank in range(2):
        got = json.loads((tmp_path / f"out.{rank}").read_text())
        assert got == pytest.approx(expected, abs=1e-9), rank
