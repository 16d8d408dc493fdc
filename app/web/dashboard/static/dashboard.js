// The dashboard's one script: the live board (server-sent events), ages that keep counting,
// and "select all" on the review queue. Pages work without it, only not live.
"use strict";

function ageText(since) {
  let s = Math.max(0, Math.floor((Date.now() - Date.parse(since)) / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d " + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
}

function tickAges() {
  for (const el of document.querySelectorAll(".age[data-since]")) {
    if (el.dataset.since) el.textContent = ageText(el.dataset.since);
  }
}

function followBoard() {
  const board = document.getElementById("board");
  if (!board || !window.EventSource) return;
  const state = document.getElementById("live-state");
  const events = new EventSource(board.dataset.live);
  events.addEventListener("open", () => state && state.classList.add("on"));
  events.addEventListener("error", () => state && state.classList.remove("on"));
  // The fragment is rendered by the server with every value escaped.
  events.addEventListener("board", (e) => { board.innerHTML = e.data; tickAges(); });
}

function selectAll() {
  for (const box of document.querySelectorAll("input.select-all")) {
    box.addEventListener("change", () => {
      for (const one of document.querySelectorAll('input[name="task_id"][data-gate="' + box.dataset.gate + '"]')) {
        one.checked = box.checked;
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  followBoard();
  selectAll();
  setInterval(tickAges, 1000);
});
