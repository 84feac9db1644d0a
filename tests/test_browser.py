"""The leaderboard page in a real browser: headless Chromium (Debian's ``chromium``) renders it offline.

Checks the rendered table (rows, order, paper rows), that hostile model names stay text (no injected
element, no handler ran), that ``?sort=`` sorts on load, and takes a screenshot.
"""

from __future__ import annotations

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
