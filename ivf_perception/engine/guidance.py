"""Where a guided network's per-frame guidance comes from in the engine: fallback, cache or async.

Why providers: TeSG's guidance (a mask and caption tokens from BLIP + Stable Diffusion) costs
seconds per pair, so the engine cannot compute it inline at 30 Hz. Each front door picks one
provider, and the Engine asks it for every decoded pair before inference:

* ``fallback`` — no guidance; the network runs its fallback (always available, no extra cost).
* ``cache`` — the offline generator's entry for this exact pair (:class:`~ivf_perception.guidance.GuidanceCache`,
  keyed by the decoded images): deterministic replay of recorded bags and datasets. A pair
  without an entry, or an entry made with other settings, is never replaced silently: with
  ``strict`` it is an error, otherwise the frame runs the fallback and the status says why.
* ``async`` — a worker thread runs an injected guidance function (e.g. the generator on a GPU) at
  its own rate on the newest pair offered (keep-latest: pairs arriving while it works replace
  each other); a frame uses the newest result whose frame is at most ``max_age_s`` older than
  itself (ages in the frames' own stamp clock), else the fallback.

Every call returns a :class:`GuidanceStatus` (source, age, reason) that results, FusionStats and
diagnostics report, so a user can always tell which frames ran guided.
"""

from __future__ import annotations

import importlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ivf_perception.errors import IvfPerceptionError
from ivf_perception.guidance import (
    Guidance,
    GuidanceCache,
    GuidanceCacheError,
    GuidanceError,
    GuidanceNotCachedError,
)

__all__ = [
    "GUIDANCE_MODES",
    "AsyncGuidanceProvider",
    "CacheGuidanceProvider",
    "FallbackGuidanceProvider",
    "GuidanceFunction",
    "GuidanceProvider",
    "GuidanceProviderError",
    "GuidanceStatus",
    "create_guidance_provider",
    "load_guidance_function",
]

_log = logging.getLogger(__name__)

GUIDANCE_MODES = ("fallback", "cache", "async")

GuidanceFunction = Callable[[np.ndarray, np.ndarray], Guidance]
"""``f(rgb, thermal) -> Guidance``: decoded pair (RGB H×W×3, thermal as decoded) to a batch-of-one
guidance at the RGB image's size (what the async worker runs)."""


class GuidanceProviderError(IvfPerceptionError, ValueError):
    """A guidance provider cannot be built (unknown mode, missing cache, bad function spec), or a
    strict cache has no valid entry for a frame."""


@dataclass(frozen=True)
class GuidanceStatus:
    """How one frame was guided.

    Attributes:
        source: ``cache`` / ``async`` (guided), ``fallback`` (the network's fallback) or ``none``
            (the model takes no guidance).
        age_s: seconds between the guidance's frame and this frame (0 for cache; -1 when not guided).
        reason: why the frame ran the fallback (empty when guided).
    """

    source: str
    age_s: float = -1.0
    reason: str = ""

    @property
    def guided(self) -> bool:
        return self.source in ("cache", "async")


NOT_GUIDED = GuidanceStatus("none", reason="the model takes no guidance")


class GuidanceProvider(ABC):
    """Gives the guidance (or None, for the fallback) of one decoded pair, with its status."""

    mode: ClassVar[str]

    @abstractmethod
    def guidance_for(self, rgb: np.ndarray, thermal: np.ndarray, stamp_s: float) -> tuple[Guidance | None,
                                                                                           GuidanceStatus]:
        """Guidance for the pair with RGB header stamp ``stamp_s`` (seconds)."""

    def describe(self) -> dict[str, object]:
        """What logs and diagnostics say about this provider."""
        return {"guidance_mode": self.mode}

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Stop workers and free what the provider holds."""


class FallbackGuidanceProvider(GuidanceProvider):
    """No guidance: every frame runs the network's fallback."""

    mode = "fallback"

    def guidance_for(self, rgb: np.ndarray, thermal: np.ndarray, stamp_s: float) -> tuple[Guidance | None,
                                                                                           GuidanceStatus]:
        return None, GuidanceStatus("fallback", reason="guidance_mode is fallback")


class CacheGuidanceProvider(GuidanceProvider):
    """Guidance read from a :class:`GuidanceCache` for the exact decoded pair.

    Args:
        cache: the cache (or its folder; its recorded settings are accepted).
        strict: raise :class:`GuidanceProviderError` for a frame without a valid entry (replay
            evaluation); False runs the fallback for it and reports why (the live node).
    """

    mode = "cache"

    def __init__(self, cache: GuidanceCache | str | Path, *, strict: bool = False) -> None:
        try:
            self.cache = cache if isinstance(cache, GuidanceCache) else GuidanceCache(cache)
        except GuidanceCacheError as exc:
            raise GuidanceProviderError(str(exc)) from exc
        self.strict = strict
        self.missing = 0

    def guidance_for(self, rgb: np.ndarray, thermal: np.ndarray, stamp_s: float) -> tuple[Guidance | None,
                                                                                           GuidanceStatus]:
        try:
            return self.cache.read(rgb, thermal).guidance(), GuidanceStatus("cache", age_s=0.0)
        except GuidanceCacheError as exc:
            self.missing += 1
            if self.strict:
                raise GuidanceProviderError(f"frame at {stamp_s:.3f} s: {exc}") from exc
            reason = "not cached" if isinstance(exc, GuidanceNotCachedError) else str(exc)
            return None, GuidanceStatus("fallback", reason=reason)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "guidance_cache": str(self.cache.root),
                "guidance_settings": self.cache.settings_hash[:16], "guidance_missing": self.missing}


class AsyncGuidanceProvider(GuidanceProvider):
    """A worker thread computing guidance for the newest offered pair at its own rate.

    Args:
        function: the guidance function (:data:`GuidanceFunction`).
        max_age_s: the oldest guidance a frame may use, in the frames' stamp clock.

    The worker starts with the first offered pair; :meth:`close` stops it. A function that raises
    or returns guidance of the wrong kind is logged and counted (``errors``); frames then use the
    previous result while it is young enough, else the fallback.
    """

    mode = "async"

    def __init__(self, function: GuidanceFunction, max_age_s: float = 1.0) -> None:
        if not max_age_s >= 0.0:
            raise GuidanceProviderError(f"guidance_max_age must be >= 0 seconds, got {max_age_s}")
        self.function = function
        self.max_age_s = float(max_age_s)
        self.computed = 0
        self.errors = 0
        self.last_error = ""
        self._cond = threading.Condition()
        self._pending: tuple[np.ndarray, np.ndarray, float] | None = None
        self._latest: tuple[Guidance, float, tuple[int, int]] | None = None
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="guidance-worker", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                assert self._pending is not None
                rgb, thermal, stamp = self._pending
                self._pending, self._busy = None, True
            try:
                guidance = self.function(rgb, thermal)
                if not isinstance(guidance, Guidance):
                    raise GuidanceError(f"the guidance function returned {type(guidance).__name__}, not a Guidance")
                if guidance.batch_size != 1 or tuple(guidance.mask.shape[-2:]) != tuple(rgb.shape[:2]):
                    raise GuidanceError(f"the guidance function returned a mask of shape {tuple(guidance.mask.shape)} "
                                        f"for a {rgb.shape[0]}x{rgb.shape[1]} image (expected 1×1×H×W)")
                result: tuple[Guidance, float, tuple[int, int]] | None = (guidance, stamp, tuple(rgb.shape[:2]))
            except Exception as exc:  # a user-supplied function: keep the worker alive, report it
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                _log.warning("guidance function failed on the frame at %.3f s: %s", stamp, self.last_error)
                result = None
            with self._cond:
                if result is not None:
                    self._latest = result
                    self.computed += 1
                self._busy = False
                self._cond.notify_all()

    def offer(self, rgb: np.ndarray, thermal: np.ndarray, stamp_s: float) -> None:
        """Hand the worker a pair (replacing one it has not started on)."""
        with self._cond:
            if self._stop:
                return
            if self._thread is None:
                self._start()
            self._pending = (rgb, thermal, float(stamp_s))
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until the worker has nothing pending (tests, replay); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout=timeout_s)

    def guidance_for(self, rgb: np.ndarray, thermal: np.ndarray, stamp_s: float) -> tuple[Guidance | None,
                                                                                           GuidanceStatus]:
        with self._cond:
            latest = self._latest
        self.offer(rgb, thermal, stamp_s)
        if latest is None:
            return None, GuidanceStatus("fallback", reason="no guidance computed yet")
        guidance, stamp, size = latest
        age = float(stamp_s) - stamp
        if size != tuple(rgb.shape[:2]):
            return None, GuidanceStatus("fallback", reason=f"newest guidance is for {size[0]}x{size[1]} images")
        if age < 0:
            return None, GuidanceStatus("fallback", reason=f"newest guidance is {-age:.3f} s newer than the frame")
        if age > self.max_age_s:
            return None, GuidanceStatus("fallback", reason=f"newest guidance is {age:.3f} s old "
                                                           f"(guidance_max_age {self.max_age_s:g} s)")
        return guidance.aged(age, "async"), GuidanceStatus("async", age_s=age)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "guidance_max_age_s": self.max_age_s, "guidance_computed": self.computed,
                "guidance_errors": self.errors, "guidance_last_error": self.last_error}

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def load_guidance_function(spec: str) -> GuidanceFunction:
    """The guidance function named ``"package.module:factory"``: ``factory()`` is called once and
    must return the function (so it can load its models once).

    Raises:
        GuidanceProviderError: malformed spec, module or attribute not found, or not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise GuidanceProviderError(f"guidance_function must be 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise GuidanceProviderError(f"guidance_function {spec!r} cannot be loaded ({exc})") from exc
    function = factory() if callable(factory) else None
    if not callable(function):
        raise GuidanceProviderError(f"guidance_function {spec!r}: the factory must return a callable(rgb, thermal)")
    return function


def create_guidance_provider(mode: str, *, cache_dir: str | Path | None = None, strict: bool = False,
                             max_age_s: float = 1.0, function: GuidanceFunction | str | None = None
                             ) -> GuidanceProvider:
    """The provider of ``mode`` (:data:`GUIDANCE_MODES`).

    Args:
        mode: ``fallback``, ``cache`` or ``async``.
        cache_dir: the guidance cache folder (``cache``).
        strict: a frame without a valid cache entry is an error (``cache``).
        max_age_s: ``async``: the oldest guidance a frame may use.
        function: ``async``: the guidance function, or its ``"module:factory"`` spec.

    Raises:
        GuidanceProviderError: unknown mode, or what the mode needs is missing or unusable.
    """
    if mode == "fallback":
        return FallbackGuidanceProvider()
    if mode == "cache":
        if not cache_dir:
            raise GuidanceProviderError("guidance_mode cache needs guidance_cache (the folder "
                                        "`ivf-train tesg-guidance` wrote)")
        return CacheGuidanceProvider(cache_dir, strict=strict)
    if mode == "async":
        if not function:
            raise GuidanceProviderError("guidance_mode async needs guidance_function ('package.module:factory')")
        return AsyncGuidanceProvider(load_guidance_function(function) if isinstance(function, str) else function,
                                     max_age_s)
    raise GuidanceProviderError(f"guidance_mode must be one of {', '.join(GUIDANCE_MODES)}, got {mode!r}")
