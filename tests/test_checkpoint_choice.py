"""The network a training run keeps: of the checkpoint ranked best during training (at the
default thresholds) and the final weights, the better at its own chosen thresholds."""

from __future__ import annotations

import json

import torch

from instasam.model.unet import NucleiUNet, net_from_payload, save_net
from instasam.pretrained import DEFAULT_MODEL, pretrained_path
from instasam.training.loop import BEST, NetTrainState, _finish
from instasam.training.validation import ValTile
from tests.test_pretrained import _test_crop


def _trained_and_untrained():
    path = pretrained_path(DEFAULT_MODEL)
    trained, config = net_from_payload(torch.load(path, weights_only=False), path)
    torch.manual_seed(0)
    return trained.float().eval(), NucleiUNet(config.net).eval(), config


def _finished(run, ranked_best, final, config, final_step=1500):
    """``_finish`` after a run whose best-ranked checkpoint (step 500) is ``ranked_best``
    and whose last EMA weights are ``final``; the kept payload and the comparison made."""
    image, labels = _test_crop()
    save_net(run / BEST, ranked_best, config, step=500, val={"aji": 0.9})
    state = NetTrainState(step=final_step, best_aji=0.9, best_step=500)
    _finish(run, config, final, [ValTile("crop", image, labels)], "fp32", state, None, "cpu")
    kept = torch.load(run / BEST, weights_only=False)
    return kept, state, json.loads((run / "checkpoint_choice.json").read_text())


def _same_weights(state, net):
    return all(torch.equal(state[k], v.detach()) for k, v in net.state_dict().items())


def test_the_final_weights_are_kept_when_they_are_better_at_their_own_thresholds(tmp_path):
    trained, untrained, config = _trained_and_untrained()
    kept, state, compared = _finished(tmp_path, untrained, trained, config)
    assert kept["step"] == 1500 and _same_weights(kept["state"], trained)
    assert kept["val"]["aji"] > 0.5 and "val_default" not in kept
    assert [c["step"] for c in compared] == [500, 1500]
    assert compared[1]["val_aji_tuned"] > compared[0]["val_aji_tuned"]
    assert state.best_step == 1500 and state.best_aji == kept["val"]["aji"]


def test_the_ranked_best_checkpoint_stays_when_it_is_the_better(tmp_path):
    trained, untrained, config = _trained_and_untrained()
    kept, state, compared = _finished(tmp_path, trained, untrained, config)
    assert kept["step"] == 500 and _same_weights(kept["state"], trained)
    assert kept["val_default"] == {"aji": 0.9} and state.best_step == 500
    assert [c["step"] for c in compared] == [500, 1500]


def test_nothing_is_compared_when_the_best_is_the_final_step(tmp_path):
    trained, _, config = _trained_and_untrained()
    kept, _, compared = _finished(tmp_path, trained, trained, config, final_step=500)
    assert kept["step"] == 500 and [c["step"] for c in compared] == [500]
