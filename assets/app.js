// Rackwatch dashboard: the only script of the pages (served as /assets/app.js, so the
// Content-Security-Policy can forbid inline scripts). Pages work without it.
// Show UTC timestamps in the viewer's time zone; refresh while the tab is visible.
document.querySelectorAll('time[datetime]').forEach(function (el) {
  var d = new Date(el.getAttribute('datetime'));
  if (!isNaN(d)) { el.title = el.getAttribute('datetime'); el.textContent = d.toLocaleString(); }
});
document.querySelectorAll('tspan[data-utc]').forEach(function (el) {
  var d = new Date(el.getAttribute('data-utc'));
  if (isNaN(d)) return;
  var f = el.getAttribute('data-fmt');
  el.textContent = f === 'date' ? d.toLocaleDateString([], {month: 'short', day: 'numeric'})
    : f === 'datetime' ? d.toLocaleString([], {month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit'})
    : d.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
});
// Custom-range inputs hold UTC; show them in the viewer's zone and send the offset.
function pad(n) { return (n < 10 ? '0' : '') + n; }
document.querySelectorAll('input[data-utc]').forEach(function (el) {
  var d = new Date(el.getAttribute('data-utc') + ':00Z');
  if (!isNaN(d)) { el.value = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + 'T' + pad(d.getHours()) + ':' + pad(d.getMinutes()); }
});
document.querySelectorAll('input[name=tzo]').forEach(function (el) { el.value = String(new Date().getTimezoneOffset()); });
(function () {
  var r = document.body.getAttribute('data-refresh');
  if (!r) return;
  // Reload only while the tab is visible; a hidden tab catches up when shown again.
  var due = false;
  setInterval(function () { if (document.visibilityState === 'visible') location.reload(); else due = true; }, Number(r) * 1000);
  document.addEventListener('visibilitychange', function () { if (due && document.visibilityState === 'visible') location.reload(); });
})();
