"""TeSG in replay with the guidance cache: cached frames run guided, the others the fallback, and
every frame's FusionStats in the output bag says which (``--guidance-mode cache``)."""

from __future__ import annotations

import json

import torch
from replay_helpers import FRAMES

from ivf_perception.cli.replay import main as replay_main
from ivf_perception.guidance import GuidanceCache
from ivf_perception.io import decode_rgb, decode_thermal
from ivf_perception.io.bag_reader import BagReader
from ivf_perception.io.image_codec import header_stamp_ns

TESG = ["--variant", "test_tesg", "--weights", "none", "--device", "cpu", "--threads", "1", "--no-progress"]


def test_replay_reads_the_guidance_cache_and_reports_each_frame(mcap_bag, tmp_path):
    with BagReader(mcap_bag) as reader:
        rgbs = {header_stamp_ns(m.msg): decode_rgb(m.msg) for m in reader.messages(["/camera/rgb/image"])}
        thermals = {header_stamp_ns(m.msg): decode_thermal(m.msg) for m in reader.messages(["/camera/thermal/image"])}
    stamps = sorted(rgbs)
    cached = set(stamps[::2])                      # every other frame has an entry
    cache = GuidanceCache(tmp_path / "guidance", {"generator": "test"})
    for stamp in cached:
        rgb, thermal = rgbs[stamp], thermals[min(thermals, key=lambda t: abs(t - stamp))]
        cache.write(rgb, thermal, mask=torch.ones(rgb.shape[:2]), text_tokens=torch.randn(6, 16))
    out = tmp_path / "out"
    assert replay_main([str(mcap_bag), "--out", str(out), *TESG, "--guidance-mode", "cache",
                        "--guidance-cache", str(tmp_path / "guidance")]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["frames"] == FRAMES
    assert summary["guidance_frames"] == {"cache": len(cached), "fallback": FRAMES - len(cached)}
    report = (out / "report.md").read_text()
    assert f"cache: {len(cached)} frames cache, {FRAMES - len(cached)} frames fallback" in report
    with BagReader(out / "bag") as reader:
        topic = next(t for t in reader.topics if t.endswith("stats"))
        stats = [m.msg for m in reader.messages([topic])]
    sources = {header_stamp_ns(s): (s.guidance_source, s.guidance_age_s) for s in stats}
    assert sources == {s: (("cache", 0.0) if s in cached else ("fallback", -1.0)) for s in stamps}
    assert 0 < len(cached) < FRAMES


def test_compare_runs_tesg_fallback_against_cached_guidance(mcap_bag, tmp_path):
    from ivf_perception.cli.compare import main as compare_main

    with BagReader(mcap_bag) as reader:
        rgbs = [decode_rgb(m.msg) for m in reader.messages(["/camera/rgb/image"])]
        thermals = [decode_thermal(m.msg) for m in reader.messages(["/camera/thermal/image"])]
    cache = GuidanceCache(tmp_path / "guidance", {"generator": "test"})
    for rgb, thermal in zip(rgbs, thermals):
        cache.write(rgb, thermal, mask=torch.ones(rgb.shape[:2]), text_tokens=torch.randn(6, 16))
    out = tmp_path / "cmp"
    code = compare_main([str(mcap_bag), "--out", str(out), "--a-variant", "test_tesg", "--a-weights", "none",
                         "--b-variant", "test_tesg", "--b-weights", "none",
                         "--b-guidance-mode", "cache", "--b-guidance-cache", str(tmp_path / "guidance"),
                         "--device", "cpu", "--threads", "1", "--no-progress", "--max-frames", "3"])
    assert code == 0
    for name, expected in (("a", "fallback"), ("b", "cache")):
        with BagReader(out / name / "bag") as reader:
            topic = next(t for t in reader.topics if t.endswith("stats"))
            assert {m.msg.guidance_source for m in reader.messages([topic])} == {expected}, name
