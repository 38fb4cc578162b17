"""StableDiffusionPipeline: seeding, classifier-free guidance wiring, batching, graph mode.

Most tests put a cheap, deterministic stand-in UNet inside the real tiny LatentDiffusion (real text encoder
and VAE), so that the pipeline's wiring can be checked against a hand-written reference loop in PYNATIVE
without paying for UNet compilation. One test runs the real tiny UNet in GRAPH_MODE.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from mindone.diffusion.guidance import GuidedDenoiser
from mindone.diffusion.pipeline import StableDiffusionPipeline, to_uint8_images
from mindone.diffusion.samplers import make_sampler
from mindone.diffusion.schedule import NoiseSchedule
from mindone.models.config import build_model, load_model_config
from mindone.models.stable_diffusion import LatentDiffusion
from mindone.models.tokenizer import SDTokenizer

PROMPTS = ["a red cube on a table", "a photo of a dog"]


class FakeUNet(nn.Cell):
    """Output = f(x, t, context), nonlinear in x and different per context; records the batches it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[np.ndarray] = []

    @staticmethod
    def reference(x: np.ndarray, t: np.ndarray, context: np.ndarray) -> np.ndarray:
        c = context[:, :, 0].mean(axis=1).reshape(-1, 1, 1, 1) * 5.0  # ln_final zeroes the full mean
        return 0.6 * np.tanh(x) + c + 0.001 * t.reshape(-1, 1, 1, 1)

    def construct(self, x: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        self.calls.append(x.asnumpy())
        c = context[:, :, 0].astype(ms.float32).mean(axis=1).reshape(-1, 1, 1, 1) * 5.0
        return 0.6 * ops.tanh(x) + c + 0.001 * timesteps.astype(ms.float32).reshape(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def tiny_cfg() -> dict:
    return load_model_config("tiny")


@pytest.fixture(scope="module")
def tokenizer() -> SDTokenizer:
    return SDTokenizer()


@pytest.fixture(scope="module")
def pynative():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


def _fake_model(cfg: dict, parameterization: str = "eps") -> LatentDiffusion:
    ms.set_seed(0)
    real = build_model(cfg)
    model = LatentDiffusion(FakeUNet(), real.first_stage_model, real.cond_stage_model,
                            scale_factor=cfg["scale_factor"], parameterization=parameterization)
    model.set_train(False)
    return model


@pytest.fixture(scope="module")
def fake_pipeline(tiny_cfg, tokenizer, pynative) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(_fake_model(tiny_cfg), tokenizer, image_size=tiny_cfg["image_size"])


def reference_loop(pipeline, prompts, negatives, sampler, steps, guidance, seed, n_samples, size):
    """The pipeline written out by hand: diffusers' CFG order (uncond, cond), numpy latents, one batch."""
    model = pipeline.model
    owner = np.repeat(np.arange(len(prompts)), n_samples)
    encode = lambda texts: model.encode_text(Tensor(pipeline.tokenizer(texts)[owner])).asnumpy()  # noqa: E731
    cond, uncond = encode(prompts), encode(negatives)
    h = size // pipeline.vae_scale_factor
    x = np.stack([np.random.default_rng([seed, i]).standard_normal((4, h, h), dtype=np.float32)
                  for i in range(len(owner))])
    solver = make_sampler(sampler, NoiseSchedule(), model.parameterization)
    for i, t in enumerate(solver.set_timesteps(steps)):
        tt = np.full((len(x),), t)
        e_cond, e_uncond = FakeUNet.reference(x, tt, cond), FakeUNet.reference(x, tt, uncond)
        x = solver.step((e_uncond + guidance * (e_cond - e_uncond)).astype(np.float32), i, x)
    return to_uint8_images(model.decode_latents(Tensor(x.astype(np.float32))).asnumpy())


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_pipeline_equals_reference_loop(fake_pipeline, tiny_cfg, sampler):
    images = fake_pipeline(PROMPTS, negative_prompts=["blurry", "a cat"], sampler=sampler, steps=4,
                           guidance_scale=5.0, seed=3, n_samples=2, progress=False)
    size = tiny_cfg["image_size"]
    assert images.shape == (4, size, size, 3) and images.dtype == np.uint8
    expected = reference_loop(fake_pipeline, PROMPTS, ["blurry", "a cat"], sampler, 4, 5.0, 3, 2, size)
    assert np.abs(images.astype(int) - expected).max() <= 1
    assert images.std() > 1  # not a constant picture, so the comparisons above mean something


def test_seed_fixes_initial_latents(fake_pipeline):
    unet = fake_pipeline.model.model.diffusion_model
    unet.calls.clear()
    first = fake_pipeline(PROMPTS, seed=11, steps=2, n_samples=2, progress=False)
    x_T = unet.calls[0][:4]  # guided call: [uncond half; cond half] of the same latents
    np.testing.assert_array_equal(unet.calls[0][4:], x_T)
    expected = np.stack([np.random.default_rng([11, i]).standard_normal((4, 8, 8), dtype=np.float32) for i in range(4)])
    np.testing.assert_array_equal(x_T, expected)
    np.testing.assert_array_equal(fake_pipeline(PROMPTS, seed=11, steps=2, n_samples=2, progress=False), first)
    assert not np.array_equal(fake_pipeline(PROMPTS, seed=12, steps=2, n_samples=2, progress=False), first)


def test_guidance_batches_cond_and_uncond_in_one_call(fake_pipeline):
    unet = fake_pipeline.model.model.diffusion_model
    unet.calls.clear()
    guided = fake_pipeline(PROMPTS, guidance_scale=7.5, steps=3, seed=1, progress=False)
    assert [c.shape[0] for c in unet.calls] == [4, 4, 4]  # one UNet call per step on 2 x 2 images
    unet.calls.clear()
    plain = fake_pipeline(PROMPTS, guidance_scale=1.0, steps=3, seed=1, progress=False)
    assert [c.shape[0] for c in unet.calls] == [2, 2, 2]  # no unconditional half without guidance
    assert not np.array_equal(guided, plain)
    negative = fake_pipeline(PROMPTS, negative_prompts="ugly, low quality", guidance_scale=7.5, steps=3, seed=1,
                             progress=False)
    assert not np.array_equal(negative, guided)
    # Without guidance the negative prompt has no role.
    np.testing.assert_array_equal(
        fake_pipeline(PROMPTS, negative_prompts="ugly", guidance_scale=1.0, steps=3, seed=1, progress=False), plain)


def test_batch_size_does_not_change_the_images(fake_pipeline):
    kwargs = dict(sampler="ddim", eta=0.8, steps=3, seed=5, n_samples=3, progress=False)
    whole = fake_pipeline(PROMPTS, **kwargs)
    unet = fake_pipeline.model.model.diffusion_model
    unet.calls.clear()
    split = fake_pipeline(PROMPTS, batch_size=4, **kwargs)
    assert sorted({c.shape[0] for c in unet.calls}) == [4, 8]  # 6 images: batches of 4 and 2, doubled for CFG
    assert np.abs(whole.astype(int) - split).max() <= 1


def test_guided_denoiser_formula(fake_pipeline):
    model = fake_pipeline.model
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    t = Tensor(np.array([981, 981], np.int32))
    uncond, cond = (Tensor(rng.standard_normal((2, 77, 32)).astype(np.float32)) for _ in range(2))
    out = GuidedDenoiser(model)(x, t, ops.cat((uncond, cond)), Tensor(4.0, ms.float32)).asnumpy()
    e_u, e_c = model.apply_model(x, t, uncond).asnumpy(), model.apply_model(x, t, cond).asnumpy()
    np.testing.assert_allclose(out, e_u + 4.0 * (e_c - e_u), rtol=1e-5, atol=1e-5)


def test_pipeline_keeps_parameter_names(fake_pipeline):
    """Wrapping the model in the pipeline's cells must not prefix its (checkpoint) parameter names."""
    names = [(name, param.name) for name, param in fake_pipeline.model.parameters_and_names()]
    assert names and all(name == param_name for name, param_name in names)
    assert any(name.startswith("first_stage_model.decoder.") for name, _ in names)


def test_bad_arguments(fake_pipeline):
    with pytest.raises(ValueError, match="multiples of 4"):  # the VAE's factor (the stand-in UNet does not resample)
        fake_pipeline(PROMPTS, height=42, progress=False)
    with pytest.raises(ValueError, match="positive"):
        fake_pipeline(PROMPTS, width=-32, progress=False)
    with pytest.raises(ValueError, match="negative prompts"):
        fake_pipeline(PROMPTS, negative_prompts=["a", "b", "c"], progress=False)
    with pytest.raises(ValueError, match="sampler"):
        fake_pipeline(PROMPTS, sampler="euler", progress=False)


@pytest.fixture(scope="module")
def diffusers_pair(tiny_cfg, tmp_path_factory):
    """Tiny random diffusers/transformers models, and the MindSpore tiny model loaded from them."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from mindone.convert import load_sd_weights
    from mindone.convert.diffusers_reference import build_reference_models

    unet, vae, text = build_reference_models(tiny_cfg, seed=4)
    folder = tmp_path_factory.mktemp("diffusers_tiny")
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        part.save_pretrained(folder / name)
    model = build_model(tiny_cfg)
    load_sd_weights(model, folder)
    model.set_train(False)
    return model, (unet, vae, text)


def _diffusers_images(components, tokenizer, prompts, negatives, sampler, parameterization, seed, steps, guidance):
    """diffusers' StableDiffusionPipeline with SD 2's scheduler config, our prompt ids and initial latents."""
    import diffusers
    import torch

    unet, vae, text = components
    sd2_config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1, prediction_type="epsilon" if parameterization == "eps" else "v_prediction")
    if sampler == "ddim":
        scheduler = diffusers.DDIMScheduler(**sd2_config, clip_sample=False, set_alpha_to_one=False)
    else:
        scheduler = diffusers.DPMSolverMultistepScheduler(**sd2_config, algorithm_type="dpmsolver++", solver_order=2)
    reference = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet,
                                                  scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    latents = np.stack([np.random.default_rng([seed, i]).standard_normal((4, 8, 8), dtype=np.float32)
                        for i in range(len(prompts))])
    with torch.no_grad():
        embed = lambda texts: text(torch.from_numpy(tokenizer(texts).astype(np.int64)))[0]  # noqa: E731
        images = reference(prompt_embeds=embed(prompts), negative_prompt_embeds=embed(negatives),
                           latents=torch.from_numpy(latents), num_inference_steps=steps, guidance_scale=guidance,
                           height=32, width=32, output_type="np").images
    return (images * 255).round().astype(np.uint8)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_graph_mode_images_equal_diffusers_stable_diffusion_pipeline(diffusers_pair, tokenizer):
    """End to end in GRAPH_MODE against diffusers' StableDiffusionPipeline on the same weights, prompt ids and
    initial latents: guidance, both samplers, eps and v, VAE scaling and uint8 conversion. One pipeline, so
    the guided UNet compiles once; a repeated call reproduces its images exactly."""
    model, components = diffusers_pair
    prompts, negatives = ["a red cube on a table", "a photo of a dog"], ["blurry", ""]
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        pipeline = StableDiffusionPipeline(model, tokenizer, image_size=32)
        for sampler, parameterization in (("ddim", "eps"), ("dpm++", "v")):
            model.parameterization = parameterization
            kwargs = dict(negative_prompts=negatives, sampler=sampler, steps=3, guidance_scale=6.0, seed=9,
                          progress=False)
            ours = pipeline(prompts, **kwargs)
            expected = _diffusers_images(components, tokenizer, prompts, negatives, sampler, parameterization,
                                         seed=9, steps=3, guidance=6.0)
            assert ours.shape == expected.shape == (2, 32, 32, 3)
            assert expected.std() > 5  # a real picture, not a flat one
            assert np.abs(ours.astype(int) - expected).max() <= 1, (sampler, parameterization)
        np.testing.assert_array_equal(pipeline(prompts, **kwargs), ours)
    finally:
        ms.set_context(mode=previous)
