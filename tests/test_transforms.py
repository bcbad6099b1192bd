import random

import torch
from PIL import Image

from trl_rpo.data.transforms import prepare_image, prepare_pair


def test_center_crop_records_original_size_and_offset():
    image = Image.new("RGB", (64, 32))  # width 64, height 32
    out = prepare_image(image, 16)
    assert out.pixel_values.shape == (3, 16, 16)
    assert out.original_size == (32, 64)
    assert out.crop_top_left == (0, 8)  # resized to 32x16, centred window starts 8 px in


def test_pixels_are_scaled_to_minus_one_one():
    out = prepare_image(Image.new("RGB", (8, 8), (255, 0, 0)), 8)
    assert torch.allclose(out.pixel_values[0], torch.ones(8, 8))
    assert torch.allclose(out.pixel_values[1], -torch.ones(8, 8))


def test_pair_gets_same_crop_and_flip():
    left_white = Image.new("RGB", (40, 20), (0, 0, 0))
    left_white.paste((255, 255, 255), (0, 0, 10, 20))
    rng = random.Random(0)
    for _ in range(10):
        a, b = prepare_pair(left_white, left_white.copy(), 20, random_crop=True, random_flip=True, rng=rng)
        assert a.crop_top_left == b.crop_top_left
        assert torch.equal(a.pixel_values, b.pixel_values)
