"""Imports every model family so that their variants are registered."""

from ivf_perception.models import s4fusion  # noqa: F401
