"""Regenerate the README's screenshots from a real run of the sample preset.

The app starts ``--preset sample`` as a user would (press s) in a scratch directory, so that the
screens show the relative run directory saved/sample; when the run is in the middle of epoch 5
(after the BLEU of epoch 4), the screen is saved as SVG at 120x40 and, at 80x24, the run page and
the loss page, and the 120x40 one as PNG too (rsvg-convert, from librsvg2-bin). Then the run is
stopped and the scratch directory removed.

    python docs/make_screenshots.py [--out docs] [--epoch 5]

Takes a few minutes on 2 CPU cores (the sample preset trains 8 epochs in about 1m15s alone).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tui.app import TransformerApp  # noqa: E402  (after the path: run as a script)


async def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"make_screenshots: no {what} after {seconds:.0f} s")
        await asyncio.sleep(0.1)


async def take(out: Path, epoch: int) -> list[Path]:
    app = TransformerApp(preset="sample")
    saved: list[Path] = []
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("s")

        def mid_epoch() -> bool:
            b = app.state.batch
            return b is not None and b.epoch == epoch and b.batch >= b.batches // 2

        await wait_for(lambda: mid_epoch() or app.state.status in ("failed", "finished"),
                       1800, f"batch in the middle of epoch {epoch}")
        if not mid_epoch():
            raise SystemExit(f"make_screenshots: the run {app.state.status} before epoch {epoch}: "
                             f"{app.state.reason}")
        for size, page, name in (((120, 40), "1", "screenshot-120x40.svg"),
                                 ((80, 24), "1", "screenshot-80x24.svg"),
                                 ((80, 24), "2", "screenshot-80x24-loss.svg")):
            await pilot.resize_terminal(*size)
            await pilot.press(page)
            await pilot.pause(0.3)
            app.dashboard.refresh_panels(force=True)
            await pilot.pause(0.3)
            saved.append(Path(app.save_screenshot(name, path=str(out))))
        await pilot.press("x", "y")
        await wait_for(lambda: not app.state.active, 300, "stop")
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--epoch", type=int, default=5, help="the epoch to show, mid-way")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="screenshots_"))
    try:
        os.chdir(scratch)  # the screens show saved/sample, as in a user's checkout
        for path in asyncio.run(take(out, args.epoch)):
            print(f"saved {path}")
            if path.name == "screenshot-120x40.svg" and shutil.which("rsvg-convert"):
                # the PNG the README shows: an SVG's text depends on the viewer's fonts
                png = path.with_suffix(".png")
                subprocess.run(["rsvg-convert", "-o", str(png), str(path)], check=True)
                print(f"saved {png}")
    finally:
        os.chdir(ROOT)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
