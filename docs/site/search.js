// The course site's search, offline: window.COURSE_SEARCH (from _static/search_index.js, written by build.py) is
// [[page, anchor, page title, heading, text], ...], one row per section. A section matches when it holds every
// word of the query; matches in the heading count more. Results are written as text (never as HTML).
(function () {
  "use strict";
  var index = window.COURSE_SEARCH || [];
  var query = new URLSearchParams(window.location.search).get("q") || "";
  var box = document.getElementById("course-q");
  var list = document.getElementById("course-results");
  var count = document.getElementById("course-count");
  box.value = query;
  var words = query.toLowerCase().split(/\s+/).filter(function (w) { return w.length > 0; });
  if (words.length === 0) { count.textContent = index.length + " sections indexed: type a word above."; return; }

  function occurrences(text, word) {
    var n = 0, at = text.indexOf(word);
    while (at !== -1) { n += 1; at = text.indexOf(word, at + word.length); }
    return n;
  }

  var hits = [];
  index.forEach(function (row) {
    var heading = (row[2] + " " + row[3]).toLowerCase(), text = row[4].toLowerCase(), score = 0;
    for (var i = 0; i < words.length; i++) {
      var inHeading = occurrences(heading, words[i]), inText = occurrences(text, words[i]);
      if (inHeading + inText === 0) { return; }
      score += 10 * inHeading + inText;
    }
    hits.push({ row: row, score: score, at: text.indexOf(words[0]) });
  });
  hits.sort(function (a, b) { return b.score - a.score; });
  count.textContent = hits.length + " section(s) match \u201c" + query + "\u201d.";
  hits.slice(0, 50).forEach(function (hit) {
    var row = hit.row, item = document.createElement("div"), link = document.createElement("a");
    item.className = "course-hit";
    link.href = row[0] + (row[1] ? "#" + row[1] : "");
    link.textContent = row[3] === row[2] ? row[2] : row[2] + " \u203a " + row[3];
    var snippet = document.createElement("p"), start = Math.max(0, hit.at - 80);
    snippet.textContent = (start > 0 ? "\u2026" : "") + row[4].slice(start, start + 240) + "\u2026";
    item.appendChild(link);
    item.appendChild(snippet);
    list.appendChild(item);
  });
})();
