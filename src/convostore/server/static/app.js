// convostore's conversation browser: small enhancements over pages that work without it.
// Stored text is only ever read and written as text (textContent), never as HTML.
(function () {
  "use strict";

  document.documentElement.classList.add("js");

  // Times: shown in the reader's time zone (the server writes UTC).
  var short = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  var full = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var when = new Date(el.getAttribute("datetime"));
    if (!isNaN(when.getTime())) {
      el.textContent = short.format(when);
      el.title = full.format(when);
    }
  });

  // Filters by day: the day starts in the reader's time zone.
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  document.querySelectorAll('input[type="hidden"][name="tz"]').forEach(function (el) {
    el.value = zone;
  });

  // Long content: folded, with a button to unfold it.
  document.querySelectorAll(".long").forEach(function (el) {
    el.classList.add("is-folded");
    var button = document.createElement("button");
    button.type = "button";
    button.className = "fold-toggle";
    button.textContent = "Show all";
    button.setAttribute("aria-expanded", "false");
    button.addEventListener("click", function () {
      var folded = el.classList.toggle("is-folded");
      button.textContent = folded ? "Show all" : "Show less";
      button.setAttribute("aria-expanded", folded ? "false" : "true");
    });
    el.insertAdjacentElement("afterend", button);
  });

  // A message linked to (#m-12) inside folded content or a closed <details>: open it.
  function reveal() {
    var id = decodeURIComponent(location.hash.slice(1));
    var target = id && document.getElementById(id);
    if (!target) return;
    for (var node = target; node; node = node.parentElement) {
      if (node.tagName === "DETAILS") node.open = true;
    }
    target.scrollIntoView({ block: "center" });
  }
  window.addEventListener("hashchange", reveal);
  reveal();

  // The branch selector shows its branch as soon as one is picked.
  document.querySelectorAll("select[data-autosubmit]").forEach(function (el) {
    el.addEventListener("change", function () {
      el.form.submit();
    });
  });
})();
