"""DiffEdit masks (Couairon et al. 2022) as TeSG's eq. 2: ``M = Δ(D_θ(I, T) − D_θ(I, T̂))``.

Written as our own functions over the diffusers call interfaces, so the rule can be tested with
a fake noise predictor and tiny random modules, and checked against
``StableDiffusionDiffEditPipeline.generate_mask`` where the real models exist (a GPU machine):

* ``vae.encode(x).latent_dist`` (its ``mean`` and ``std``) and ``vae.config.scaling_factor``;
* ``unet(latents, t, encoder_hidden_states=emb).sample``;
* ``scheduler.set_timesteps(n)``, ``scheduler.timesteps``, ``scheduler.add_noise(x, noise, t)``,
  ``scheduler.scale_model_input(x, t)`` (a DDIM scheduler).

What ``generate_mask`` computes, and we compute the same way (spec §2.1):

1. ``z0^k = s_vae · (μ + σ·η^k)``, one sample of the VAE's latent distribution per noise map
   (diffusers encodes the image repeated ``num_maps`` times and samples once; we encode once and
   draw the same random numbers in the same order);
2. the DDIM schedule of ``num_inference_steps`` steps; ``t*`` = its first step kept at
   ``mask_encode_strength`` (50 steps at 0.5: index 25);
3. ``n = num_maps_per_mask`` noisy latents ``z_t^k = add_noise(z0, ε^k, t*)``;
4. classifier-free guided predictions ``ε̃(c) = ε(∅) + s·(ε(c) − ε(∅))`` for c = T and c = T̂.
   diffusers evaluates four UNet passes (a negative prompt for each of T and T̂, both empty by
   default, hence identical); we evaluate three (∅, T, T̂): the same numbers, one pass fewer;
5. ``g = mean over k and latent channels of |ε̃(T̂) − ε̃(T)|`` (latent resolution);
6. :func:`mask_from_guidance_map`: ``clamp(g, 0, r·mean g) / (r·mean g) > threshold``.

The only deliberate difference: the mean in step 6 is per image (diffusers takes it over the
whole batch, so batched images would change each other's masks); see ``SIGSettings.normalise``.
"""

from __future__ import annotations

from typing import Any

import torch

from ivf_perception.checks import check_shape

__all__ = ["mask_from_guidance_map", "encode_timestep", "guidance_map", "diffedit_mask"]


def mask_from_guidance_map(g: torch.Tensor, ratio: float = 3.0, threshold: float = 0.5) -> torch.Tensor:
    """Δ of eq. 2: normalise the guidance map by ``ratio`` times its mean, clamp to [0, 1], binarise.

    A map that is zero everywhere (T̂ = T, or a model that ignores the text) has no foreground:
    the result is all False instead of 0/0.

    Args:
        g: non-negative noise-difference magnitudes of one image.

    Shape:
        g: (h, w) → bool (h, w)
    """
    check_shape(g, "h w", name="guidance map")
    scale = g.mean() * ratio
    if not bool(scale > 0):
        return torch.zeros_like(g, dtype=torch.bool)
    return (g.clamp(0.0, float(scale)) / scale) > threshold


def encode_timestep(scheduler: Any, num_inference_steps: int, strength: float) -> torch.Tensor:
    """``t*``: the first timestep diffusers' ``get_timesteps`` keeps for ``strength``.

    ``init = min(int(n·strength), n)``, ``start = n − init``, ``t* = timesteps[start]``.
    """
    scheduler.set_timesteps(num_inference_steps)
    init = min(int(num_inference_steps * strength), num_inference_steps)
    start = max(num_inference_steps - init, 0)
    timesteps = scheduler.timesteps
    if start >= len(timesteps):
        raise ValueError(f"mask_encode_strength {strength} keeps no step of a {num_inference_steps}-step schedule")
    return timesteps[start]


@torch.no_grad()
def guidance_map(vae: Any, unet: Any, scheduler: Any, image: torch.Tensor, source: torch.Tensor,
                 target: torch.Tensor, uncond: torch.Tensor, *, num_maps: int = 10, strength: float = 0.5,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``g``: mean ``|ε̃(target) − ε̃(source)|`` over the noise draws and latent channels (steps 1–5).

    Args:
        image: one RGB image in [0, 1], sides multiples of the UNet's down-sampling.
        source, target, uncond: text-encoder tokens of T, T̂ and the empty prompt.
        generator: the random stream of the VAE sample and the noise draws (on ``image``'s device).

    Shape:
        image (1, 3, H, W); source, target, uncond (1, L, d) → (H/f, W/f) float32 (f: VAE factor)
    """
    check_shape(image, "1 3 H W", name="image")
    for name, emb in (("source", source), ("target", target), ("uncond", uncond)):
        check_shape(emb, "1 L D", name=f"{name} text tokens", L=source.shape[1], D=source.shape[2])
    dtype = next(unet.parameters()).dtype
    dist = vae.encode((2 * image - 1).to(dtype)).latent_dist
    shape = (num_maps, *dist.mean.shape[1:])
    # one latent sample per noise map, drawn as diffusers draws them for the image repeated
    # num_maps times (mean + std·ε, one ε tensor), but with a single VAE pass; then the noise
    latents = dist.mean + dist.std * torch.randn(shape, generator=generator, device=dist.mean.device,
                                                 dtype=dist.mean.dtype)
    latents = latents * vae.config.scaling_factor
    t = encode_timestep(scheduler, num_inference_steps, strength)
    noise = torch.randn(shape, generator=generator, device=latents.device, dtype=latents.dtype)
    noisy = scheduler.add_noise(latents, noise, t)
    use_cfg = guidance_scale > 1.0
    texts = (uncond, source, target) if use_cfg else (source, target)
    model_in = scheduler.scale_model_input(torch.cat([noisy] * len(texts)), t)
    emb = torch.cat([e.to(dtype).expand(num_maps, -1, -1) for e in texts])
    eps = unet(model_in, t, encoder_hidden_states=emb).sample.float()
    if use_cfg:
        eps_u, eps_s, eps_t = eps.chunk(3)
        eps_s = eps_u + guidance_scale * (eps_s - eps_u)
        eps_t = eps_u + guidance_scale * (eps_t - eps_u)
    else:
        eps_s, eps_t = eps.chunk(2)
    return (eps_t - eps_s).abs().mean(dim=(0, 1))


def diffedit_mask(vae: Any, unet: Any, scheduler: Any, image: torch.Tensor, source: torch.Tensor,
                  target: torch.Tensor, uncond: torch.Tensor, *, num_maps: int = 10, strength: float = 0.5,
                  num_inference_steps: int = 50, guidance_scale: float = 7.5, ratio: float = 3.0,
                  threshold: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """The binary DiffEdit mask of one image at latent resolution (steps 1–6).

    Shape:
        image (1, 3, H, W) → bool (H/f, W/f)
    """
    g = guidance_map(vae, unet, scheduler, image, source, target, uncond, num_maps=num_maps, strength=strength,
                     num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=generator)
    return mask_from_guidance_map(g, ratio, threshold)
