"""report.html in a real browser (Debian chromium, headless): every image decodes and is visible, no
request leaves the page, the concept dashboard's table sorts, a card opens with all its parts, the window
view lists a window's concepts, nothing logs an error, and screenshots are saved for a human to look at."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import pytest

from stsae.report.dashboard import build_dashboard
from stsae.report.html import write_report
from test_dashboard import dashboard_config, write_dashboard_run

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
window.__errors = [];
document.addEventListener('securitypolicyviolation',
  e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
window.addEventListener('error', e => window.__errors.push(String(e.message)));
const consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(' ')); consoleError(...args); };
function dashboardProbe() {
  const ids = () => Array.from(document.querySelectorAll('#concept-table tbody tr')).map(r => r.dataset.concept);
  const header = document.querySelector('#concept-table th[data-key="density"]');
  if (!header) { return null; }
  const before = ids();
  header.click();
  const sorted = ids();
  const density = Array.from(document.querySelectorAll('#concept-table tbody tr'))
    .map(r => parseFloat(r.children[1].textContent));
  const link = document.querySelector('#concept-table tbody a[data-concept]');
  location.hash = 'concept-' + link.dataset.concept;
  window.dispatchEvent(new HashChangeEvent('hashchange'));
  const card = document.getElementById('concept-card');
  const parts = {title: card.querySelector('h3') && card.querySelector('h3').textContent,
    density: !!card.querySelector('.density'), histogram: card.querySelectorAll('svg.hist rect').length,
    top: card.querySelectorAll('.thumbs.top .thumb').length,
    onsets: card.querySelectorAll('.thumbs.top line.onset').length,
    quantiles: card.querySelectorAll('.thumbs.quantile').length,
    effects: card.querySelectorAll('table.effects tr').length,
    reliability: card.querySelectorAll('table.reliability tr').length,
    pulses: card.querySelectorAll('.pulses svg').length + card.querySelectorAll('p.muted').length,
    mix: card.querySelectorAll('.mix div').length, text: card.textContent};
  const thumb = card.querySelector('.thumbs.top .thumb');
  location.hash = 'window-' + thumb.dataset.window;
  window.dispatchEvent(new HashChangeEvent('hashchange'));
  const view = document.getElementById('window-view');
  const windowView = {title: view.querySelector('h3').textContent,
    waveform: view.querySelectorAll('polyline').length,
    concepts: Array.from(view.querySelectorAll('table.window-concepts tbody tr')).map(r => r.children[0].textContent)};
  return {before, sorted, density, card: parts, window: windowView, n_rows: before.length};
}
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
  const dashboard = dashboardProbe();
  out.textContent = JSON.stringify({images, requests, violations: window.__violations, errors: window.__errors,
                                    dashboard});
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
    run_dir = write_dashboard_run(base / "run", base)
    return write_report(run_dir, "Browser test report", build_dashboard(run_dir, dashboard_config()))


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


def test_no_script_error_or_console_error(probe: dict[str, Any]) -> None:
    assert probe["errors"] == []


def test_concept_table_sorts_by_a_clicked_column(probe: dict[str, Any]) -> None:
    dashboard = probe["dashboard"]
    assert dashboard is not None, "the dashboard script did not render its table"
    assert dashboard["n_rows"] > 1 and sorted(dashboard["sorted"]) == sorted(dashboard["before"])
    assert dashboard["density"] == sorted(dashboard["density"], reverse=True)


def test_a_concept_card_opens_with_all_its_parts(probe: dict[str, Any]) -> None:
    card = probe["dashboard"]["card"]
    assert card["title"].startswith("Concept ")
    assert card["density"] and card["histogram"] > 0
    assert card["top"] > 0 and card["onsets"] > 0 and card["quantiles"] >= 1
    assert card["effects"] == 3 and card["reliability"] == 3
    assert card["pulses"] > 0 and card["mix"] == 3
    for needle in ("Predicted age", "HTN OR per SD", "T2D OR per SD", "Within-record lag-1", "Matched cosine"):
        assert needle in card["text"]


def test_the_window_view_lists_the_window_concepts(probe: dict[str, Any]) -> None:
    view = probe["dashboard"]["window"]
    assert view["title"].startswith("Window ") and view["waveform"] == 1
    assert len(view["concepts"]) >= 1


def test_screenshot_is_saved(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--hide-scrollbars", "--window-size=1280,4000", f"--screenshot={shot}",
              report.as_uri())
    image = mpimg.imread(shot)
    assert image.shape[:2] == (4000, 1280)


# Headless chromium paints nothing when a screenshot's page is scrolled (an anchor in the URL, or
# scrollIntoView), so the screenshot copy shows the dashboard section alone and opens the view in place.
SHOT = """<script>
Element.prototype.scrollIntoView = function () {};
window.addEventListener('load', () => {
  document.querySelectorAll('header, nav, footer, main > section:not(#dashboard), main > .banner')
    .forEach(node => { node.style.display = 'none'; });
  history.replaceState(null, '', '#VIEW');
  window.dispatchEvent(new HashChangeEvent('hashchange'));
});
</script>"""


@pytest.mark.parametrize("view", ["table", "card", "window"])
def test_dashboard_view_screenshots_are_saved_in_the_run_dir(report: Path, tmp_path: Path, view: str) -> None:
    text = report.read_text()
    data = json.loads(re.search(r'id="dashboard-data">(.*?)</script>', text).group(1))
    anchor = {"table": "dashboard", "card": f"concept-{data['concepts'][0]['id']}",
              "window": f"window-{next(iter(data['windows']))}"}[view]
    page = tmp_path / "shot.html"
    page.write_text(text.replace("<head>", "<head>\n" + SHOT.replace("VIEW", anchor), 1))
    shot = report.parent / "screenshots" / f"dashboard-{view}.png"
    shot.parent.mkdir(exist_ok=True)
    _chromium(tmp_path, "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    image = mpimg.imread(shot)
    assert image.shape[:2] == (2400, 1280)
    assert image[..., :3].std() > 0.05, f"{shot} is blank"
