// Withdrawal at any time (docs/study.md): the participant's code (shown at the end of the study)
// deletes everything they gave: answers, questionnaire, recordings, and their exclusion history.
"use strict";

(function main() {
  const root = document.getElementById("study");
  const code = new URLSearchParams(window.location.search).get("code") || "";
  root.innerHTML = '<div class="page"><h1 tabindex="-1">Withdraw from the study</h1>' +
    "<p>Enter the participant code you were shown in the study (on its last page, or in the link to come back to it). Everything you gave is deleted: your answers, your questionnaire and any recordings.</p>" +
    '<form id="withdraw-form"><p><label for="withdraw-code">Participant code</label><br>' +
    `<input id="withdraw-code" name="code" type="text" autocomplete="off" spellcheck="false" maxlength="64" required value="${escapeHtml(code)}"></p>` +
    '<p><button type="submit" class="jspsych-btn" id="withdraw-submit">Withdraw and delete my data</button></p></form>' +
    '<p id="withdraw-status" role="status"></p></div>';
  root.querySelector("h1").focus();
  root.querySelector("#withdraw-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = root.querySelector("#withdraw-code").value.trim();
    const status = root.querySelector("#withdraw-status");
    if (!/^[A-Za-z0-9_-]{8,64}$/.test(value)) {
      status.innerHTML = '<span class="error">That does not look like a participant code: it is the code of 22 letters and digits shown at the end.</span>';
      return;
    }
    root.querySelector("#withdraw-submit").disabled = true;
    api.call("DELETE", `/api/participants/${encodeURIComponent(value)}`).then(() => {
      sessionStorage.clear();
      endPage("You have withdrawn", "<p>Everything you gave has been deleted. You can close this tab.</p>", null, null);
    }).catch((e) => {
      root.querySelector("#withdraw-submit").disabled = false;
      status.innerHTML = `<span class="error">${e.status === 404 ? "No participation has this code: it may have been withdrawn already, or mistyped." : escapeHtml(e.message)}</span>`;
    });
  });
})();
