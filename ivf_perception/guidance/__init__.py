"""Per-frame guidance for text-guided fusion (TeSG): the type the network reads and its disk cache.

TeSG fuses an image pair under a foreground mask M and the text tokens F_t of a caption, both made
by a frozen Semantic Information Generator (BLIP + DiffEdit, ``ivf_training``'s ``tesg-guidance``)
that is far too slow to run per frame. This package is the seam between that generator, the
training loop, the engine and the network: it depends on nothing but torch, numpy and safetensors,
so the robot runtime reads guidance without the generator's dependencies.

API:

* :class:`Guidance` ``(mask, text_tokens, source="explicit", age_s=0.0)`` — frozen dataclass;
  ``mask`` B×1×H×W floating in [0, 1], ``text_tokens`` B×L×d floating (float32). Construction
  validates ranks, dtypes, batch sizes, device and the mask range; ``check_for(rgb, text_dim=)``
  validates it against an image batch and a network; ``to()``, ``padded(bottom, right)``,
  ``aged(age_s, source)``. Sources: :data:`GUIDANCE_SOURCES`. Errors: :class:`GuidanceError`
  (a ``ValueError``).
* :func:`pair_key` ``(rgb, thermal) -> str`` — SHA-256 of the *decoded* numpy pair (RGB H×W×3,
  thermal H×W raw, before gain control/registration/normalisation): the cache key.
* :func:`settings_hash` ``(settings) -> str`` — SHA-256 of the canonical JSON of the generator
  settings.
* :class:`GuidanceCache` ``(root, settings=None)`` — one folder, one settings mapping.
  ``write(rgb, thermal, *, mask, text_tokens, caption, edited_caption, removed_keywords,
  no_keyword, masks=None, overwrite=False) -> key``; ``read(rgb, thermal) -> GuidanceEntry``;
  ``read_key(key)``; ``has(rgb, thermal)``; ``key in cache``; ``keys()``.
  :class:`GuidanceEntry` holds ``mask`` 1×H×W, ``text_tokens`` L×d (float32), the captions, the
  ``no_keyword`` flag, optional ``masks`` (``mask_vis``, ``mask_ir``) and
  ``guidance(device) -> Guidance`` (batch of one, source ``cache``).
* Errors (all :class:`GuidanceCacheError`, a :class:`GuidanceError`): :class:`GuidanceNotCachedError`
  (also a ``LookupError``) for a pair without an entry, :class:`StaleGuidanceError` for a cache or
  entry made with other settings. A missing or stale entry is never replaced by anything silently.
"""

from ivf_perception.guidance.cache import (
    CACHE_FORMAT,
    GuidanceCache,
    GuidanceCacheError,
    GuidanceEntry,
    GuidanceNotCachedError,
    StaleGuidanceError,
    pair_key,
    settings_hash,
)
from ivf_perception.guidance.guidance import GUIDANCE_SOURCES, Guidance, GuidanceError

__all__ = [
    "CACHE_FORMAT",
    "GUIDANCE_SOURCES",
    "Guidance",
    "GuidanceCache",
    "GuidanceCacheError",
    "GuidanceEntry",
    "GuidanceError",
    "GuidanceNotCachedError",
    "StaleGuidanceError",
    "pair_key",
    "settings_hash",
]
