// Graph page: hovering a node shows its description (label, top token, activation) in #node-info;
// shift-click pins a node (or unpins it) instead of following its link: the pinned nodes fill every
// node list on the page (the causal check's and the supernode form's), and nodes already named in
// the check's list are drawn pinned when the page opens.
(function () {
  "use strict";
  var info = document.getElementById("node-info");
  var fields = Array.prototype.slice.call(document.querySelectorAll("input.pin-field"));
  if (!info) { return; }
  function pinned() {
    var field = fields.filter(function (f) { return f.value.trim(); })[0];
    return field ? field.value.split(",").map(function (s) { return s.trim(); }).filter(Boolean) : [];
  }
  var start = pinned();
  document.querySelectorAll("circle.gnode").forEach(function (node) {
    if (start.indexOf(node.getAttribute("data-node")) >= 0) { node.classList.add("pinned"); }
    node.addEventListener("mouseenter", function () {
      info.textContent = node.getAttribute("data-title");
      node.classList.add("hovered");
    });
    node.addEventListener("mouseleave", function () { node.classList.remove("hovered"); });
    node.addEventListener("click", function (event) {
      if (!event.shiftKey || !fields.length) { return; }
      event.preventDefault();
      var id = node.getAttribute("data-node");
      var list = pinned();
      var at = list.indexOf(id);
      if (at >= 0) { list.splice(at, 1); } else { list.push(id); }
      fields.forEach(function (f) { f.value = list.join(", "); });
      node.classList.toggle("pinned", at < 0);
      info.textContent = (list.length ? "Selected nodes " + list.join(", ") + ". " : "No node selected. ") +
        node.getAttribute("data-title");
    });
  });
}());
