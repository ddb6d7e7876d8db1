// Discover: "Only what fits here" hides the results whose verdict is red, and families left empty.
(function () {
  "use strict";
  const toggle = document.querySelector("[data-discover-fits]");
  if (!toggle) return;
  function apply() {
    document.querySelectorAll("[data-testid=discover-group]").forEach(function (group) {
      let shown = 0;
      group.querySelectorAll("[data-testid=discover-result]").forEach(function (row) {
        const hide = toggle.checked && row.dataset.verdict === "red";
        row.hidden = hide;
        if (!hide) shown += 1;
      });
      group.hidden = shown === 0;
    });
  }
  toggle.addEventListener("change", apply);
  apply();
})();
