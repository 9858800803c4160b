// Graph page: hovering a node shows its description (label, top token, activation) in #node-info.
(function () {
  "use strict";
  var info = document.getElementById("node-info");
  if (!info) { return; }
  document.querySelectorAll("circle.gnode").forEach(function (node) {
    node.addEventListener("mouseenter", function () {
      info.textContent = node.getAttribute("data-title");
      node.classList.add("hovered");
    });
    node.addEventListener("mouseleave", function () { node.classList.remove("hovered"); });
  });
}());
