// Live updates: the server sends the journal's head (server-sent events); when it moves, the
// page's main part is fetched again and swapped in. No build step, no dependencies.
(function () {
  "use strict";
  var body = document.body;
  var live = document.getElementById("live");
  if (!window.EventSource) { return; }
  var head = body.getAttribute("data-head");
  var source = new EventSource("/events?after=" + encodeURIComponent(head || "-1"));
  var busy = false;
  source.addEventListener("open", function () { live.className = "live on"; });
  source.addEventListener("error", function () { live.className = "live off"; });
  source.addEventListener("head", function (event) {
    if (event.data === body.getAttribute("data-head") || busy) { return; }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.delete("note");
    fetch(url.toString(), { credentials: "same-origin" }).then(function (r) { return r.text(); }).then(function (html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      var fresh = doc.getElementById("main");
      if (fresh) {
        document.getElementById("main").innerHTML = fresh.innerHTML;
        body.setAttribute("data-head", doc.body.getAttribute("data-head"));
      }
    }).finally(function () { busy = false; });
  });
})();
