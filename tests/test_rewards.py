import math

import numpy as np
import pytest
import torch
from PIL import Image

from trl_rpo.rewards import (
    AestheticMLP,
    AestheticScorer,
    combine_rewards,
    jpeg_compressibility,
    jpeg_incompressibility,
    load_state_dict_file,
    reward_name,
)
from trl_rpo.testing import (
    tiny_aesthetic_scorer,
    tiny_clip_model,
    tiny_clip_processor,
    tiny_clip_scorer,
    tiny_pickscore_scorer,
)


def _images(n=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _flat(color=(120, 120, 120), size=32):
    return Image.new("RGB", (size, size), color)


def test_combine_rewards_is_the_weighted_sum_and_keeps_each_function():
    def ones(images, prompts, **kwargs):
        return [1.0] * len(images)

    def index(images, prompts, **kwargs):
        return [float(i) for i in range(len(images))]

    total, per = combine_rewards([ones, index], [2.0, 0.5], _images(3), ["a"] * 3)
    assert torch.allclose(total, torch.tensor([2.0, 2.5, 3.0]))
    assert set(per) == {"ones", "index"} and per["index"].tolist() == [0.0, 1.0, 2.0]


def test_combine_rewards_names_the_function_that_returned_the_wrong_count():
    def short(images, prompts, **kwargs):
        return [1.0]

    with pytest.raises(ValueError, match="'short' returned 1 values for 3 images"):
        combine_rewards([short], [1.0], _images(3), ["a"] * 3)


def test_combine_rewards_rejects_non_finite_values_naming_the_image():
    def broken(images, prompts, **kwargs):
        return [0.0, math.nan]

    with pytest.raises(ValueError, match="'broken'.*image 1"):
        combine_rewards([broken], [1.0], _images(2), ["a"] * 2)


def test_duplicate_reward_names_are_made_unique():
    _, per = combine_rewards([jpeg_compressibility, jpeg_compressibility], [1.0, 1.0], _images(2), ["a"] * 2)
    assert set(per) == {"jpeg_compressibility", "jpeg_compressibility_2"}


def test_reward_name_of_functions_lambdas_and_scorers():
    assert reward_name(jpeg_compressibility) == "jpeg_compressibility"
    assert reward_name(lambda images, prompts: []) == "reward"
    assert reward_name(tiny_clip_scorer()) == "clip_score"


def test_jpeg_compressibility_prefers_flat_images_and_incompressibility_noisy_ones():
    flat, noisy = _flat(), _images(1)[0]
    smooth_score, noisy_score = jpeg_compressibility([flat, noisy])
    assert smooth_score > noisy_score
    assert jpeg_incompressibility([flat, noisy]) == [-smooth_score, -noisy_score]


@pytest.mark.parametrize("build", [tiny_aesthetic_scorer, tiny_clip_scorer, tiny_pickscore_scorer])
def test_scorers_give_the_same_values_on_pil_images_and_tensors(build):
    scorer = build()
    images = _images(2)
    tensor = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 255
    from_pil = scorer(images, ["a cat", "a dog"])
    from_tensor = scorer.score_tensor(tensor, ["a cat", "a dog"])
    assert len(from_pil) == 2
    np.testing.assert_allclose(from_pil, from_tensor.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build", [tiny_aesthetic_scorer, tiny_clip_scorer, tiny_pickscore_scorer])
def test_scorers_are_differentiable_with_respect_to_pixels_of_any_size(build):
    pixels = torch.rand(2, 3, 48, 40, requires_grad=True)
    build().score_tensor(pixels, ["a cat", "a dog"]).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_clip_score_depends_on_the_prompt():
    scorer = tiny_clip_scorer()
    image = _images(1)
    assert scorer(image, ["a red square"]) != scorer(image, ["zzzz qqqq"])


def test_pickscore_is_the_logit_scaled_clip_similarity_of_the_same_model():
    clip, pick = tiny_clip_scorer(seed=3), tiny_pickscore_scorer(seed=3)
    images = _images(2)
    scale = pick.backbone.clip.logit_scale.exp().item()
    np.testing.assert_allclose(pick(images, ["a", "b"]), np.array(clip(images, ["a", "b"])) * scale, rtol=1e-5)


def _tiny_clip_folder(tmp_path):
    folder = tmp_path / "clip"
    tiny_clip_model(seed=0).save_pretrained(folder)
    tiny_clip_processor().save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_aesthetic_scorer_loads_clip_and_head_from_files(tmp_path, suffix):
    head = AestheticMLP(32)
    path = tmp_path / f"head{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(head.state_dict(), path)
    else:
        torch.save(head.state_dict(), path)
    scorer = AestheticScorer(clip_model=_tiny_clip_folder(tmp_path), head=str(path))
    reference = AestheticScorer(clip_model=tiny_clip_model(seed=0), head=head, processor=tiny_clip_processor())
    np.testing.assert_allclose(scorer(_images(2)), reference(_images(2)), rtol=1e-5)


def test_aesthetic_head_is_found_by_filename_inside_a_folder(tmp_path):
    (tmp_path / "head").mkdir()
    torch.save(AestheticMLP(32).state_dict(), tmp_path / "head" / "aesthetic-model.pth")
    scorer = AestheticScorer(
        clip_model=tiny_clip_model(), head=str(tmp_path / "head"), processor=tiny_clip_processor()
    )
    assert len(scorer(_images(1))) == 1


def test_aesthetic_head_with_the_wrong_layout_is_refused(tmp_path):
    path = tmp_path / "head.pth"
    torch.save(AestheticMLP(64).state_dict(), path)
    with pytest.raises(ValueError, match="LAION MLP layout for dim 32"):
        AestheticScorer(clip_model=tiny_clip_model(), head=str(path), processor=tiny_clip_processor())


class _Payload:
    def __reduce__(self):
        return (print, ("this would run arbitrary code",))


def test_weight_files_that_are_not_plain_tensors_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"layers.0.weight": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict_file(str(path))


def test_missing_weight_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_state_dict_file(str(tmp_path / "nope.safetensors"))


def test_numpy_and_tensor_rewards_are_accepted():
    def numpy_values(images, prompts, **kwargs):
        return np.array([0.5, 1.5], dtype=np.float32)

    def tensor_values(images, prompts, **kwargs):
        return torch.tensor([1.0, 2.0])

    total, _ = combine_rewards([numpy_values, tensor_values], [1.0, 1.0], _images(2), ["a"] * 2)
    assert total.tolist() == [1.5, 3.5]


def test_boolean_rewards_are_refused():
    def labels(images, prompts, **kwargs):
        return [True, False]

    with pytest.raises(ValueError, match="'labels'.*image 0"):
        combine_rewards([labels], [1.0], _images(2), ["a"] * 2)


def test_a_scorer_without_weights_runs_on_the_cpu():
    from trl_rpo.rewards import RewardScorer

    class Brightness(RewardScorer):
        name = "brightness"

        def score_tensor(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    scores = Brightness()([_flat((255, 255, 255)), _flat((0, 0, 0))], ["a", "b"])
    assert scores == [1.0, 0.0]
