// Keyboard navigation: n / p next and previous unit, l the label field, / the search box,
// Ctrl+Enter (or Cmd+Enter) in the label field saves it (in the queue: saves and opens the next).
(function () {
  "use strict";
  document.addEventListener("keydown", function (ev) {
    var el = document.activeElement;
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && el && el.form && el.form.classList.contains("label-form")) {
      ev.preventDefault();
      el.form.requestSubmit();
    }
  });
  function typing(el) {
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(document.activeElement)) return;
    var target = null;
    if (ev.key === "n" || ev.key === "p") {
      var link = document.querySelector('a[data-key="' + ev.key + '"]') ||
                 document.querySelector(ev.key === "n" ? 'a[rel="next"]' : 'a[rel="prev"]');
      if (link) { ev.preventDefault(); window.location.href = link.href; }
      return;
    }
    if (ev.key === "l") target = document.getElementById("label-text");
    if (ev.key === "/") target = document.querySelector("[data-search]") || document.getElementById("top-q");
    if (target) { ev.preventDefault(); target.focus(); }
  });
})();
