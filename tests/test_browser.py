"""The leaderboard page in a real browser: headless Chromium (Debian's ``chromium``) renders it offline.

Checks the rendered table (rows, order, paper rows), that hostile model names stay text (no injected
element, no handler ran), that ``?sort=`` sorts on load, that at 1280 px the page does not scroll sideways
while the board scrolls in its own box with the model column sticky, and takes screenshots (the 1280-px ones
are also copied to ``/tmp/leaderboard-1280*.png``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from test_leaderboard import EVIL_IMG, make_result, standard_results, write_results

from lsbench.benchmark import leaderboard as lb

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)"),
]


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with a throwaway profile; its stdout."""
    profile = tmp_path / "profile"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def dom_rows(dom: str) -> list[tuple[str, list[str], list[str]]]:
    """(row class, cell texts, numeric data-values) of every row of the board's tbody in a dumped DOM."""
    body = dom.split('<table id="board">', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = []
    for kind, inner in re.findall(r'<tr class="(\w+)"[^>]*>(.*?)</tr>', body, flags=re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", inner, flags=re.S)
        values = re.findall(r'<td class="num" data-value="([^"]*)"', inner)
        rows.append((kind, cells, values))
    return rows


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    results = standard_results(root / "results")
    write_results(results, {"img.json": make_result(EVIL_IMG, 0.85)})
    folder = next(p for p in lb.build(results, root / "site") if p.name.startswith("mnist"))
    return folder / "index.html"


def test_rendered_table(page, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    rows = dom_rows(dom)
    assert len(rows) == 4 + 24 + 4  # ours + paper Table 2 + paper Table 3
    assert [kind for kind, _, _ in rows[:4]] == ["ours"] * 4 and {kind for kind, _, _ in rows[4:]} == {"paper"}
    models = [cells[0] for _, cells, _ in rows[:4]]
    assert models[0] == "swin_dec" and models[-1] == "vit_aug"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;|x" in models and any("&lt;img src=x onerror=" in m for m in models)
    assert all('<span class="badge">paper</span>' in cells[0] for _, cells, _ in rows[4:])
    assert all("paper Table" in cells[3] for _, cells, _ in rows[4:])
    # The hostile names stayed text: the page has only its own script, no injected image, no handler ran.
    assert len(re.findall(r"<script\b", dom)) == 1
    assert not re.search(r"<img[^>]*src=\"x\"", dom)
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]


@pytest.mark.parametrize(("query", "column", "descending"), [
    ("?sort=acc&dir=asc", 4, False),
    ("?sort=acc", 4, True),  # accuracy sorts best first by default
    ("?sort=inve", 5, False),  # InvE: lower is better, ascending by default
])
def test_sort_query(page, tmp_path, query, column, descending):
    dom = chromium(tmp_path, "--dump-dom", page.as_uri() + query)
    head = re.findall(r"<th ([^>]*)>", dom)[column]
    assert f'aria-sort="{"descending" if descending else "ascending"}"' in head
    values = [values[column - 4] for _, _, values in dom_rows(dom)]
    present = [float(v) for v in values if v != ""]
    assert present == sorted(present, reverse=descending)
    assert values[len(present):] == [""] * (len(values) - len(present))  # missing values last


def test_sort_by_text_column(page, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", page.as_uri() + "?sort=source&dir=desc")
    sources = [cells[3] for _, cells, _ in dom_rows(dom)]
    expected = ["vit_aug.json", "swin_dec.json"] + ["paper Table 3"] * 4 + ["paper Table 2"] * 24
    assert sources == expected + ["nested/evil.json", "img.json"]


def test_screenshot(page, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", page.as_uri())
    assert shot.stat().st_size > 20_000
    with Image.open(shot) as im:
        assert im.size == (1280, 900)
        colors = im.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colors is not None and len(colors) > 50  # text, table and badges, not a blank page


# Measures the page as laid out (run after the page's own script, allowed by its own hash in the CSP):
# does the document scroll sideways, is the board's first column sticky, and does it stay put when the
# board's box is scrolled.  The answer goes into an attribute of <html>, read back from --dump-dom.
PROBE = """(function () {
  var wrap = document.getElementById("board-scroll"), table = document.getElementById("board");
  var cell = table.tBodies[0].rows[0].cells[0], head = table.tHead.rows[0].cells[0];
  var left = function (el) { return el.getBoundingClientRect().left; };
  var before = [left(cell), left(table.tBodies[0].rows[0].cells[4])];
  wrap.scrollLeft = 400;
  var probe = {
    innerWidth: window.innerWidth, docScrollWidth: document.documentElement.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    cellPosition: getComputedStyle(cell).position, headPosition: getComputedStyle(head).position,
    cellBackground: getComputedStyle(cell).backgroundColor, wrapOverflowX: getComputedStyle(wrap).overflowX,
    wrapScrollWidth: wrap.scrollWidth, wrapClientWidth: wrap.clientWidth, scrolled: wrap.scrollLeft,
    cellMoved: left(cell) - before[0], otherMoved: left(table.tBodies[0].rows[0].cells[4]) - before[1],
    images: document.images.length
  };
  wrap.scrollLeft = 0;
  document.documentElement.setAttribute("data-probe", JSON.stringify(probe));
})();"""


def probe_page(page: Path) -> Path:
    """A copy of ``page`` (same folder, so its plots load) that runs :data:`PROBE` after its own script."""
    text = page.read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(PROBE.encode("utf-8")).digest()).decode("ascii")
    csp = re.search(r"script-src &#x27;sha256-[A-Za-z0-9+/=]+&#x27;", text)  # the attribute is HTML-escaped
    assert csp, "the page's CSP names its script by hash"
    source = html.escape(f"'sha256-{digest}'")
    text = text.replace(csp.group(0), f"{csp.group(0)} {source}", 1)
    text = text.replace("</body>", f"<script>{PROBE}</script>\n</body>", 1)
    probe = page.with_name("probe-1280.html")
    probe.write_text(text, encoding="utf-8")
    return probe


def test_page_fits_1280_px_and_model_column_is_sticky(page, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", "--window-size=1280,900", probe_page(page).as_uri())
    found = re.search(r'<html[^>]*\sdata-probe="([^"]*)"', dom)
    assert found, "the probe did not run (CSP?)"
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["innerWidth"] == 1280
    assert probe["docScrollWidth"] <= 1280 and probe["bodyScrollWidth"] <= 1280  # no sideways scroll of the page
    assert probe["wrapOverflowX"] == "auto"
    assert probe["wrapScrollWidth"] > probe["wrapClientWidth"] and probe["scrolled"] > 0  # the board's box scrolls
    assert probe["cellPosition"] == "sticky" and probe["headPosition"] == "sticky"
    assert probe["cellBackground"] not in ("rgba(0, 0, 0, 0)", "transparent")  # text under it does not show through
    assert abs(probe["cellMoved"]) < 1 and probe["otherMoved"] < -100  # the model column stays, the rest scrolls
    assert probe["images"] == 4  # the four charts
    # screenshots for a human: the top of the page, and the whole of it
    shot, full = tmp_path / "leaderboard-1280.png", tmp_path / "leaderboard-1280-full.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", page.as_uri())
    chromium(tmp_path, f"--screenshot={full}", "--window-size=1280,3200", page.as_uri())
    for path, size in ((shot, (1280, 900)), (full, (1280, 3200))):
        with Image.open(path) as im:
            assert im.size == size
            assert len(im.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 50
        shutil.copy(path, Path("/tmp") / path.name)
