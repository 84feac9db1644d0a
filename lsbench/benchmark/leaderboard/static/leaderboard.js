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
