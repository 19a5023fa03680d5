"""Save a screenshot of the dashboard over the demo fleet (docs/images/dashboard.png).

Builds a workspace with ``edgeops.dashboard.sample_data`` in a temporary directory (six
devices, two hours of telemetry with a drifted feature, samples, labels, alerts and a
rollout in progress), serves it on a free local port and photographs the page in headless
Chromium through Playwright. Needs the ``server`` extra, ``playwright`` and a Chromium
binary (Debian: ``apt-get install chromium``)::

    python scripts/dashboard_screenshot.py [--out docs/images/dashboard.png]
        [--chromium /usr/bin/chromium] [--width 1400]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "dashboard.png")
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        print(f"no Chromium at {args.chromium}; install it or pass --chromium", file=sys.stderr)
        return 2

    from playwright.sync_api import sync_playwright

    from edgeops import Workspace
    from edgeops.api import create_app
    from edgeops.auth import Role, TokenStore
    from edgeops.dashboard.sample_data import build_sample_fleet, serving

    logging.getLogger("edgeops.collector").setLevel(logging.ERROR)  # the demo's rejects
    with tempfile.TemporaryDirectory() as tmp:
        for var in ("EDGEOPS_HOME", "EDGEOPS_ARTIFACTS", "EDGEOPS_FLEET", "EDGEOPS_MQTT_URL"):
            os.environ.pop(var, None)  # never the user's own workspace
        os.environ["EDGEOPS_DB_URL"] = f"sqlite:///{Path(tmp) / 'edgeops.db'}"
        ws, _ = Workspace.init(Path(tmp) / "demo")
        try:
            built = build_sample_fleet(ws, now=time.time())
            token, _ = TokenStore(ws.db).create("screenshot", Role.VIEWER)
            with serving(create_app(ws)) as url, sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": args.width, "height": 900})
                page.goto(f"{url}/?refresh=0")
                page.fill("#token-input", token)  # sign in as a viewer
                page.click("#login-form button[type=submit]")
                page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                page.wait_for_selector("[data-chart='heatmap']")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            ws.close()
    print(f"{args.out}: {built.windows} windows, {built.alerts_opened} alerts, {built.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
