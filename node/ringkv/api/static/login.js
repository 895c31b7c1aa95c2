// The sign-in page: a link of the form /ui/login#token=<admin token> signs in at once (the fragment never
// leaves the browser); it is wiped from the address bar before the form is sent.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  const input = document.getElementById("token");
  if (match) {
    history.replaceState(null, "", window.location.pathname);
    input.value = decodeURIComponent(match[1]);
    document.getElementById("login-form").submit();
  } else {
    input.focus();
  }
});
