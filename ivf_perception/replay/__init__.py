"""Bag replay evaluation and bag tools (issue 4).

Replay a recorded rosbag2 through the engine with the live node's pairing policy, write an
output bag, score it and report (:func:`run_replay`); compare two engines on the same bag
(:func:`run_compare`); extract paired frames as a training dataset (:func:`extract_dataset`);
measure replay overhead against the bare engine (:func:`bench_replay`).

Modules, one job each: ``params`` (node parameters), ``labels`` (label folders), ``writing``
(output bag), ``metrics``, ``thumbnails``, ``plots``, ``render`` (Markdown/HTML), ``report``,
``outputs`` (output folder policy), ``versions``, ``runner``, ``compare``, ``extract``,
``bench``. Opening a bag, choosing its topics, pairing and decoding are shared with training, so
they live in the core: ``ivf_perception.io.bag_inputs``, ``bag_topics``, ``bag_pairing`` and
``bag_decode``.
"""

from ivf_perception.io.bag_inputs import EmptyBagError
from ivf_perception.io.bag_topics import MissingTopicError, TopicSelection, UnsupportedTopicError, select_topics

from .bench import bench_replay
from .compare import run_compare
from .extract import ExtractOptions, ExtractResult, extract_dataset
from .params import NodeParams, load_node_params
from .runner import ReplayOptions, ReplayResult, run_replay

__all__ = [
    "EmptyBagError",
    "ExtractOptions",
    "ExtractResult",
    "MissingTopicError",
    "NodeParams",
    "ReplayOptions",
    "ReplayResult",
    "TopicSelection",
    "UnsupportedTopicError",
    "bench_replay",
    "extract_dataset",
    "load_node_params",
    "run_compare",
    "run_replay",
    "select_topics",
]
