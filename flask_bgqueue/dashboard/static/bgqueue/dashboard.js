// Every state-changing form carries data-confirm: ask before it is sent. A file, not an
// inline handler, so the page works under the dashboard's Content-Security-Policy.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// Live pages: every element with data-live (and an id) is refreshed from the page's own
// URL every data-refresh-ms milliseconds, only while the tab is visible: no reload, no
// external asset, and nothing typed into the filter form is lost (it is not live).
(function () {
  var refreshMs = Number(document.body.getAttribute("data-refresh-ms"));
  if (!refreshMs || !document.querySelector("[data-live]") || !window.fetch) {
    return;
  }
  var status = document.getElementById("bgq-live");
  var timer = null;
  var busy = false;

  function say(text, failed) {
    if (status) {
      status.hidden = false;
      status.textContent = text;
      status.className = failed ? "bgq-live failed" : "bgq-live";
    }
  }

  function clock() {
    return new Date().toISOString().slice(11, 19) + " UTC";
  }

  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(window.location.href, {
      headers: { "X-BgQueue-Live": "1" },
      credentials: "same-origin",
      cache: "no-store",
    })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (element) {
          var next = fresh.getElementById(element.id);
          if (next && next.innerHTML !== element.innerHTML) {
            element.innerHTML = next.innerHTML;
          }
        });
        // a refresh that was on its way when the tab went to the background
        say(
          document.hidden ? "paused while the tab is hidden" : "live, updated " + clock(),
          false
        );
      })
      .catch(function (error) {
        say("not updated since " + clock() + ": " + error.message, true);
      })
      .then(function () {
        busy = false;
      });
  }

  function schedule() {
    if (timer !== null) {
      window.clearInterval(timer);
      timer = null;
    }
    if (document.hidden) {
      say("paused while the tab is hidden", false);
    } else {
      timer = window.setInterval(refresh, refreshMs);
    }
  }

  document.addEventListener("visibilitychange", function () {
    schedule();
    refresh();
  });
  say("live", false);
  schedule();
})();
