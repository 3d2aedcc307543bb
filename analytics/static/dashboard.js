// llmgw dashboard: show times in the viewer's zone and refresh the page while it is visible.
// Everything on the page is rendered by the gateway; this script only adds convenience.
(function () {
  "use strict";
  function localTimes() {
    document.querySelectorAll("time[data-ms]").forEach(function (el) {
      var ms = Number(el.getAttribute("data-ms"));
      if (!ms) { return; }
      var when = new Date(ms);
      el.title = el.textContent;                       // keep the UTC text as a tooltip
      var show = el.getAttribute("data-show");
      el.textContent = show === "time" ? when.toLocaleTimeString([], { timeStyle: "short" })
        : show === "seconds" ? when.toLocaleTimeString([], { timeStyle: "medium" })
        : when.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
    });
  }
  function scheduleRefresh() {
    var main = document.querySelector("main[data-refresh-s]");
    if (!main) { return; }
    var seconds = Number(main.getAttribute("data-refresh-s")) || 60;
    setInterval(function () {
      if (document.visibilityState === "visible") { window.location.reload(); }
    }, seconds * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes();
    scheduleRefresh();
  });
}());
