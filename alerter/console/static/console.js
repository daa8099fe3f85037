// alerter console: small progressive enhancements; every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Live filters: a changed select submits its filter form at once.
  for (const form of document.querySelectorAll("form[data-live]")) {
    for (const select of form.querySelectorAll("select")) {
      select.addEventListener("change", () => form.requestSubmit());
    }
  }
  // "Select all" ticks every row checkbox of its table.
  for (const all of document.querySelectorAll("input[data-select-all]")) {
    all.addEventListener("change", () => {
      const table = all.closest("table");
      for (const box of table.querySelectorAll("tbody input[type=checkbox]")) box.checked = all.checked;
    });
  }
});
