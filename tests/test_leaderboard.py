"""The leaderboard (``lsbench.benchmark.leaderboard``): site layout, ranking, paper rows, escaping, refusals,
the comparative charts (their data, through :func:`plots.charts`, and their files)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from PIL import Image

from lsbench.benchmark import leaderboard as lb
from lsbench.benchmark import results
from lsbench.benchmark.leaderboard import plots
from lsbench.benchmark.leaderboard.rows import Row
from lsbench.benchmark.leaderboard.tables import group_results
from lsbench.dec_models.registry import ARCHS, METHODS
from lsbench.errors import LsbenchError

HASH_A = "a" * 64
HASH_B = "b" * 64
EVIL = "<script>alert(1)</script>|x"
EVIL_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
MNIST_BINS = [("[0.4, 1.0]", 0.4, 1.0), ("[1.0, 2.0]", 1.0, 2.0), ("[2.0, 3.0]", 2.0, 3.0)]


def make_result(
    name: str = "swin_dec",
    accuracy: float | None = 0.9,
    *,
    dataset: str = "mnist-ls-3digit",
    split: str = "test",
    generator: str = "mnist",
    task: str = "cls",
    manifest: str = HASH_A,
    per_scale: list[tuple[str, float, float]] | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A schema-valid result; per-scale accuracies/P(correct) scatter around ``accuracy``."""
    bins = MNIST_BINS if per_scale is None else per_scale
    acc = accuracy if accuracy is not None else 0.5
    scales = [
        {"label": label, "lo": lo, "hi": hi, "count": 100, "accuracy": min(1.0, acc + 0.01 * (i - 1)),
         "p_correct": min(1.0, 0.9 * acc + 0.02 * i)}
        for i, (label, lo, hi) in enumerate(bins)
    ]
    return {
        "schema_version": 1,
        "model": {"name": name, "config": config if config is not None else {"name": name, "size": "micro"},
                  "checkpoint": "ckpt.pt", "checkpoint_sha256": "c" * 64, "parameters": 1_234_567},
        "dataset": {"name": dataset, "generator": generator, "split": split, "manifest_sha256": manifest,
                    "num_samples": 500, "task": task, "num_classes": 1000 if task == "cls" else 3},
        "metrics": {
            "num_samples": 500, "num_groups": 100,
            "accuracy": accuracy if task == "cls" else None, "miou": accuracy if task == "seg" else None,
            "inve": 5.0 * (1 - acc), "inve_code": 0.05 * (1 - acc),
            "eque": 0.05 if task == "seg" else None, "eque_code": 0.2 if task == "seg" else None,
            "accuracy_std_across_scales": 0.01, "per_scale": scales,
        },
        "efficiency": {"images_per_s": 321.5, "ms_per_batch": 99.5, "batch_size": 32, "parameters": 1_234_567,
                       "deq_iterations": 7.5, "deq_residual": 1e-4},
        "environment": {"device": "cpu", "world_size": 1, "command": "lsbench evaluate",
                        "versions": {"lsbench": "0.1.0", "torch": "2.14.1", "timm": "1.0", "python": "3.11"},
                        "wall_time_s": 12.0, "created": "2026-11-26T00:00:00Z"},
    }


def write_results(folder: Path, results: dict[str, dict[str, Any]]) -> Path:
    """Write ``{relative file name: result}`` under ``folder``."""
    for rel, data in results.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data), encoding="utf-8")
    return folder


def standard_results(folder: Path) -> Path:
    """Three MNIST results (one with a hostile name, in a subfolder) and one GSO segmentation result."""
    return write_results(folder, {
        "swin_dec.json": make_result("swin_dec", 0.95),
        "vit_aug.json": make_result("vit_aug", 0.80),
        "nested/evil.json": make_result(EVIL, 0.90, config={"note": EVIL_IMG}),
        "gso.json": make_result("vit_dec", 0.70, dataset="gso-ls", generator="gso", task="seg", manifest=HASH_B,
                                per_scale=[("near", 0.5, 0.9), ("far", 0.9, 1.5)]),
    })


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("lb")
    written = lb.build(standard_results(root / "results"), root / "site")
    return root / "site", written


def tbody_rows(html_text: str) -> list[str]:
    body = html_text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr class=\"(?:ours|paper)\".*?</tr>", body, flags=re.S)


def test_helper_results_are_schema_valid():
    schema = json.loads(results.SCHEMA_PATH.read_text())
    for task in ("cls", "seg"):
        jsonschema.validate(make_result(task=task), schema)


def test_site_layout(site):
    out, written = site
    assert written == [out / "gso-ls-test", out / "mnist-ls-3digit-test"]
    assert (out / "index.html").is_file()
    for folder in written:
        assert (folder / "index.html").is_file() and (folder / "leaderboard.md").is_file()
        assert sorted((folder / "plots").glob("*.png"))
    front = (out / "index.html").read_text()
    assert 'href="mnist-ls-3digit-test/index.html"' in front and 'href="gso-ls-test/index.html"' in front


def test_rows_sorted_and_paper_rows_marked(site):
    out, _ = site
    rows = tbody_rows((out / "mnist-ls-3digit-test" / "index.html").read_text())
    ours = [r for r in rows if r.startswith('<tr class="ours"')]
    paper = [r for r in rows if r.startswith('<tr class="paper"')]
    assert len(ours) == 3 and len(paper) == 24 + 4  # Table 2: 6 archs x 4 methods; Table 3: 4 methods
    assert rows[:3] == ours  # ours first, best first
    assert "swin_dec" in ours[0] and "&lt;script&gt;" in ours[1] and "vit_aug" in ours[2]
    assert all('<span class="badge">paper</span>' in r for r in paper)
    assert all('data-source="paper Table 2"' in r for r in paper[:24])
    assert all('data-source="paper Table 3"' in r for r in paper[24:])
    assert "96.91 ± 0.12" in "".join(paper)  # Table 2, Swin, Ours: Acc printed with its error bar
    assert ">95.14<" in "".join(paper)  # Table 3, Ours, [0.4, 1.0] bracket joins our bin column


def test_columns(site):
    out, _ = site
    cls_page = (out / "mnist-ls-3digit-test" / "index.html").read_text()
    heads = re.findall(r'<th data-key="([^"]+)"', cls_page)
    assert heads == ["model", "method", "arch", "source", "acc", "inve", "inve_code", "std", "scale-1", "scale-2",
                     "scale-3", "images_per_s", "ms_per_batch", "params_m", "deq_iterations", "checkpoint"]
    seg_page = (out / "gso-ls-test" / "index.html").read_text()
    seg_heads = re.findall(r'<th data-key="([^"]+)"', seg_page)
    assert seg_heads[4] == "miou" and "eque" in seg_heads and "eque_code" in seg_heads and "inve_code" in seg_heads
    row = tbody_rows(cls_page)[0]
    assert ">95.00<" in row and ">1.23<" in row and ">cccccccccccc<" in row and ">swin_dec.json<" in row


def test_seg_table_has_table1_reference(site):
    out, _ = site
    rows = tbody_rows((out / "gso-ls-test" / "index.html").read_text())
    assert len(rows) == 1 + 12
    assert all('data-source="paper Table 1"' in r for r in rows[1:])
    assert ">0.050<" in "".join(rows)  # Canon Swin EquE keeps the paper's three decimals


def test_html_escapes_everything(site):
    out, _ = site
    page = (out / "mnist-ls-3digit-test" / "index.html").read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;|x" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=" in page  # config tooltip
    assert page.count("<script") == 1  # only the page's own sorting script
    assert "nested/evil.json" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing external


def test_markdown_escapes(site):
    out, _ = site
    md = (out / "mnist-ls-3digit-test" / "leaderboard.md").read_text()
    assert "<script>" not in md and r"&lt;script&gt;alert(1)&lt;/script&gt;\|x" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    cells_per_line = {len(re.split(r"(?<!\\)\|", line)) for line in table}
    assert len(cells_per_line) == 1  # the escaped | did not add a column
    assert sum("(paper)" in line and "paper Table" in line for line in table) == 28


CHARTS = ["scale-accuracy.png", "scale-pcorrect.png", "inve-vs-accuracy.png", "accuracy-vs-speed.png"]


def table_charts(results_dir: Path, name: str) -> tuple[list[Row], dict[str, plots.Chart]]:
    """The rows of table ``name`` and its charts by file name, as :func:`lb.build` would plot them."""
    table = next(t for t in group_results(results.load_results(results_dir)) if t.name == name)
    rows = lb.table_rows(table)
    return rows, {chart.file: chart for chart in plots.charts(table, rows)}


def test_charts_are_pngs_one_per_question(site):
    out, _ = site
    for slug in ("mnist-ls-3digit-test", "gso-ls-test"):
        folder = out / slug
        assert sorted(p.name for p in (folder / "plots").glob("*.png")) == sorted(CHARTS)  # no per-result plots
        page, md = (folder / "index.html").read_text(), (folder / "leaderboard.md").read_text()
        assert page.count("<img ") == len(CHARTS) and "is not drawn" not in page
        for name in CHARTS:
            plot = folder / "plots" / name
            assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            with Image.open(plot) as im:
                assert im.size == (800, 420)  # fixed size, what the page's <img> reserves
                im.verify()
            assert f'<img src="plots/{name}"' in page and 'width="800" height="420"' in page
            assert f"](plots/{name})" in md


def test_scale_charts_one_line_per_model_and_dashed_paper_rows(site):
    out, _ = site
    rows, charts = table_charts(out.parent / "results", "mnist-ls-3digit")
    acc, pcorrect = charts["scale-accuracy.png"], charts["scale-pcorrect.png"]
    assert acc.bins == pcorrect.bins == [label for label, _, _ in MNIST_BINS]
    with_scales = [r for r in rows if any(v is not None for _, _, v, _ in r.scales)]
    assert len(with_scales) == 3 + 4  # ours and paper Table 3 (Table 2 has no per-scale numbers)
    assert len(acc.series) == len(with_scales)
    assert [s.name for s in acc.series[:3]] == ["swin_dec", EVIL, "vit_aug"]  # ours first, best first
    assert {s.name for s in acc.series[3:]} == {f"swin_{m} (paper Table 3)" for m in ("dec", "aug", "invl", "canon")}
    assert [s.paper for s in acc.series] == [False] * 3 + [True] * 4  # drawn dashed
    assert acc.series[0].values == pytest.approx([94.0, 95.0, 96.0])  # make_result: acc + 0.01 (i - 1), in %
    # P(correct): the paper prints none, so ours only
    assert [s.name for s in pcorrect.series] == ["swin_dec", EVIL, "vit_aug"]
    assert pcorrect.series[0].values == pytest.approx([85.5, 87.5, 89.5])


def bins_result(name: str, accuracy: float, counts: list[int]) -> dict[str, Any]:
    """A 10-class result over four bins with the given sample counts (an empty bin has no numbers)."""
    result = make_result(name, accuracy, dataset="mnist-ls-1digit", per_scale=MNIST_BINS + [("[3.0, 4.0]", 3.0, 4.0)])
    result["dataset"]["num_classes"] = 10
    for scale, count in zip(result["metrics"]["per_scale"], counts):
        scale["count"] = count
        if count == 0:
            scale["accuracy"] = scale["p_correct"] = None
    return result


def test_bins_no_sample_reaches_are_left_out(tmp_path):
    folder = write_results(tmp_path / "r", {
        "a.json": bins_result("resnet_dec", 0.9, [100, 0, 50, 0]),  # [1.0, 2.0] empty here, not in b
        "b.json": bins_result("vit_dec", 0.8, [100, 20, 50, 0]),  # [3.0, 4.0] empty in every result
    })
    rows, charts = table_charts(folder, "mnist-ls-1digit")
    for name in ("scale-accuracy.png", "scale-pcorrect.png"):
        assert charts[name].bins == ["[0.4, 1.0]", "[1.0, 2.0]", "[2.0, 3.0]"]
        assert len(charts[name].series) == 2
        resnet = next(s for s in charts[name].series if s.name == "resnet_dec")
        assert resnet.values[1] is None and None not in resnet.values[::2]  # a gap, not a zero
    assert [key for key, _ in plots.chart_bins(rows)] == [(0.4, 1.0), (1.0, 2.0), (2.0, 3.0)]
    page = (lb.build(folder, tmp_path / "site")[0] / "index.html").read_text()
    assert page.count("<img ") == len(CHARTS)


def test_seed_rows_bins_count_over_seeds(tmp_path):
    files = {f"dec{s}.json": study_result("resnet_dec", 0.9, s) for s in range(2)}
    files["dec0.json"]["metrics"]["per_scale"][2].update(count=0, accuracy=None, p_correct=None)
    (table,) = group_results(results.load_results(write_results(tmp_path / "r", files)))
    (row,) = [r for r in lb.table_rows(table) if not r.paper]
    assert list(row.counts.values()) == [200, 200, 100]  # the bin one seed reaches is kept
    assert len(plots.chart_bins([row])) == 3


def test_scatter_charts_one_labelled_point_per_model(site, tmp_path):
    out, _ = site
    rows, charts = table_charts(out.parent / "results", "mnist-ls-3digit")
    inve, speed = charts["inve-vs-accuracy.png"], charts["accuracy-vs-speed.png"]
    ours = [r for r in rows if not r.paper]
    assert [p.name for p in inve.points] == [r.model for r in ours]  # the paper's rows are not points
    assert [(p.x, p.y) for p in inve.points] == [(r.values["primary"], r.values["inve"]) for r in ours]
    assert inve.better == (1.0, 0.0) and inve.xlabel == "accuracy (%)"  # better: high accuracy, low InvE
    assert [(p.x, p.y) for p in speed.points] == [(321.5, r.values["primary"]) for r in ours]
    assert speed.better == (1.0, 1.0) and not speed.log_x
    # a study row's point: its mean, the std over seeds as error bars
    files = {f"dec{s}.json": study_result("resnet_dec", acc, s) for s, acc in enumerate((0.90, 0.92, 0.94))}
    _, charts = table_charts(write_results(tmp_path / "r", files), "mnist-ls-1digit")
    (point,) = charts["inve-vs-accuracy.png"].points
    assert (point.x, point.xerr) == pytest.approx((92.0, 2.0))
    assert point.yerr == pytest.approx(statistics.stdev(5.0 * (1 - a) for a in (0.90, 0.92, 0.94)))


def test_charts_with_nothing_to_show_are_not_drawn(tmp_path):
    full = make_result("resnet_dec", 0.9, dataset="plain", generator="custom")
    write_results(tmp_path / "r", {"a.json": full})
    folder = lb.build(tmp_path / "r", tmp_path / "site")[0]
    assert len(list((folder / "plots").glob("*.png"))) == len(CHARTS)
    bare = make_result("resnet_dec", 0.9, dataset="plain", generator="custom", per_scale=[])
    bare["metrics"]["inve"] = bare["metrics"]["inve_code"] = None
    write_results(tmp_path / "r", {"a.json": bare})
    lb.build(tmp_path / "r", tmp_path / "site")  # rebuilt: the charts of the first build are gone
    assert [p.name for p in (folder / "plots").glob("*.png")] == ["accuracy-vs-speed.png"]
    page, md = (folder / "index.html").read_text(), (folder / "leaderboard.md").read_text()
    for text in (page, md):
        assert text.count("is not drawn") == 3
        assert "The per-scale accuracy chart is not drawn: no row has per-scale accuracy." in text
        assert "The InvE vs accuracy chart is not drawn: no result of ours has both an InvE and accuracy." in text
    assert page.count("<img ") == 1 and 'src="plots/accuracy-vs-speed.png"' in page


def test_charts_are_deterministic(site, tmp_path):
    out, _ = site
    again = lb.build(out.parent / "results", tmp_path / "site")
    for folder in again:
        for name in CHARTS:
            png = (folder / "plots" / name).read_bytes()
            assert png == (out / folder.name / "plots" / name).read_bytes()
            assert b"tEXt" not in png and b"iTXt" not in png  # no software version, no date


def test_board_scrolls_in_its_own_box_with_the_model_column_sticky(site):
    out, _ = site
    page = (out / "mnist-ls-3digit-test" / "index.html").read_text()
    assert '<div class="scroll" id="board-scroll"><table id="board">' in page
    assert '<div class="scroll"><table id="zoo">' in page or "Model zoo" not in page
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert "#board-scroll{overflow:auto" in css
    assert "#board th:first-child,#board td:first-child{position:sticky;left:0;" in css and "background:#fff" in css


def test_refuses_different_manifest_hashes(tmp_path):
    results = write_results(tmp_path / "r", {
        "one.json": make_result("swin_dec"),
        "two.json": make_result("vit_dec", manifest=HASH_B),
    })
    with pytest.raises(lb.LeaderboardError) as info:
        lb.build(results, tmp_path / "site")
    message = str(info.value)
    assert "\n" not in message
    assert "one.json" in message and "two.json" in message and HASH_A in message and HASH_B in message
    assert not (tmp_path / "site").exists()  # refused before writing anything


def test_same_dataset_other_split_is_another_table(tmp_path):
    results = write_results(tmp_path / "r", {
        "a.json": make_result("swin_dec"),
        "b.json": make_result("swin_dec", split="test_04_10", manifest=HASH_A),
    })
    assert [p.name for p in lb.build(results, tmp_path / "site")] == ["mnist-ls-3digit-test",
                                                                        "mnist-ls-3digit-test_04_10"]


def test_invalid_json_names_the_file(tmp_path):
    results = write_results(tmp_path / "r", {"good.json": make_result()})
    (results / "broken.json").write_text('{"schema_version": 1,')
    with pytest.raises(LsbenchError, match=r"broken\.json: not valid JSON") as info:
        lb.build(results, tmp_path / "site")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ['{"a": NaN}', "\xff\xfe", ""])
def test_non_json_content(tmp_path, text):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(lb.LeaderboardError, match=r"x\.json: not valid JSON"):
        lb.build(tmp_path / "r", tmp_path / "site")


def test_schema_violation_names_file_and_field(tmp_path):
    bad = make_result()
    bad["dataset"]["manifest_sha256"] = "not-a-hash"
    write_results(tmp_path / "r", {"bad.json": bad})
    with pytest.raises(lb.LeaderboardError, match=r"bad\.json: not a valid lsbench result at dataset/manifest_sha256"):
        lb.build(tmp_path / "r", tmp_path / "site")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(lb.LeaderboardError, match="no result files"):
        lb.build(tmp_path / "empty", tmp_path / "site")
    with pytest.raises(lb.LeaderboardError, match="does not exist"):
        lb.build(tmp_path / "nope", tmp_path / "site")


def test_unknown_generator_has_no_paper_rows_and_rebuild_replaces_plots(tmp_path):
    one = make_result("my model $x$", 0.5, dataset="<b>odd</b>", generator="custom", per_scale=[("s", 1.0, 1.0)])
    write_results(tmp_path / "r", {"one.json": one})
    folder = lb.build(tmp_path / "r", tmp_path / "site")[0]
    page = (folder / "index.html").read_text()
    assert len(tbody_rows(page)) == 1 and "&lt;b&gt;odd&lt;/b&gt;" in page and "<b>odd" not in page
    assert folder.name == "b-odd-b-test"
    (folder / "plots" / "stale.png").write_bytes(b"old")
    lb.build(tmp_path / "r", tmp_path / "site")
    assert not (folder / "plots" / "stale.png").exists()


def test_result_without_metrics_sorts_last(tmp_path):
    write_results(tmp_path / "r", {"a.json": make_result("vit_base", None), "b.json": make_result("vit_dec", 0.1)})
    page = (lb.build(tmp_path / "r", tmp_path / "site")[0] / "index.html").read_text()
    rows = tbody_rows(page)
    assert "vit_dec" in rows[0] and "vit_base" in rows[1] and "—" in rows[1]


def test_arch_and_method_from_config_or_name():
    assert lb.arch_method({"name": "x", "config": {"name": "deit_invl"}}) == ("deit", "invl")
    assert lb.arch_method({"name": "beit_augl", "config": {}}) == ("beit", "augl")
    assert lb.arch_method({"name": "mine", "config": {"arch": "vit", "method": "dec"}}) == ("vit", "dec")
    assert lb.arch_method({"name": EVIL, "config": {}}) == ("—", "—")


# -- the transcribed paper numbers -------------------------------------------------------------


def paper_rows(kind: str, table: int) -> list[dict[str, Any]]:
    return next(t for t in lb.load_paper()[kind] if t["table"] == table)["rows"]


def test_paper_tables_complete():
    paper = lb.load_paper()
    assert [t["table"] for t in paper["gso"]] == [1]
    assert [t["table"] for t in paper["mnist"]] == [2, 3]
    assert [t["table"] for t in paper["imagenet"]] == [5, 6]
    assert len(paper_rows("gso", 1)) == 3 * 4
    assert len(paper_rows("mnist", 2)) == 6 * 4
    assert len(paper_rows("imagenet", 5)) == 4 * 5
    for kind in lb.KINDS:
        for table in paper[kind]:
            assert table["source"] == f"paper Table {table['table']}" and table["caption"].startswith("Table")
            for row in table["rows"]:
                assert row["arch"] in ARCHS and row["method"] in METHODS
                assert paper["paper"]["arch_names"][row["paper_arch"]] == row["arch"]
                assert paper["paper"]["method_names"][row["paper_method"]] == row["method"]


def test_paper_spot_values():
    t1 = {(r["arch"], r["method"]): r for r in paper_rows("gso", 1)}
    assert (t1["vit", "aug"]["miou"], t1["vit", "aug"]["eque"]) == (82.18, 0.054)
    assert (t1["dinov2", "dec"]["miou"], t1["dinov2", "dec"]["eque"]) == (80.86, 0.055)
    t2 = {(r["arch"], r["method"]): r for r in paper_rows("mnist", 2)}
    keys = ("accuracy", "accuracy_pm", "inve", "inve_pm")
    assert [t2["resnet", "aug"][k] for k in keys] == [93.09, 0.41, 13.71, 1.65]
    assert [t2["dinov2", "dec"][k] for k in keys] == [97.9, 0.21, 2.62, 1.69]
    t5 = {(r["arch"], r["method"]): r for r in paper_rows("imagenet", 5)}
    assert (t5["beit", "dec"]["accuracy"], t5["beit", "dec"]["inve"]) == (85.08, 6.24)


@pytest.mark.parametrize(("kind", "table"), [("mnist", 3), ("imagenet", 6)])
def test_paper_per_scale_tables_are_consistent(kind, table):
    """'Overall' is the mean of the printed per-scale numbers and '±' their population std (to rounding)."""
    for row in paper_rows(kind, table):
        values = [b["accuracy"] for b in row["per_scale"]]
        assert abs(statistics.mean(values) - row["accuracy"]) < 0.006
        assert abs(statistics.pstdev(values) - row["accuracy_std_across_scales"]) < 0.01


def test_paper_table6_overall_equals_table5_swin():
    t5 = {r["method"]: r["accuracy"] for r in paper_rows("imagenet", 5) if r["arch"] == "swin"}
    t6 = {r["method"]: r["accuracy"] for r in paper_rows("imagenet", 6)}
    assert t5 == t6


def test_imagenet_point_scales_join_our_columns(tmp_path):
    scales = [(f"{s:.1f}", s, s) for s in (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)]
    write_results(tmp_path / "r", {"a.json": make_result("swin_dec", 0.8, dataset="imnet", generator="imagenet",
                                                         per_scale=scales)})
    page = (lb.build(tmp_path / "r", tmp_path / "site")[0] / "index.html").read_text()
    heads = re.findall(r'<th data-key="(scale-\d+)"', page)
    assert len(heads) == 7
    assert len(tbody_rows(page)) == 1 + 20 + 5


def test_build_does_not_mutate_paper_numbers(site):
    assert lb.load_paper() == json.loads(lb.PAPER_PATH.read_text())


def test_paper_rows_only_for_the_papers_task(tmp_path):
    """A 10-class (1-digit) MNIST-LS is not the paper's 1,000-class task: no paper rows beside it."""
    result = make_result("resnet_dec", 0.9)
    result["dataset"]["num_classes"] = 10
    results = tmp_path / "results"
    results.mkdir()
    (results / "r.json").write_text(json.dumps(result))
    (folder,) = lb.build(results, tmp_path / "site")
    assert "paper Table" not in (folder / "leaderboard.md").read_text()


# --------------------------------------------------------------------------- studies: mean ± std over seeds


def study_result(name: str, accuracy: float, seed: int, group: str = "g1", study: str = "s") -> dict[str, Any]:
    result = make_result(name, accuracy, dataset="mnist-ls-1digit")
    result["study"] = {"name": study, "group": group, "run": f"{name}-seed{seed}-{group}", "seed": seed,
                       "role": "finetune", "run_dir": f"../../runs/ds/{name}-seed{seed}-{group}"}
    return result


def test_seeds_of_one_group_are_one_row_with_mean_and_sample_std(tmp_path):
    results = {f"r/dec{s}.json": study_result("resnet_dec", acc, s) for s, acc in enumerate((0.90, 0.92, 0.94))}
    results["r/aug0.json"] = study_result("resnet_aug", 0.93, 0, group="g2")  # one seed: no ±
    results["r/lone.json"] = make_result("resnet_invl", 0.91, dataset="mnist-ls-1digit")  # not a study
    written = lb.build(write_results(tmp_path / "results", results), tmp_path / "site")
    md = (written[0] / "leaderboard.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| resnet") and "(paper)" not in line]
    # ranked by the mean: 0.93 (aug, 1 seed) > 0.92 (dec, mean of 3) > 0.91
    assert [r.split(" | ")[0] for r in rows] == ["| resnet\\_aug", "| resnet\\_dec", "| resnet\\_invl"]
    dec = rows[1].split(" | ")
    assert "92.00 ± 2.00" in dec  # std with ddof 1: sqrt(((-2)² + 0 + 2²) / 2) = 2
    inve = [5.0 * (1 - a) for a in (0.90, 0.92, 0.94)]
    assert f"{statistics.fmean(inve):.2f} ± {statistics.stdev(inve):.2f}" in dec
    header = md.splitlines()[4].split(" | ")
    assert dec[header.index("n (seeds)")] == "3"
    aug = rows[0].split(" | ")
    assert "93.00" in aug and not any("±" in cell for cell in aug) and aug[header.index("n (seeds)")] == "1"
    assert rows[2].split(" | ")[header.index("n (seeds)")] == "—"
    # every seed links to its result file and run folder, relative to the page
    page = (written[0] / "index.html").read_text()
    for s in range(3):
        assert f'href="../../results/r/dec{s}.json">seed {s}</a>' in page
        assert f'href="../../runs/ds/resnet_dec-seed{s}-g1/">run</a>' in page
    assert "seed 2: [result](../../results/r/dec2.json)" in md


def test_per_scale_values_are_the_mean_over_seeds(tmp_path):
    files = {f"dec{s}.json": study_result("resnet_dec", acc, s) for s, acc in enumerate((0.90, 0.94))}
    folder = write_results(tmp_path / "results", files)
    (table,) = group_results(results.load_results(folder))
    (row,) = [r for r in lb.table_rows(table) if not r.paper]
    accs = [b[2] for b in row.scales]
    # make_result's bins: acc + 0.01 (i - 1) in %, averaged over 0.90 and 0.94
    assert accs == pytest.approx([91.0, 92.0, 93.0])
    assert row.n == 2 and row.values["primary"] == pytest.approx(92.0)


def test_one_seed_twice_in_a_group_is_refused(tmp_path):
    folder = write_results(tmp_path / "results", {"a.json": study_result("resnet_dec", 0.9, 0),
                                                  "b.json": study_result("resnet_dec", 0.8, 0)})
    with pytest.raises(lb.LeaderboardError) as e:
        lb.build(folder, tmp_path / "site")
    assert "both seed 0" in str(e.value) and "a.json" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "site").exists()


def test_study_record_is_schema_checked(tmp_path):
    bad = study_result("resnet_dec", 0.9, 0)
    bad["study"]["role"] = "other"
    with pytest.raises(results.ResultError, match="study"):
        results.validate_result(bad)
