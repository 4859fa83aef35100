"""The HTML report in a real browser: headless Chromium draws it, and the plots are
on the screenshot (coloured pixels where the bars and areas are), not an empty page."""

import shutil
import subprocess

import numpy as np

from slurmkit.goodput import report
from tests.unit.test_goodput import CHAIN, HOSTILE, PREEMPTOR, chain_events, runs_of

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_html_report_draws_its_plots_in_chromium(tmp_path):
    assert CHROMIUM, "chromium is missing: `make test` installs it (apt-get install chromium)"
    from PIL import Image

    runs, stats = runs_of(CHAIN + [PREEMPTOR] + HOSTILE)
    summary, result = report.build(runs, events=chain_events(), stats=stats,
                                   now=1_800_002_000, capacity_gpus=32)
    page = tmp_path / "report.html"
    page.write_text(report.format_html(summary, result), encoding="utf-8")
    assert page.read_text().count("<svg") == 4
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--window-size=1280,2600",
                    f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[0] >= 2000
    spread = pixels.max(axis=2) - pixels.min(axis=2)  # 0 for white, grey and black
    coloured = spread > 60
    assert coloured.mean() > 0.02, "no plots on the page"
    # Each plot lies in its own band of the page: every band has coloured pixels.
    rows_with_colour = np.flatnonzero(coloured.any(axis=1))
    assert rows_with_colour.size > 300
    def near(colour):
        return (np.abs(pixels - np.array(colour)).sum(axis=2) < 40).sum()
    assert near((0x1E, 0x88, 0xE5)) > 500   # ETTR bars (blue)
    assert near((0x43, 0xA0, 0x47)) > 500   # productive GPU-hours (green)
    assert near((0xC6, 0x28, 0x28)) > 50    # a NODE_FAIL run on the timeline (red)
