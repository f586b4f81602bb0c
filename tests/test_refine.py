"""Self-training labels: a prediction checked against the points."""

import numpy as np

from instasam import IGNORE
from instasam.pseudo_labels.refine import instances_vouched_by_points, refined_labels


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_each_predicted_instance_takes_its_points_id_or_becomes_background():
    pred = np.zeros((40, 60), dtype=np.int32)
    pred[_disk(pred.shape, 10, 10, 5)] = 7  # holds point 2
    pred[_disk(pred.shape, 30, 40, 5)] = 3  # holds no point: not a nucleus
    points = np.array([[50.0, 5.0], [10.0, 10.0]])  # (x, y); point 1 lies on background
    out = instances_vouched_by_points(pred, points)
    assert set(np.unique(out)) == {0, 2}
    assert np.array_equal(out == 2, pred == 7)


def test_an_instance_holding_two_points_is_split_between_them():
    pred = np.zeros((30, 60), dtype=np.int32)
    pred[10:20, 10:50] = 1  # one elongated blob over two nuclei
    points = np.array([[15.0, 15.0], [45.0, 15.0]])
    out = instances_vouched_by_points(pred, points)
    assert set(np.unique(out[pred == 1])) == {1, 2}
    assert (out[10:20, 10:29] == 1).all() and (out[10:20, 31:50] == 2).all()
    assert (out[pred == 0] == 0).all()


def test_a_point_the_prediction_missed_keeps_its_previous_label():
    shape = (40, 40)
    pred = np.zeros(shape, dtype=np.int32)
    pred[_disk(shape, 10, 10, 4)] = 1
    previous = np.zeros(shape, dtype=np.int32)
    previous[_disk(shape, 10, 10, 3)] = 1  # smaller mask of the same nucleus
    previous[_disk(shape, 30, 30, 4)] = 2  # a nucleus the prediction missed
    points = np.array([[10.0, 10.0], [30.0, 30.0]])
    out = refined_labels(pred, points, previous)
    assert np.array_equal(out == 1, pred == 1)  # the prediction wins where it has the nucleus
    assert np.array_equal(out == 2, previous == 2)
    assert not (out == IGNORE).any()


def test_a_point_nobody_labelled_is_ignored_around_not_taught_as_background():
    shape = (40, 40)
    pred = np.zeros(shape, dtype=np.int32)
    previous = np.full(shape, IGNORE, dtype=np.int32)
    previous[:, :5] = 0
    points = np.array([[20.0, 20.0]])
    out = refined_labels(pred, points, previous, ignore_radius=6)
    assert out[20, 20] == IGNORE and out[20, 26] == IGNORE and out[20, 27] == 0
    assert (out >= IGNORE).all() and not (out > 0).any()


def test_previous_labels_never_overwrite_a_predicted_nucleus():
    shape = (30, 30)
    pred = np.zeros(shape, dtype=np.int32)
    pred[5:15, 5:15] = 4
    previous = np.zeros(shape, dtype=np.int32)
    previous[10:20, 10:20] = 2  # point 2's old mask overlaps point 1's predicted nucleus
    points = np.array([[8.0, 8.0], [18.0, 18.0]])
    out = refined_labels(pred, points, previous)
    assert (out[5:15, 5:15] == 1).all()
    assert (out[15:20, 15:20] == 2).all()


def test_boxes_of_nuclei_are_pixel_index_extents_grown_by_the_margin():
    from instasam.pseudo_labels.sam import boxes_of_nuclei

    labels = np.zeros((12, 12), dtype=np.int32)
    labels[2:5, 3:8] = 1  # rows 2-4, columns 3-7
    labels[9, 9] = 3
    boxes = boxes_of_nuclei(labels, n_points=3, margin=2.0)
    assert boxes[0].tolist() == [1.0, 0.0, 9.0, 6.0]
    assert np.isnan(boxes[1]).all()  # point 2's nucleus has no pixel
    assert boxes[2].tolist() == [7.0, 7.0, 11.0, 11.0]


def test_given_boxes_reach_the_decoder_and_the_other_points_are_prompted_as_for_s():
    import torch

    from instasam.config import InstaSAMConfig, PseudoLabelConfig, TrainConfig
    from instasam.model.instasam import Prompts, build_model
    from instasam.pseudo_labels.sam import prompt_logits

    torch.manual_seed(0)
    model = build_model(InstaSAMConfig(train=TrainConfig(backbone="litemedsam_tiny"))).eval()
    embedding = model.encode(torch.rand(1, 3, model.crop_size, model.crop_size) * 255).embedding
    config = PseudoLabelConfig(decoder_window=None)
    points = torch.tensor([[40.0, 50.0], [120.0, 90.0], [200.0, 30.0]])
    boxes = torch.tensor([[30.0, 41.0, 52.0, 60.0], [float("nan")] * 4, [190.0, 20.0, 214.0, 39.0]])
    with torch.no_grad():
        logits, sides = prompt_logits(model, embedding, points, config, True, boxes=boxes)
        scale = model.input_size / model.crop_size
        direct, _ = model.prompted_masks(embedding, Prompts(boxes=boxes[[0, 2]] * scale), True)
        as_s, side_s = prompt_logits(model, embedding, points[1:2], config, True)
    assert torch.allclose(logits[[0, 2]], direct, atol=1e-5)
    assert torch.allclose(logits[1:2], as_s, atol=1e-5)
    assert sides.tolist()[0] == 22.0 and sides[1] == side_s[0] and sides.tolist()[2] == 24.0
