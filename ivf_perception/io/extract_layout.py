"""The folder layout ``ivf-perception extract`` writes and the training package reads.

Why in ``io``: the layout is a file convention shared by two front doors, the writer
(:mod:`ivf_perception.replay.extract`) and the reader (``ivf_training``'s extracted-folder
dataset). Keeping it here lets the reader check a folder without importing ``replay`` (which
pulls in the engine)::

    ROOT/vi/NAME.png       RGB, 8-bit
    ROOT/ir/NAME.png       thermal as recorded: 8-bit gray, 16-bit raw counts or RGB false colour
    ROOT/labels/NAME.png   class ids, for frames of bags with a label topic
    ROOT/index.json        EXTRACT_INDEX_FORMAT: source, pairing, one entry per frame, skipped frames
"""

from __future__ import annotations

__all__ = ["EXTRACT_INDEX_FORMAT"]

EXTRACT_INDEX_FORMAT = "ivf_perception.extract/1"
"""The ``format`` field of ``index.json``; bump it when the index changes incompatibly."""
