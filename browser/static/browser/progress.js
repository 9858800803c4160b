// Live job progress on the home page: poll the jobs API (newest first) every 2 s while a job is unfinished.
(function () {
  "use strict";
  var table = document.getElementById("jobs");
  if (!table) return;
  var finished = { succeeded: 1, failed: 1, cancelled: 1 };
  function update(job) {
    var row = table.querySelector('tr[data-job="' + job.id + '"]');
    if (!row) return false;
    var bar = row.querySelector(".bar");
    var pct = Math.round(job.percent);
    bar.setAttribute("aria-valuenow", pct);
    bar.firstElementChild.style.width = pct + "%";
    var status = row.querySelector(".status");
    status.textContent = job.status_display;
    status.className = "status status-" + job.status;
    row.querySelector(".message").textContent = job.message;
    return !finished[job.status];
  }
  function poll() {
    fetch(table.dataset.poll, { headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        var running = data.results.map(update).some(Boolean);
        if (running) setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 10000); });
  }
  setTimeout(poll, 2000);
})();
