"""Render a bench HTML report in a headless browser and save a screenshot: checks the page draws with no
network (the report is self-contained), e.g.

    python benchmarks/render_report.py runs/minilm-cpu/bench/report.html -o report.png

Needs chromium (Debian: apt-get install chromium). Exit code 1 when the browser fails or the
screenshot is blank.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=Path("report.png"))
    ap.add_argument("--size", default="1280,2400")
    a = ap.parse_args()
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        print("error: no chromium found (apt-get install chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as profile:
        # --no-proxy-server + a blocked resolver: any network fetch by the page would fail
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--user-data-dir={profile}", f"--window-size={a.size}", f"--screenshot={a.out.resolve()}", a.html.resolve().as_uri()]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0 or not a.out.is_file():
        print(f"error: {browser} failed ({p.returncode}): {p.stderr[-500:]}", file=sys.stderr)
        return 1
    from PIL import Image

    im = Image.open(a.out).convert("L")
    lo, hi = im.getextrema()
    if hi - lo < 50:
        print(f"error: {a.out} looks blank", file=sys.stderr)
        return 1
    print(f"{a.out}: {im.size[0]}x{im.size[1]} screenshot of {a.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
