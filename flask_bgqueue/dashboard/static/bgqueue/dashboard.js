// Every state-changing form carries data-confirm: ask before it is sent. A file, not an
// inline handler, so the page works under the dashboard's Content-Security-Policy.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
