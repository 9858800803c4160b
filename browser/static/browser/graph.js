// Graph page: hovering a node shows its description (label, top token, activation) in #node-info;
// shift-click pins a node (or unpins it) into the supernode form's node list instead of following its link.
(function () {
  "use strict";
  var info = document.getElementById("node-info");
  var field = document.getElementById("supernode-nodes");
  if (!info) { return; }
  function pinned() {
    return field && field.value.trim() ? field.value.split(",").map(function (s) { return s.trim(); }) : [];
  }
  document.querySelectorAll("circle.gnode").forEach(function (node) {
    node.addEventListener("mouseenter", function () {
      info.textContent = node.getAttribute("data-title");
      node.classList.add("hovered");
    });
    node.addEventListener("mouseleave", function () { node.classList.remove("hovered"); });
    node.addEventListener("click", function (event) {
      if (!event.shiftKey || !field) { return; }
      event.preventDefault();
      var id = node.getAttribute("data-node");
      var list = pinned();
      var at = list.indexOf(id);
      if (at >= 0) { list.splice(at, 1); } else { list.push(id); }
      field.value = list.join(", ");
      node.classList.toggle("pinned", at < 0);
    });
  });
}());
