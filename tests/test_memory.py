"""The memory guide's counting, checked against real tensors on the tiny models, and its rows for the real models."""

import pytest
import torch

from trl_rpo.memory import (
    GiB,
    MemoryEstimate,
    TrainingSetup,
    activation_profile,
    count_parameters,
    estimate_training_memory,
    lora_parameter_count,
    modelled_and_measured_peak,
    on_meta,
    saved_activation_bytes,
    small_unet_config,
)
from trl_rpo.memory_guide import fits_card, memory_guide
from trl_rpo.models import flux_latent_image_ids
from trl_rpo.testing import tiny_flux_pipeline, tiny_lora_config, tiny_sd3_pipeline, tiny_sdxl_pipeline


def _unet_inputs(unet, device="cpu"):
    size = unet.config.sample_size
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return dict(
        sample=torch.randn(2, unet.config.in_channels, size, size).to(device),
        timestep=torch.tensor([3, 700]).to(device),
        encoder_hidden_states=torch.randn(2, 5, unet.config.cross_attention_dim).to(device),
        added_cond_kwargs={"text_embeds": torch.randn(2, pooled).to(device), "time_ids": torch.ones(2, 6).to(device)},
    )


def _meta_copy(unet):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(**unet.config)


def test_parameter_count_on_meta_equals_the_real_model():
    unet = tiny_sdxl_pipeline().unet
    assert count_parameters(lambda: _meta_copy(unet)) == sum(p.numel() for p in unet.parameters())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activations_counted_on_meta_match_those_saved_by_a_real_forward(checkpointing):
    unet = tiny_sdxl_pipeline().unet.train()
    meta = _meta_copy(unet).train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
        meta.enable_gradient_checkpointing()
    real = saved_activation_bytes(lambda: unet(**_unet_inputs(unet)).sample)
    estimated = saved_activation_bytes(lambda: meta(**_unet_inputs(meta, "meta")).sample, dtype_bytes=4)
    assert real > 0
    assert estimated == pytest.approx(real, rel=0.1)


def test_gradient_checkpointing_saves_fewer_activations():
    unet = tiny_sdxl_pipeline().unet.train()
    full = saved_activation_bytes(lambda: unet(**_unet_inputs(unet)).sample)
    unet.enable_gradient_checkpointing()
    assert saved_activation_bytes(lambda: unet(**_unet_inputs(unet)).sample) < full / 2


def test_lora_parameter_count_matches_peft():
    unet = tiny_sdxl_pipeline().unet
    expected = lora_parameter_count(unet, rank=4)
    unet.requires_grad_(False)
    unet.add_adapter(tiny_lora_config(r=4))
    assert expected == sum(p.numel() for p in unet.parameters() if p.requires_grad)


def test_gradient_and_optimizer_bytes_match_a_real_adamw_step():
    unet = tiny_sdxl_pipeline().unet.train()
    params = sum(p.numel() for p in unet.parameters())
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    unet(**_unet_inputs(unet)).sample.mean().backward()
    optimizer.step()
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in unet.parameters())
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim())
    estimate = estimate_training_memory(TrainingSetup("full", lora=False), params, 0, 0, 0)
    assert estimate.gradients == grad_bytes  # float32 gradients
    assert estimate.optimizer == state_bytes  # two float32 moments


def test_zero_stages_divide_what_they_shard():
    base = dict(unet_params=1000, encoder_params=0, activation_bytes=0, checkpointed_activation_bytes=0)
    plain = estimate_training_memory(TrainingSetup("a", lora=False), **base)
    zero2 = estimate_training_memory(TrainingSetup("b", lora=False, zero_stage=2, num_gpus=4), **base)
    zero3 = estimate_training_memory(TrainingSetup("c", lora=False, zero_stage=3, num_gpus=4), **base)
    assert zero2.optimizer == plain.optimizer / 4 and zero2.weights == plain.weights
    assert zero3.weights < zero2.weights and zero3.optimizer == zero2.optimizer


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: the modelled totals are GPU bytes, measured with torch.cuda.max_memory_allocated",
)
@pytest.mark.parametrize("lora_rank", [8, None], ids=["lora", "full"])
def test_modelled_total_is_close_to_the_measured_cuda_peak_of_a_step(lora_rank):
    modelled, measured = modelled_and_measured_peak(small_unet_config(), lora_rank, latent_side=32)
    assert modelled.total > 64 * 2**20  # large enough that allocator rounding and workspaces do not dominate
    # The model adds every category at once; at the real peak some are not all alive (gradients grow while
    # activations are freed), and temporaries (attention scores, cuBLAS workspace) come on top.
    assert 0.6 <= measured / modelled.total <= 1.3, (modelled.row(), measured / 2**30)


# -- attention, checkpointed blocks and the flow transformers ---------------------------------------------------------


@pytest.mark.parametrize("keywords", [False, True], ids=["positional", "keywords"])
def test_meta_attention_counts_what_the_fused_kernel_saves_on_a_real_tensor(keywords):
    # On meta tensors SDPA would run its math decomposition and save the L x L probabilities; a real forward (here the
    # CPU flash kernel, on CUDA FlashAttention / memory-efficient attention) saves q, k, v, the output and a
    # log-sum-exp per query.
    def run(device):
        weight = torch.nn.Parameter(torch.ones(16, 16, device=device))
        x = torch.ones(2, 2, 256, 16, device=device)
        q, k, v = x @ weight, x @ weight * 2, x @ weight * 3
        if keywords:
            return torch.nn.functional.scaled_dot_product_attention(query=q, key=k, value=v, dropout_p=0.0)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    real = saved_activation_bytes(lambda: run("cpu"))
    assert saved_activation_bytes(lambda: run("meta"), dtype_bytes=4) == real
    assert real < 2 * 2 * 256 * 256 * 4  # less than the attention matrix alone


def _transformer_inputs(family, config, device):
    generator = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    if family == "flux":  # 16 x 16 latents: 64 packed tokens; 8 text tokens
        return dict(hidden_states=r(2, 64, config.in_channels), timestep=r(2).abs(), guidance=r(2),
                    pooled_projections=r(2, config.pooled_projection_dim),
                    encoder_hidden_states=r(2, 8, config.joint_attention_dim), txt_ids=torch.zeros(8, 3).to(device),
                    img_ids=flux_latent_image_ids(16, 16).to(device))  # fmt: skip
    return dict(hidden_states=r(2, config.in_channels, 16, 16), timestep=r(2).abs(),
                encoder_hidden_states=r(2, 8, config.joint_attention_dim),
                pooled_projections=r(2, config.pooled_projection_dim))  # fmt: skip


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_activation_profile_on_meta_equals_a_real_forward_of_the_flow_transformer(family):
    model = {"flux": tiny_flux_pipeline, "sd3": tiny_sd3_pipeline}[family]().transformer.train()
    meta = on_meta(lambda: type(model)(**model.config)).train()
    real = activation_profile(model, lambda: model(**_transformer_inputs(family, model.config, "cpu")).sample)
    counted = activation_profile(
        meta, lambda: meta(**_transformer_inputs(family, meta.config, "meta")).sample, dtype_bytes=4
    )
    assert counted == real
    assert 0 < real.checkpointed < real.full / 2 and 0 < real.largest_block < real.full
    assert not model.is_gradient_checkpointing  # the profile leaves checkpointing off


def test_activation_profile_of_the_unet_attributes_each_checkpointed_block():
    unet = tiny_sdxl_pipeline().unet.train()
    profile = activation_profile(unet, lambda: unet(**_unet_inputs(unet)).sample)
    assert profile.full == saved_activation_bytes(lambda: unet(**_unet_inputs(unet)).sample)
    unet.enable_gradient_checkpointing()
    assert profile.checkpointed == saved_activation_bytes(lambda: unet(**_unet_inputs(unet)).sample)
    assert 0 < profile.largest_block < profile.full - profile.checkpointed
    assert profile.checkpointed_peak == profile.checkpointed + profile.largest_block


def test_tied_embeddings_count_once_on_the_meta_device():
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, vocab_size=500, tie_word_embeddings=False
    )
    real = T5EncoderModel(config)
    assert count_parameters(lambda: T5EncoderModel(config)) == sum(p.numel() for p in real.parameters())


def test_lora_base_weights_leave_the_gpu_with_zero3_parameter_offload():
    base = dict(unet_params=1000, encoder_params=0, activation_bytes=0, checkpointed_activation_bytes=0)
    zero3 = estimate_training_memory(TrainingSetup("a", lora_fraction=0.01, zero_stage=3, num_gpus=4), **base)
    offload = estimate_training_memory(
        TrainingSetup("b", lora_fraction=0.01, zero_stage=3, num_gpus=4, offload=True), **base
    )
    assert zero3.weights == 1000 * 2 / 4 + 10 * 4 / 4  # bf16 base and float32 LoRA, both sharded
    assert offload.weights == 0 and offload.optimizer == 0
    # Full fine-tuning's frozen reference copy is outside the engine: it stays whole on the GPU.
    full = estimate_training_memory(TrainingSetup("c", lora=False, zero_stage=3, num_gpus=4, offload=True), **base)
    assert full.weights == 1000 * 2


def test_a_card_keeps_headroom_above_the_modelled_total():
    assert fits_card(MemoryEstimate(20 * GiB, 0, 0, 0, 0), 24)  # 23 GiB with 15%
    assert not fits_card(MemoryEstimate(21 * GiB, 0, 0, 0, 0), 24)  # 24.15 GiB


# -- the guide's rows for FLUX.1-dev LoRA and SD3.5 Large full fine-tuning (real configs on the meta device) ---------


@pytest.fixture(scope="module")
def flux_guide():
    return memory_guide("flux-dev")


@pytest.fixture(scope="module")
def sd35_guide():
    return memory_guide("sd35-large")


def test_real_configs_give_the_published_model_sizes(flux_guide, sd35_guide):
    # FLUX.1-dev: 11.9 B transformer; CLIP-L (123 M) + T5-XXL encoder (4.76 B) + VAE (84 M) frozen.
    assert flux_guide.denoiser_params == pytest.approx(11.9e9, rel=0.02)
    assert flux_guide.encoder_params == pytest.approx(0.123e9 + 4.762e9 + 0.084e9, rel=0.02)
    # SD3.5 Large: 8.1 B transformer; CLIP-L and CLIP-G with projections (124 M + 695 M), T5-XXL and the VAE.
    assert sd35_guide.denoiser_params == pytest.approx(8.1e9, rel=0.02)
    assert sd35_guide.encoder_params == pytest.approx(0.124e9 + 0.695e9 + 4.762e9 + 0.084e9, rel=0.02)
    # 1024 px: 64 x 64 image tokens; T5's default prompt length (512 for FLUX, 256 for SD3).
    assert (flux_guide.text_tokens, sd35_guide.text_tokens) == (512, 256)


def _recommended(guide, card):
    setup = guide.recommended(card)
    assert setup is not None, f"nothing fits {card} GB"
    return setup, dict((s.name, e) for s, e in guide.rows)[setup.name]


@pytest.mark.parametrize("guide_name", ["flux_guide", "sd35_guide"])
def test_the_setting_chosen_for_a_smaller_card_uses_less_memory(guide_name, request):
    guide = request.getfixturevalue(guide_name)
    chosen = {card: _recommended(guide, card) for card in (24, 40, 80)}
    totals = [chosen[card][1].total for card in (24, 40, 80)]
    assert totals == sorted(totals) and totals[0] < totals[-1]
    assert chosen[24][0].zero_stage == 3 and chosen[24][0].gradient_checkpointing
    assert chosen[24][0].zero_stage >= chosen[40][0].zero_stage >= chosen[80][0].zero_stage
    for card, (setup, estimate) in chosen.items():
        assert fits_card(estimate, card)
        # ... and every row listed before it (fewer memory measures) does not.
        earlier = [e for s, e in guide.rows[: [s.name for s, _ in guide.rows].index(setup.name)]]
        assert not any(fits_card(e, card) for e in earlier)


def test_flux_lora_rows(flux_guide):
    assert all(setup.lora for setup, _ in flux_guide.rows)
    rows = {setup.name: estimate for setup, estimate in flux_guide.rows}
    plain = rows["LoRA, AdamW"]
    # 12 B frozen base weights in bf16 on every GPU without ZeRO-3; T5-XXL and CLIP in bf16 until precomputed.
    assert plain.weights == pytest.approx(flux_guide.denoiser_params * 2, rel=0.01)
    assert plain.encoders == flux_guide.encoder_params * 2
    assert not fits_card(plain, 80)  # without gradient checkpointing even an 80 GB card is too small
    profile = flux_guide.activations[True]
    assert profile.checkpointed_peak < profile.full / 5
    assert flux_guide.recommended(24).zero_stage == 3 and flux_guide.recommended(80).zero_stage == 0


def test_sd35_large_full_finetuning_rows(sd35_guide):
    assert not any(setup.lora for setup, _ in sd35_guide.rows)
    rows = {setup.name: estimate for setup, estimate in sd35_guide.rows}
    # Without ZeRO, float32 weights + gradients + AdamW (16 bytes a parameter) alone exceed 80 GB.
    assert not any(fits_card(e, 80) for s, e in sd35_guide.rows if s.zero_stage == 0)
    # The frozen reference copy stays whole (bf16) under ZeRO-3, also with CPU offload.
    offload = rows["full, ZeRO-3 x8 + CPU offload, ckpt., precomputed"]
    assert offload.weights == sd35_guide.denoiser_params * 2 and offload.optimizer == 0
    assert sd35_guide.recommended(24).offload and not sd35_guide.recommended(40).offload


# -- the families added through the registry: Qwen-Image, Z-Image-Turbo, FLUX.2 [klein] 4B ----------------------------


@pytest.fixture(scope="module")
def new_family_guides():
    return {name: memory_guide(name) for name in ("qwen-image", "z-image-turbo", "flux2-klein-4b")}


def test_new_family_configs_give_the_published_model_sizes(new_family_guides):
    qwen, z_image, klein = (new_family_guides[n] for n in ("qwen-image", "z-image-turbo", "flux2-klein-4b"))
    # Qwen-Image: a 20 B MMDiT; Qwen2.5-VL 7B (8.29 B with its vision tower) and the 127 M Wan-layout VAE frozen.
    assert qwen.denoiser_params == pytest.approx(20.43e9, rel=0.01)
    assert qwen.encoder_params == pytest.approx(8.292e9 + 0.127e9, rel=0.01)
    # Z-Image(-Turbo): 6.15 B; Qwen3 4B and the 16-channel FLUX VAE.
    assert z_image.denoiser_params == pytest.approx(6.15e9, rel=0.01)
    assert z_image.encoder_params == pytest.approx(4.022e9 + 0.084e9, rel=0.01)
    # FLUX.2 [klein] 4B: 3.9 B; Qwen3 4B and the FLUX.2 VAE.
    assert klein.denoiser_params == pytest.approx(3.88e9, rel=0.01)
    assert klein.encoder_params == pytest.approx(4.022e9 + 0.084e9, rel=0.01)


def test_new_family_rows_follow_the_registry_and_fit_some_card(new_family_guides):
    from trl_rpo.memory import lora_parameter_count, on_meta
    from trl_rpo.memory_models import flux2_klein_denoiser

    klein = new_family_guides["flux2-klein-4b"]
    # LoRA adapts the family's default targets: FLUX.2's fused single-stream projection as well.
    attention_only = lora_parameter_count(on_meta(flux2_klein_denoiser), 16)
    assert klein.lora_params > 2 * attention_only
    for name, guide in new_family_guides.items():
        assert guide.text_tokens == 512
        for card in (24, 40, 80):
            assert guide.recommended(card, lora=True) is not None, (name, card)
        full = [estimate for setup, estimate in guide.rows if not setup.lora]
        assert full and full[0].total > min(e.total for s, e in guide.rows if s.lora), name
    # 20 B in bf16 is 38 GiB of frozen weights: a 24 GB card needs ZeRO-3 for LoRA on Qwen-Image.
    assert new_family_guides["qwen-image"].recommended(24, lora=True).zero_stage == 3
