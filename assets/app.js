// Rackwatch dashboard: the only script of the pages (served as /assets/app.js, so the
// Content-Security-Policy can forbid inline scripts). Pages work without it.
// Show UTC timestamps in the viewer's time zone, named (pages say UTC without the
// script); refresh while the tab is visible.
// One format on every page, as the server writes dates: 2026-12-07 09:15:02 GMT+9.
var stampParts = new Intl.DateTimeFormat('en-US', {year: 'numeric', month: '2-digit', day: '2-digit',
  hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23', timeZoneName: 'short'});
function stamp(d) {
  var p = {};
  stampParts.formatToParts(d).forEach(function (x) { p[x.type] = x.value; });
  return p.year + '-' + p.month + '-' + p.day + ' ' + p.hour + ':' + p.minute + ':' + p.second + ' ' + p.timeZoneName;
}
document.querySelectorAll('time[datetime]').forEach(function (el) {
  var d = new Date(el.getAttribute('datetime'));
  if (!isNaN(d)) { el.title = el.getAttribute('datetime'); el.textContent = stamp(d); }
});
document.querySelectorAll('[data-utc][data-fmt]').forEach(function (el) {
  var d = new Date(el.getAttribute('data-utc'));
  if (isNaN(d)) return;
  var f = el.getAttribute('data-fmt');
  el.textContent = f === 'date' ? d.toLocaleDateString([], {month: 'short', day: 'numeric'})
    : f === 'datetime' ? d.toLocaleString([], {month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit'})
    : d.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
});
// Tables wider than their place scroll sideways; say so above them.
function markOverflow() {
  document.querySelectorAll('.scroll').forEach(function (el) {
    el.classList.toggle('overflowing', el.scrollWidth > el.clientWidth + 1);
  });
}
markOverflow();
window.addEventListener('resize', markOverflow);
// Custom-range inputs hold UTC; show them in the viewer's zone and send the offset.
function pad(n) { return (n < 10 ? '0' : '') + n; }
document.querySelectorAll('input[data-utc]').forEach(function (el) {
  var d = new Date(el.getAttribute('data-utc') + ':00Z');
  if (!isNaN(d)) { el.value = el.defaultValue = d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + 'T' + pad(d.getHours()) + ':' + pad(d.getMinutes()); }
});
// The offset is the one at the time entered (a window across a daylight-saving change
// keeps its clock time), or now's when none is.
document.querySelectorAll('input[name=tzo]').forEach(function (el) {
  var set = function () {
    var t = el.form ? Array.prototype.find.call(el.form.querySelectorAll('input[type=datetime-local]'), function (i) { return i.value; }) : null;
    var d = t ? new Date(t.value) : new Date();
    el.value = String((isNaN(d) ? new Date() : d).getTimezoneOffset());
  };
  set();
  if (el.form) { el.form.addEventListener('submit', set); }
});
// Destructive forms ask first (data-confirm); without the script they post at once.
document.querySelectorAll('form[data-confirm]').forEach(function (f) {
  f.addEventListener('submit', function (e) { if (!window.confirm(f.getAttribute('data-confirm'))) e.preventDefault(); });
});
// An action that leaves the page (Acknowledge, Silence) says what it did once the page is
// back: the message is kept for the next page of this tab, and shown in a status line
// filled after load, so that screen readers announce it. When the server answered with its
// own notice (the action did nothing), that notice stands alone.
// Only on the page the action returns to (not, say, a login page after an expired
// session), and in view wherever the page scrolled to (the row acted on): fixed at the
// bottom of the window for 10 s; the status line stays for screen readers.
var announceKey = 'rackwatch.announce';
document.querySelectorAll('form[data-announce]').forEach(function (f) {
  f.addEventListener('submit', function (e) {
    if (e.defaultPrevented) return;
    var text = f.getAttribute('data-announce');
    var field = f.getAttribute('data-announce-field');
    var v = field && f.elements[field] ? f.elements[field].value.trim() : '';
    if (v) text = text.replace(/\.$/, '') + ': ' + v + '.';
    try { sessionStorage.setItem(announceKey, JSON.stringify({text: text, path: location.pathname})); } catch (x) { /* storage off */ }
  });
});
(function () {
  var said = null;
  try { said = JSON.parse(sessionStorage.getItem(announceKey) || 'null'); sessionStorage.removeItem(announceKey); } catch (x) { return; }
  var main = document.querySelector('main');
  if (!said || !said.text || said.path !== location.pathname || !main) return;
  if (document.querySelector('main [role=status].card, main [role=alert]')) return;
  var p = document.createElement('p');
  p.className = 'card toast';
  p.id = 'announce';
  p.setAttribute('role', 'status');
  main.insertBefore(p, main.firstChild);
  setTimeout(function () { p.textContent = said.text; }, 100);
  setTimeout(function () { p.classList.remove('toast'); p.classList.add('sr-only'); }, 10000);
})();
// True while the viewer works in a form: a field has the focus or differs from what the
// page was served with. A reload then would throw the typing away.
function editing() {
  var a = document.activeElement;
  if (a && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName) && a.type !== 'hidden') return true;
  var fields = document.querySelectorAll('input, textarea, select');
  for (var i = 0; i < fields.length; i++) {
    var f = fields[i];
    if (f.type === 'hidden') continue;
    if (f.type === 'checkbox' || f.type === 'radio') { if (f.checked !== f.defaultChecked) return true; continue; }
    if (f.tagName === 'SELECT') {
      for (var j = 0; j < f.options.length; j++) if (f.options[j].selected !== f.options[j].defaultSelected) return true;
      continue;
    }
    if (f.value !== f.defaultValue) return true;
  }
  return false;
}
(function () {
  var r = document.body.getAttribute('data-refresh');
  if (!r) return;
  // The page says that it updates itself, with a switch to pause (remembered).
  var key = 'rackwatch.refresh.paused';
  var paused = false;
  try { paused = localStorage.getItem(key) === '1'; } catch (e) { /* storage off: not remembered */ }
  var note = document.createElement('p');
  note.className = 'refresh-note';
  var text = document.createElement('span');
  text.setAttribute('role', 'status');
  var button = document.createElement('button');
  button.type = 'button';
  button.className = 'secondary';
  function show() {
    text.textContent = paused ? 'Updates paused' : 'Updates every ' + r + ' s';
    button.textContent = paused ? 'Resume' : 'Pause';
  }
  button.addEventListener('click', function () {
    paused = !paused;
    try { localStorage.setItem(key, paused ? '1' : '0'); } catch (e) { /* not remembered */ }
    show();
  });
  show();
  note.appendChild(text);
  note.appendChild(button);
  var main = document.querySelector('main');
  if (main) main.insertBefore(note, main.firstChild);
  // Reload only while the tab is visible, nobody is typing and no keyboard focus is on
  // the page (a reload would move it back to the top; a mouse click's focus does not
  // count, so an unattended page keeps updating); what is held back catches up at the
  // next tick after that.
  function busy() {
    var a = document.activeElement;
    var keyboard = false;
    // Only a control counts: the row an action returns to is focused by the page itself.
    try { keyboard = !!a && a.matches('a[href], button, input, select, textarea, summary') && a.matches(':focus-visible'); } catch (e) { /* old browser */ }
    return editing() || keyboard;
  }
  var due = false;
  function tick() {
    if (!paused && document.visibilityState === 'visible' && !busy()) { location.reload(); return; }
    due = true;
    if (!paused && busy()) text.textContent = 'Updates held while you work on the page';
  }
  setInterval(tick, Number(r) * 1000);
  document.addEventListener('visibilitychange', function () { if (due && !paused && document.visibilityState === 'visible' && !busy()) location.reload(); });
})();
