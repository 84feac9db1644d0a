"""The leaderboard: result JSON files → per-dataset markdown, a static sortable HTML page and plots.

``build(results_dir, out_dir)`` reads every ``*.json`` under ``results_dir`` (recursively), validates
each against ``result.schema.json`` and groups them into one table per (dataset name, split).  A table
ranks results of one dataset only: every result in it must carry the same ``dataset.manifest_sha256``,
otherwise the whole build is refused (one line naming both files and hashes).  Everything is checked
before anything is written, so a refused build leaves no half-written site.

Site layout::

    out/index.html                      links to every table
    out/{slug}/index.html               the table (inline CSS + JS, click a header to sort,
                                        ``index.html?sort=<key>&dir=asc|desc`` sorts on load)
    out/{slug}/leaderboard.md           the same table in markdown
    out/{slug}/plots/NN-{model}-acc.png       per-scale accuracy, one per result (if it has any)
    out/{slug}/plots/NN-{model}-pcorrect.png  P(correct class) per scale, one per result (if any)

``slug`` is ``{dataset name}-{split}`` reduced to ``[A-Za-z0-9._-]``.  The pages need no server and no
network: no external resources, images referenced relatively, a Content-Security-Policy that only lets
the page's own script run.  Every string taken from a result (model names, config values, file names,
dataset names) is escaped with :func:`html.escape` (HTML) or :func:`md_escape` (markdown).

The paper's reported numbers (``paper_results.json``: Tables 1, 2, 3, 5, 6) are added as reference
rows, marked ``paper`` (own style, a badge, and the source column ``paper Table N``), for tables whose
``dataset.generator`` is ``gso``, ``mnist`` or ``imagenet`` and whose task matches.

Units shown: accuracy, mIoU, std across scales, per-scale accuracy and P(correct) in % (results store
fractions); InvE ×10⁻² as stored (Eq. 24, like the paper); InvE(code), EquE, EquE(code) as stored.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError

SCHEMA_PATH = Path(__file__).with_name("result.schema.json")
PAPER_PATH = Path(__file__).with_name("paper_results.json")
KINDS = ("gso", "mnist", "imagenet")
ARCHS = ("resnet", "vit", "deit", "swin", "beit", "dinov2")
METHODS = ("base", "aug", "canon", "invl", "augl", "dec")
MISSING = "—"
PAPER_NOTE = (
    "Rows marked paper are the numbers the paper reports (transcribed as printed). Per DESIGN.md the paper's "
    "tables come from its code's metric forms: compare its InvE/EquE with our InvE(code)/EquE(code) as well."
)

Number = float | None
ScaleKey = tuple[float, float]


class LeaderboardError(DataError):
    """A results folder the leaderboard cannot rank: missing, empty, invalid, or mixing datasets."""


# ----------------------------------------------------------------------------------------------
# Loading and validation


@dataclass
class Result:
    """One validated result file."""

    path: Path
    rel: str  # path relative to the results folder, for display
    data: dict[str, Any]


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace (newlines included) and cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def read_json(path: Path) -> Any:
    """Parse ``path`` as strict JSON (no NaN/Infinity); any problem is one :class:`LeaderboardError` line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LeaderboardError(one_line(f"{path}: not valid JSON (not UTF-8 text); fix or remove the file")) from None
    except OSError as e:
        raise LeaderboardError(one_line(f"{path}: cannot read ({e.strerror or e})")) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        problem = f"{e.msg} at line {e.lineno} column {e.colno}"
        raise LeaderboardError(one_line(f"{path}: not valid JSON ({problem}); fix or remove the file")) from None
    except ValueError as e:
        raise LeaderboardError(one_line(f"{path}: not valid JSON ({e}); fix or remove the file")) from None


@functools.lru_cache(maxsize=1)
def result_validator() -> Any:
    """The JSON-Schema validator of ``result.schema.json`` (loaded once)."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def validate_result(data: Any, path: Path) -> None:
    """Raise one :class:`LeaderboardError` line naming ``path``, the field and the problem, if invalid."""
    import jsonschema

    error = jsonschema.exceptions.best_match(result_validator().iter_errors(data))
    if error is None:
        return
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    raise LeaderboardError(
        one_line(f"{path}: not a valid lsbench result at {where}: {one_line(error.message, 160)} "
                 "(results come from `lsbench evaluate`)")
    )


def load_results(results_dir: Path) -> list[Result]:
    """Every ``*.json`` under ``results_dir``, parsed and validated, sorted by path."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise LeaderboardError(one_line(f"results folder {results_dir} does not exist or is not a folder"))
    paths = sorted(p for p in results_dir.rglob("*.json") if p.is_file())
    if not paths:
        raise LeaderboardError(
            one_line(f"no result files (*.json) in {results_dir}: run `lsbench evaluate` first, or point at its folder")
        )
    results = []
    for path in paths:
        data = read_json(path)
        validate_result(data, path)
        results.append(Result(path, path.relative_to(results_dir).as_posix(), data))
    return results


# ----------------------------------------------------------------------------------------------
# Tables


@dataclass
class Table:
    """All results of one (dataset name, split); they share one dataset manifest hash."""

    name: str
    split: str
    results: list[Result]
    slug: str = ""

    @property
    def dataset(self) -> dict[str, Any]:
        return self.results[0].data["dataset"]

    @property
    def task(self) -> str:
        return self.dataset["task"]

    @property
    def kind(self) -> str | None:
        return dataset_kind(self.dataset["generator"])


def dataset_kind(generator: str) -> str | None:
    """``gso`` / ``mnist`` / ``imagenet`` for a generator name, else None (no paper rows)."""
    generator = generator.lower()
    return next((kind for kind in KINDS if kind in generator), None)


def check_same_dataset(name: str, split: str, results: list[Result]) -> None:
    """Refuse a table whose results were computed on different datasets (manifest hashes differ)."""
    first = results[0]
    want = first.data["dataset"]["manifest_sha256"]
    for other in results[1:]:
        got = other.data["dataset"]["manifest_sha256"]
        if got != want:
            raise LeaderboardError(one_line(
                f"refusing to rank dataset {name!r} split {split!r}: {other.path} has dataset manifest sha256 {got} "
                f"but {first.path} has {want}; evaluate every model on the same dataset (or rename one)",
                limit=1000,
            ))


def slugify(text: str, limit: int = 60) -> str:
    """A file-name-safe version of ``text`` (``[A-Za-z0-9._-]``, no leading dots); never empty."""
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.")[:limit].strip("-.")
    return slug or "x"


def group_results(results: list[Result]) -> list[Table]:
    """One :class:`Table` per (dataset name, split), sorted, each checked and given a unique slug."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        ds = result.data["dataset"]
        groups.setdefault((ds["name"], ds["split"]), []).append(result)
    tables, used = [], set()
    for (name, split), members in sorted(groups.items()):
        check_same_dataset(name, split, members)
        base = slugify(f"{name}-{split}")
        slug, n = base, 1
        while slug.lower() in used or slug.lower() == "index.html":
            n += 1
            slug = f"{base}-{n}"
        used.add(slug.lower())
        tables.append(Table(name, split, members, slug))
    return tables


# ----------------------------------------------------------------------------------------------
# Rows (ours and the paper's), in display units


@dataclass
class Row:
    """One table row; numbers already in display units (see the module docstring)."""

    model: str
    method: str
    arch: str
    source: str
    paper: bool = False
    values: dict[str, Number] = field(default_factory=dict)
    pm: dict[str, float] = field(default_factory=dict)  # paper's "±" per value key
    decimals: dict[str, int] = field(default_factory=dict)  # paper's printed decimals per value key
    scales: list[tuple[ScaleKey, str, Number, Number]] = field(default_factory=list)  # key, label, acc, p(correct)
    checkpoint: str = MISSING
    config: str = ""
    plots: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)


def _pct(value: Number) -> Number:
    return None if value is None else 100.0 * value


def _scale_key(lo: float, hi: float) -> ScaleKey:
    return (round(float(lo), 4), round(float(hi), 4))


def arch_method(model: dict[str, Any]) -> tuple[str, str]:
    """(arch, method) from the config (``arch``/``method`` or an ``{arch}_{method}`` name), else the model name."""
    config = model.get("config") or {}
    arch, method = config.get("arch"), config.get("method")
    if isinstance(arch, str) and isinstance(method, str):
        return arch, method
    for name in (config.get("name"), model.get("name")):
        if isinstance(name, str):
            a, _, m = name.partition("_")
            if a in ARCHS and m in METHODS:
                return a, m
    return MISSING, MISSING


def our_row(result: Result) -> Row:
    """The row of one result file."""
    model, metrics, eff = result.data["model"], result.data["metrics"], result.data["efficiency"]
    primary = metrics.get("miou") if result.data["dataset"]["task"] == "seg" else metrics.get("accuracy")
    arch, method = arch_method(model)
    values = {
        "primary": _pct(primary),
        "inve": metrics.get("inve"),
        # ×100: the paper prints its (code-form) InvE in 10⁻² units, and its rows share this column.
        "inve_code": None if metrics.get("inve_code") is None else 100 * metrics["inve_code"],
        "eque": metrics.get("eque"),
        "eque_code": metrics.get("eque_code"),
        "std": _pct(metrics.get("accuracy_std_across_scales")),
        "images_per_s": eff["images_per_s"],
        "ms_per_batch": eff["ms_per_batch"],
        "params_m": eff["parameters"] / 1e6,
        "deq_iterations": eff.get("deq_iterations"),
    }
    scales = [
        (_scale_key(b["lo"], b["hi"]), b["label"], _pct(b.get("accuracy")), _pct(b.get("p_correct")))
        for b in metrics["per_scale"]
    ]
    sha = model.get("checkpoint_sha256")
    return Row(
        model=model["name"], method=method, arch=arch, source=result.rel, values=values, scales=scales,
        checkpoint=sha[:12] if sha else MISSING, config=one_line(json.dumps(model["config"], sort_keys=True), 600),
    )


@functools.lru_cache(maxsize=1)
def load_paper() -> dict[str, Any]:
    """The transcribed paper tables (``paper_results.json``)."""
    return json.loads(PAPER_PATH.read_text(encoding="utf-8"))


def paper_row(entry: dict[str, Any], table: dict[str, Any]) -> Row:
    """A reference row from one entry of a paper table (values are stored as printed: %, ×10⁻²).

    The paper's tables come from its code, whose InvE/EquE are the code forms (DESIGN.md, Metrics):
    they go in the ``(code)`` columns, not beside our Eq. 23/24 numbers."""
    primary = "miou" if table["task"] == "seg" else "accuracy"
    keys = {"primary": primary, "inve_code": "inve", "eque_code": "eque", "std": "accuracy_std_across_scales"}
    values = {k: entry.get(src) for k, src in keys.items()}
    pm = {k: entry[f"{src}_pm"] for k, src in keys.items() if f"{src}_pm" in entry}
    decimals = {k: table["decimals"][src] for k, src in keys.items() if src in table["decimals"]}
    if "per_scale" in table["decimals"]:
        decimals["scale"] = table["decimals"]["per_scale"]
    scales = [(_scale_key(b["lo"], b["hi"]), b["label"], b["accuracy"], None) for b in entry.get("per_scale", [])]
    return Row(
        model=f"{entry['arch']}_{entry['method']}", method=entry["method"], arch=entry["arch"],
        source=table["source"], paper=True, values=values, pm=pm, decimals=decimals, scales=scales,
        config=f"{table['caption']} ({entry['paper_arch']}, {entry['paper_method']})",
    )


# The paper's classification tasks have 1,000 classes (3-digit MNIST-LS, ImageNet): its numbers are
# no reference for e.g. a 1-digit, 10-class MNIST-LS.
PAPER_NUM_CLASSES = {"mnist": 1000, "imagenet": 1000}


def paper_tables(table: Table) -> list[dict[str, Any]]:
    """The paper tables shown beside a table: same dataset kind and task, and the paper's class count."""
    if table.kind is None:
        return []
    expected = PAPER_NUM_CLASSES.get(table.kind)
    if expected is not None and table.dataset["num_classes"] != expected:
        return []
    return [t for t in load_paper().get(table.kind, []) if t["task"] == table.task]


def _by_primary(rows: Iterable[Row]) -> list[Row]:
    """Highest primary metric first; rows without one last (ties: by model name)."""
    def key(row: Row) -> tuple[bool, float, str]:
        value = row.values.get("primary")
        missing = value is None or not math.isfinite(value)
        return (missing, 0.0 if missing else -value, row.model)

    return sorted(rows, key=key)


def table_rows(table: Table) -> list[Row]:
    """Our rows (best first), then the paper's reference rows (per paper table, best first)."""
    rows = _by_primary(our_row(r) for r in table.results)
    for ptable in paper_tables(table):
        rows += _by_primary(paper_row(entry, ptable) for entry in ptable["rows"])
    return rows


# ----------------------------------------------------------------------------------------------
# Columns


@dataclass
class Column:
    """A table column: sort key (``?sort=``), header, type, and how a row's cell is read."""

    key: str
    title: str
    numeric: bool
    better: str  # "high", "low" or "" (text)
    value: Callable[[Row], Any]
    decimals: int | None = None  # fixed decimals for our numbers; None: 4 significant digits
    paper_key: str = ""  # key into Row.decimals / Row.pm

    @property
    def first_direction(self) -> str:
        return "desc" if self.better == "high" else "asc"


def scale_columns(rows: list[Row]) -> list[tuple[ScaleKey, str]]:
    """One per-scale column per distinct bin (by (lo, hi)); paper bins join ours by (lo, hi) or label."""
    bins: dict[ScaleKey, str] = {}
    for row in sorted(rows, key=lambda r: r.paper):
        labels = {label: key for key, label in bins.items()}
        for key, label, _, _ in row.scales:
            if key not in bins and not (row.paper and label in labels):
                bins[key] = label
    return sorted(bins.items())


def _scale_getter(key: ScaleKey, label: str) -> Callable[[Row], Number]:
    def get(row: Row) -> Number:
        for k, _, acc, _ in row.scales:
            if k == key:
                return acc
        if row.paper:
            return next((acc for _, lab, acc, _ in row.scales if lab == label), None)
        return None

    return get


def _metric(key: str) -> Callable[[Row], Number]:
    return lambda row: row.values.get(key)


def _has_values(rows: list[Row], key: str) -> bool:
    return any(row.values.get(key) is not None for row in rows)


def columns(table: Table, rows: list[Row]) -> list[Column]:
    """The table's columns, in order; InvE/EquE and their code forms only when some row has them."""
    primary = "mIoU (%)" if table.task == "seg" else "Acc (%)"
    cols = [
        Column("model", "Model", False, "", lambda r: r.model),
        Column("method", "Method", False, "", lambda r: r.method),
        Column("arch", "Arch", False, "", lambda r: r.arch),
        Column("source", "Source", False, "", lambda r: r.source),
        Column("miou" if table.task == "seg" else "acc", primary, True, "high", _metric("primary"), 2, "primary"),
    ]
    optional = [
        ("inve", "InvE (×10⁻²)", 2), ("inve_code", "InvE(code) (×10⁻²)", 2),
        ("eque", "EquE", None), ("eque_code", "EquE(code)", None),
    ]
    cols += [Column(k, t, True, "low", _metric(k), d, k) for k, t, d in optional if _has_values(rows, k)]
    cols.append(Column("std", "Std across scales (%)", True, "low", _metric("std"), 2, "std"))
    for i, (key, label) in enumerate(scale_columns(rows), 1):
        cols.append(Column(f"scale-{i}", f"Acc {label} (%)", True, "high", _scale_getter(key, label), 2, "scale"))
    cols += [
        Column("images_per_s", "Images/s", True, "high", _metric("images_per_s"), 1),
        Column("ms_per_batch", "ms/batch", True, "low", _metric("ms_per_batch"), 1),
        Column("params_m", "Params (M)", True, "low", _metric("params_m"), 2),
        Column("deq_iterations", "DEQ iters", True, "low", _metric("deq_iterations"), 1),
        Column("checkpoint", "Checkpoint", False, "", lambda r: r.checkpoint),
    ]
    return cols


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def format_cell(row: Row, col: Column) -> tuple[str, str]:
    """(display text, sort value) of one cell; numbers of paper rows use the paper's decimals and ±."""
    value = col.value(row)
    if not col.numeric:
        return str(value), str(value)
    if not _finite(value):
        return MISSING, ""
    decimals = row.decimals.get(col.paper_key, col.decimals) if row.paper else col.decimals
    text = f"{value:.4g}" if decimals is None else f"{value:.{decimals}f}"
    if row.paper and col.paper_key in row.pm:
        text += f" ± {row.pm[col.paper_key]:.{decimals if decimals is not None else 2}f}"
    return text, repr(float(value))


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg, no pyplot state)


def _mpl_text(text: str) -> str:
    """Text safe for matplotlib: ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def _bar_plot(path: Path, labels: list[str], values: list[Number], title: str, ylabel: str,
              reference: list[tuple[str, list[Number]]]) -> None:
    """One bar chart over scale labels, optional reference lines (paper), saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(len(labels)))
    ax.bar(xs, [v if _finite(v) else 0.0 for v in values], color="#4c72b0", label="ours")
    for name, ref in reference:
        points = [(x, v) for x, v in zip(xs, ref) if _finite(v)]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o--", color="#c44e52", label=_mpl_text(name))
    ax.set_xticks(xs, [_mpl_text(label) for label in labels], rotation=30 if len(labels) > 5 else 0, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("local scale")
    ax.set_title(_mpl_text(one_line(title, 70)), fontsize=9)
    if reference:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _paper_reference(row: Row, rows: list[Row]) -> list[tuple[str, list[Number]]]:
    """Per-scale accuracy of paper rows with the same arch and method, aligned to ``row``'s bins."""
    refs = []
    for other in rows:
        if not other.paper or (other.arch, other.method) != (row.arch, row.method) or not other.scales:
            continue
        by_key = {k: acc for k, _, acc, _ in other.scales}
        by_label = {lab: acc for _, lab, acc, _ in other.scales}
        aligned = [by_key.get(k, by_label.get(lab)) for k, lab, _, _ in row.scales]
        if any(v is not None for v in aligned):
            refs.append((other.source, aligned))
    return refs


def plot_row(row: Row, rank: int, rows: list[Row], plot_dir: Path) -> list[tuple[str, str]]:
    """Write the per-scale accuracy and P(correct) plots of one of our rows; (relative path, caption) each."""
    labels = [label for _, label, _, _ in row.scales]
    stem = f"{rank:02d}-{slugify(row.model, 40)}"
    written = []
    kinds = [("acc", 2, "accuracy (%)", "Per-scale accuracy", _paper_reference(row, rows)),
             ("pcorrect", 3, "P(correct class) (%)", "P(correct) per scale", [])]
    for suffix, index, ylabel, what, reference in kinds:
        values = [scale[index] for scale in row.scales]
        if not any(_finite(v) for v in values):
            continue
        path = plot_dir / f"{stem}-{suffix}.png"
        _bar_plot(path, labels, values, f"{row.model}: {what}", ylabel, reference)
        written.append((f"plots/{path.name}", f"{what} of {row.model} (#{rank}, {row.source})"))
    return written


# ----------------------------------------------------------------------------------------------
# HTML


def esc(value: Any) -> str:
    """HTML-escape any value (quotes included, safe inside attributes)."""
    return html.escape(str(value), quote=True)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem}th,td{border:1px solid #ccc;padding:.25rem .45rem}
th{background:#eef;cursor:pointer;user-select:none;white-space:nowrap;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.model{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.paper{background:#fff8e1;font-style:italic;color:#5d4037}
.badge{display:inline-block;background:#ff8f00;color:#fff;border-radius:3px;padding:0 .3rem;font-size:.7rem;
font-style:normal;margin-left:.3rem}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.1rem 1rem;font-size:.85rem}
dl.meta dt{font-weight:600}.notes{font-size:.8rem;color:#555;max-width:60rem}
figure{display:inline-block;margin:.5rem}figcaption{font-size:.75rem;max-width:34rem}
code{word-break:break-all}
"""

SORT_JS = """
(function () {
  var table = document.getElementById("board");
  var body = table.tBodies[0];
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function cellValue(row, i, numeric) {
    var cell = row.cells[i];
    if (!numeric) { return cell.textContent; }
    var v = cell.getAttribute("data-value");
    return v === null || v === "" ? null : parseFloat(v);
  }
  function sortBy(i, dir) {
    var numeric = heads[i].getAttribute("data-type") === "num";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, i, numeric), y = cellValue(b, i, numeric);
      if (x === null || y === null) { return (x === null) - (y === null); }
      var c = numeric ? x - y : x.localeCompare(y);
      return dir === "asc" ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
    heads[i].setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
  }
  heads.forEach(function (h, i) {
    h.addEventListener("click", function () {
      var now = h.getAttribute("aria-sort");
      sortBy(i, now ? (now === "ascending" ? "desc" : "asc") : h.getAttribute("data-first"));
    });
  });
  var query = new URLSearchParams(window.location.search);
  var key = query.get("sort"), dir = query.get("dir");
  var index = heads.map(function (h) { return h.getAttribute("data-key"); }).indexOf(key);
  if (key && index >= 0) {
    sortBy(index, dir === "asc" || dir === "desc" ? dir : heads[index].getAttribute("data-first"));
  }
})();
"""


def _csp(script: str) -> str:
    """Content-Security-Policy: only this page's own script runs; nothing is fetched from elsewhere."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (f"default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def page(title: str, body: str, script: str = "") -> str:
    """A complete self-contained HTML document."""
    script_tag = f"<script>{script}</script>\n" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{esc(_csp(script))}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n{script_tag}</body>\n</html>\n"
    )


def _meta_html(table: Table) -> str:
    ds = table.dataset
    items = [("Dataset", ds["name"]), ("Split", ds["split"]), ("Generator", ds["generator"]), ("Task", ds["task"]),
             ("Classes", ds["num_classes"]), ("Samples", ds["num_samples"]),
             ("Manifest sha256", ds["manifest_sha256"]), ("Results", len(table.results))]
    cells = "".join(f"<dt>{esc(k)}</dt><dd><code>{esc(v)}</code></dd>" for k, v in items)
    return f"<dl class=\"meta\">{cells}</dl>"


def _row_html(row: Row, cols: list[Column]) -> str:
    cells = []
    for col in cols:
        text, sort_value = format_cell(row, col)
        if col.numeric:
            cells.append(f"<td class=\"num\" data-value=\"{esc(sort_value)}\">{esc(text)}</td>")
        elif col.key == "model":
            badge = "<span class=\"badge\">paper</span>" if row.paper else ""
            cells.append(f"<td class=\"model\" title=\"{esc(row.config)}\">{esc(text)}{badge}</td>")
        else:
            cells.append(f"<td>{esc(text)}</td>")
    kind = "paper" if row.paper else "ours"
    return f"<tr class=\"{kind}\" data-source=\"{esc(row.source)}\">{''.join(cells)}</tr>"


def _head_html(cols: list[Column]) -> str:
    cells = "".join(
        f"<th data-key=\"{esc(c.key)}\" data-type=\"{'num' if c.numeric else 'text'}\" "
        f"data-first=\"{c.first_direction}\" title=\"click to sort\">{esc(c.title)}</th>"
        for c in cols
    )
    return f"<thead><tr>{cells}</tr></thead>"


def _plots_html(rows: list[Row]) -> str:
    figures = [
        f"<figure><img src=\"{esc(src)}\" alt=\"{esc(caption)}\" width=\"560\" height=\"320\">"
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for row in rows for src, caption in row.plots
    ]
    return "\n".join(figures) if figures else "<p class=\"notes\">No result has per-scale numbers.</p>"


def _paper_notes_html(table: Table) -> str:
    ptables = paper_tables(table)
    if not ptables:
        return "<p class=\"notes\">The paper reports no numbers for this kind of dataset.</p>"
    items = []
    for pt in ptables:
        notes = "".join(f"<li>{esc(n)}</li>" for n in pt["notes"])
        items.append(f"<li><b>{esc(pt['source'])}</b>: {esc(pt['caption'])}<ul>{notes}</ul></li>")
    return f"<p class=\"notes\">{esc(PAPER_NOTE)}</p><ul class=\"notes\">{''.join(items)}</ul>"


def table_html(table: Table, rows: list[Row], cols: list[Column]) -> str:
    """The dataset page."""
    title = f"lsbench leaderboard: {table.name} / {table.split}"
    body_rows = "\n".join(_row_html(row, cols) for row in rows)
    body = (
        f"<p><a href=\"../index.html\">All datasets</a></p>\n<h1>{esc(title)}</h1>\n{_meta_html(table)}\n"
        "<p class=\"notes\">Click a column header to sort (or open "
        "<code>index.html?sort=KEY&amp;dir=asc|desc</code>). "
        "Acc, mIoU, std and per-scale numbers in %; InvE ×10⁻²; rows marked paper are the paper's reported "
        "numbers (see Paper reference below).</p>\n"
        f"<table id=\"board\">{_head_html(cols)}\n<tbody>\n{body_rows}\n</tbody></table>\n"
        f"<h2>Per-scale plots</h2>\n{_plots_html(rows)}\n<h2>Paper reference</h2>\n{_paper_notes_html(table)}"
    )
    return page(title, body, SORT_JS)


def index_html(tables: list[Table], best: dict[str, Row | None]) -> str:
    """The site's front page: one line per table."""
    lines = []
    for t in tables:
        top = best.get(t.slug)
        leader = f"{top.model} ({top.values['primary']:.2f} %)" if top else MISSING
        lines.append(
            f"<tr><td><a href=\"{esc(t.slug)}/index.html\">{esc(t.name)}</a></td><td>{esc(t.split)}</td>"
            f"<td>{esc(t.dataset['generator'])}</td><td>{esc(t.task)}</td><td class=\"num\">{len(t.results)}</td>"
            f"<td>{esc(leader)}</td><td><a href=\"{esc(t.slug)}/leaderboard.md\">markdown</a></td></tr>"
        )
    body = (
        "<h1>lsbench leaderboard</h1>\n<table><thead><tr><th>Dataset</th><th>Split</th><th>Generator</th><th>Task</th>"
        "<th>Results</th><th>Best of ours</th><th>Markdown</th></tr></thead>\n<tbody>\n"
        + "\n".join(lines) + "\n</tbody></table>"
    )
    return page("lsbench leaderboard", body)


# ----------------------------------------------------------------------------------------------
# Markdown


def md_escape(value: Any) -> str:
    """A markdown table cell: one line, HTML-escaped, markdown punctuation (``|`` included) backslash-escaped."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\|`*_\[\]])", r"\\\1", text)


def table_markdown(table: Table, rows: list[Row], cols: list[Column]) -> str:
    """The dataset's leaderboard as markdown."""
    ds = table.dataset
    lines = [
        f"# lsbench leaderboard: {md_escape(table.name)} / {md_escape(table.split)}",
        "",
        f"Generator {md_escape(ds['generator'])}, task {md_escape(ds['task'])}, {ds['num_classes']} classes, "
        f"{ds['num_samples']} samples, manifest sha256 {md_escape(ds['manifest_sha256'])}, "
        f"{len(table.results)} results.",
        "",
        "| " + " | ".join(md_escape(c.title) for c in cols) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|",
    ]
    for row in rows:
        cells = [format_cell(row, c)[0] for c in cols]
        if row.paper:
            cells[0] += " (paper)"
        lines.append("| " + " | ".join(md_escape(c) for c in cells) + " |")
    lines += ["", md_escape(PAPER_NOTE)]
    for pt in paper_tables(table):
        notes = " ".join(md_escape(note) for note in pt["notes"])
        lines.append(f"- {md_escape(pt['source'])}: {md_escape(pt['caption'])} {notes}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Build


def _clear_plots(plot_dir: Path) -> None:
    """Remove PNGs of an earlier build (plot names depend on rank and model)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    for old in plot_dir.glob("*.png"):
        old.unlink()


def write_table(table: Table, out_dir: Path) -> tuple[Path, Row | None]:
    """Write one dataset folder; returns it and our best row."""
    folder = out_dir / table.slug
    _clear_plots(folder / "plots")
    rows = table_rows(table)
    ours = [row for row in rows if not row.paper]
    for rank, row in enumerate(ours, 1):
        row.plots = plot_row(row, rank, rows, folder / "plots")
    cols = columns(table, rows)
    (folder / "index.html").write_text(table_html(table, rows, cols), encoding="utf-8")
    (folder / "leaderboard.md").write_text(table_markdown(table, rows, cols), encoding="utf-8")
    best = ours[0] if ours and ours[0].values.get("primary") is not None else None
    return folder, best


def build(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Build the site from ``results_dir`` into ``out_dir``; returns the dataset folders written.

    Raises :class:`LeaderboardError` (one line) for a missing/empty results folder, a file that is not
    JSON or not a valid result, results of one table computed on different datasets, or an unwritable
    ``out_dir``.  Nothing is written unless every input is valid.
    """
    tables = group_results(load_results(Path(results_dir)))
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written, best = [], {}
        for table in tables:
            folder, best[table.slug] = write_table(table, out_dir)
            written.append(folder)
        (out_dir / "index.html").write_text(index_html(tables, best), encoding="utf-8")
    except OSError as e:
        problem = f"{e.strerror or e} ({e.filename})"
        raise LeaderboardError(one_line(f"cannot write the site to {out_dir}: {problem}")) from None
    return written
