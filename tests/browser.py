"""Headless Debian chromium for the report tests: find it (CI must have it: .ci/run installs it),
run it, and a load-time probe script that writes what the page laid out into the DOM."""
import html
import json
import os
import re
import shutil
import subprocess

import pytest


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI") == "true":
        pytest.fail("CI must check the report in a real browser: .ci/run installs Debian's chromium")
    pytest.skip("no chromium here (CI installs it: apt-get install chromium)")


def run_browser(*args) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def probe(page_html: str, script: str, tmp_path, width: int = 1280) -> dict:
    """Open a copy of ``page_html`` with ``script`` (a load handler setting ``data-check`` on the
    body to a JSON string) at ``width`` px and return that JSON."""
    path = tmp_path / "probe.html"
    path.write_text(page_html.replace("</body>", script + "\n</body>"))
    dom = run_browser(f"--window-size={width},900", "--virtual-time-budget=10000", "--dump-dom",
                      path.as_uri()).stdout
    found = re.search(r'data-check="([^"]+)"', dom)
    assert found, "the load handler did not run"
    return json.loads(html.unescape(found.group(1)))
