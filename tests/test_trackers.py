"""Validation images reach TensorBoard and W&B through their public APIs, recognised by callback class."""

import sys
import types

import numpy as np
from PIL import Image
from transformers.integrations import TensorBoardCallback, WandbCallback

from trl_rpo.trainer.trackers import send_images_to_trackers

IMAGES = [Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("L", (8, 6), 128)]


class Writer:
    def __init__(self):
        self.calls = []

    def add_images(self, tag, array, step, dataformats):
        self.calls.append((tag, array, step, dataformats))


def test_tensorboard_subclasses_get_images_and_unrelated_callbacks_are_skipped():
    class MyTensorBoard(TensorBoardCallback):  # a subclass: matching on the class name would miss it
        def __init__(self):  # no tensorboard install needed: the writer is all that is used
            self.tb_writer = Writer()

    class TensorBoardCallbackLookalike:  # the old name match would have taken it
        def __init__(self):
            self.tb_writer = Writer()

    tensorboard, lookalike = MyTensorBoard(), TensorBoardCallbackLookalike()
    assert send_images_to_trackers([lookalike, tensorboard], IMAGES, ["a", "b"], 7, "validation") == ["tensorboard"]
    ((tag, array, step, layout),) = tensorboard.tb_writer.calls
    assert (tag, step, layout) == ("validation", 7, "NHWC") and array.shape == (2, 6, 8, 3)
    assert np.array_equal(array[0, 0, 0], [255, 0, 0]) and np.array_equal(array[1, 0, 0], [128, 128, 128])
    assert lookalike.tb_writer.calls == []


def test_wandb_gets_images_with_captions_through_the_wandb_module(monkeypatch):
    logged = []
    fake = types.SimpleNamespace(
        run=object(), Image=lambda image, caption: ("image", image.size, caption),
        log=lambda data, step: logged.append((data, step)),
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "wandb", fake)
    callback = WandbCallback.__new__(WandbCallback)  # __init__ would need the real wandb
    assert send_images_to_trackers([callback], IMAGES, ["a", "b"], 3, "samples") == ["wandb"]
    assert logged == [({"samples": [("image", (8, 6), "a"), ("image", (8, 6), "b")]}, 3)]
    fake.run = None  # no active run: nothing is logged
    assert send_images_to_trackers([callback], IMAGES, ["a", "b"], 4, "samples") == []
