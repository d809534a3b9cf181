"""Class tables of the labelled benchmarks: sizes, order, palettes, lookup."""

from __future__ import annotations

import numpy as np
import pytest

from ivf_perception.io.classes import (
    CLASS_TABLES,
    FMB_CLASSES,
    MFNET_CLASSES,
    MFNET_PALETTE,
    PST900_CLASSES,
    class_table,
    colorize_labels,
    palette_to_array,
)


def test_tables_sizes_and_order() -> None:
    assert {name: len(t) for name, t in CLASS_TABLES.items()} == {"mfnet": 9, "msrs": 9, "pst900": 5, "fmb": 15}
    for table in CLASS_TABLES.values():
        assert len(table.palette) == len(table.classes)
        assert palette_to_array(table.palette).shape == (len(table), 3)
        assert table.palette[0] == 0x000000  # background / unlabelled is black everywhere
    assert class_table("msrs").classes == MFNET_CLASSES and class_table("MSRS").palette == tuple(MFNET_PALETTE)
    assert PST900_CLASSES.index("hand_drill") == 3 and PST900_CLASSES.index("fire_extinguisher") == 1
    assert FMB_CLASSES.index("car") == 9 and FMB_CLASSES[-1] == "pole"


def test_pst900_palette_colours() -> None:
    labels = np.array([[0, 1, 2, 3, 4]], np.uint8)
    rgb = colorize_labels(labels, class_table("pst900").palette)
    assert rgb[0].tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]


def test_unknown_table_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="no class table for dataset 'kaist'; known: mfnet, msrs, pst900, fmb"):
        class_table("kaist")
