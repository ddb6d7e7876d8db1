// Small page helpers, no dependencies, on every page.
// [data-copy=<element id>]: copy that element's text.
// [data-width=<percent>]: the element's width. Set here, not in a style attribute, because the
// Content-Security-Policy refuses style attributes (styles set through the DOM are allowed).
(function () {
  "use strict";
  document.querySelectorAll("[data-width]").forEach((el) => {
    const pct = Math.max(0, Math.min(100, parseFloat(el.dataset.width) || 0));
    el.style.width = pct + "%";
  });
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = "Copied";
      } catch (err) {
        // No clipboard (plain http): select the text so Ctrl/Cmd+C works.
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Press Ctrl+C";
      }
    });
  });
})();
