"""report.html in a real browser (Debian chromium, headless): every image decodes and is visible, no
request leaves the page, and a screenshot is saved for a human to look at."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from run_fixture import write_fake_run_with_figures
from stsae.report.html import write_report

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.needs(CHROMIUM.exists(),
                      "Debian chromium not installed at /usr/bin/chromium (apt-get install -y chromium)"),
]

# Placed before the report's Content-Security-Policy meta tag, so it runs while the page under test keeps
# its real policy; it records policy violations and, on load, the state of every image and every request.
PROBE = """<script>
window.__violations = [];
document.addEventListener('securitypolicyviolation',
  e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
window.addEventListener('load', () => {
  const images = Array.from(document.images).map(img => {
    const box = img.getBoundingClientRect(), style = getComputedStyle(img);
    return {alt: img.alt, complete: img.complete, natural: [img.naturalWidth, img.naturalHeight],
            box: [box.width, box.height],
            shown: style.display !== 'none' && style.visibility !== 'hidden'
                   && parseFloat(style.opacity) > 0};
  });
  const requests = performance.getEntriesByType('resource').map(e => e.name);
  const out = document.createElement('pre');
  out.id = 'browser-probe';
  out.textContent = JSON.stringify({images, requests, violations: window.__violations});
  document.body.appendChild(out);
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--no-first-run",
               "--host-resolver-rules=MAP * ~NOTFOUND",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    run_dir = write_fake_run_with_figures(base / "run", base, encoder_sha256="RANDOM")
    return write_report(run_dir, "Browser test report")


@pytest.fixture(scope="module")
def probe(report: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("probe")
    probed = work / "probed.html"
    probed.write_text(report.read_text().replace("<head>", "<head>\n" + PROBE, 1))
    dom = _chromium(work, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'<pre id="browser-probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, "the probe script did not run (chromium output has no #browser-probe)"
    return json.loads(html.unescape(found.group(1)))


def test_every_image_decodes_and_is_visible(probe: dict[str, Any]) -> None:
    images = probe["images"]
    assert images
    for image in images:
        assert image["complete"] and min(image["natural"]) > 0, f"{image['alt']} did not decode"
        assert image["shown"] and min(image["box"]) > 0, f"{image['alt']} is not visible"


def test_no_request_leaves_the_page(probe: dict[str, Any]) -> None:
    assert probe["requests"] == []
    assert probe["violations"] == []


def test_screenshot_is_saved(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--hide-scrollbars", "--window-size=1280,4000", f"--screenshot={shot}",
              report.as_uri())
    image = mpimg.imread(shot)
    assert image.shape[:2] == (4000, 1280)
