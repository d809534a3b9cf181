"""Imports every model family so that their variants are registered."""

from ivf_perception.models import mafs  # noqa: F401
from ivf_perception.models import s4fusion  # noqa: F401
from ivf_perception.models.cmfs import model as cmfs_model  # noqa: F401
