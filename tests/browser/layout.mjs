// The layout check: every page of the dashboard at a desktop (1440 × 900), a tablet (768 × 1024) and a phone
// (390 × 844) width, on a realistic fleet, in headless Chromium. Started by
// tests/it/browser.rs with: node layout.mjs BASE_URL USER PASSWORD OUT_DIR PAGES_JSON
// PAGES_JSON is a list of [name, path, flags]; flags: "days" (a chart over two days or
// more: its time axis must show dates), "error" (an error page: answers with a status
// of 400 or more, as HTML). Prints one `OK …` line per page and width, `PROBLEM …` lines
// for what is wrong, and exits non-zero if anything is.
import { chromium } from 'playwright-core';
import fs from 'node:fs';

const [base, user, password, out, pagesJson] = process.argv.slice(2);
const pages = JSON.parse(pagesJson);
fs.mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
let failed = 0;
function problem(where, what) { failed++; console.log(`PROBLEM ${where}: ${what}`); }

// Everything measured inside the page: overflow, clipped text, SVG labels, buttons, dates.
function measure(days) {
  const vw = document.documentElement.clientWidth;
  const out = [];
  const name = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    const c = typeof el.className === 'string' ? el.className.trim() : '';
    if (c) s += '.' + c.split(/\s+/).slice(0, 2).join('.');
    return s;
  };
  const over = document.documentElement.scrollWidth - window.innerWidth;
  if (over > 0) out.push(`the page scrolls sideways by ${over}px`);
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('svg') && el.tagName.toLowerCase() !== 'svg') continue;
    if (el.closest('.skip')) continue;
    const cs = getComputedStyle(el);
    if (cs.display === 'none' || cs.visibility === 'hidden' || cs.position === 'absolute' || cs.position === 'fixed') continue;
    const scroller = el.parentElement && el.parentElement.closest('.scroll');
    if (scroller) continue; // content of a deliberately scrollable box
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.right > vw + 1) out.push(`${name(el)} ends at ${Math.round(r.right)}px, past the ${vw}px window`);
    const p = el.parentElement;
    if (p && p !== document.body) {
      const pr = p.getBoundingClientRect();
      const pcs = getComputedStyle(p);
      const padR = parseFloat(pcs.paddingRight) || 0;
      if (r.right > pr.right + 1 && pcs.overflowX === 'visible' && el.tagName !== 'TD' && el.tagName !== 'TH' && el.tagName !== 'TR') {
        out.push(`${name(el)} is wider than ${name(p)} (sticks out ${Math.round(r.right - pr.right + padR)}px)`);
      }
    }
    // Text cut off with an ellipsis, or clipped by a box that hides its overflow.
    if (cs.textOverflow === 'ellipsis' && el.scrollWidth > el.clientWidth + 1) out.push(`${name(el)} truncates "${el.textContent.trim().slice(0, 40)}"`);
    if ((cs.overflowX === 'hidden' || cs.overflowX === 'clip') && el.scrollWidth > el.clientWidth + 1) out.push(`${name(el)} hides ${el.scrollWidth - el.clientWidth}px of its content`);
  }
  // A scrollable table must say so (app.js marks it, or the page's CSS writes a hint;
  // the CSS draws a line and shadows).
  let scrollers = 0;
  for (const el of document.querySelectorAll('.scroll')) {
    if (el.scrollWidth > el.clientWidth + 1) {
      scrollers++;
      // A page without the script (the report file) states it in CSS on narrow screens.
      const before = getComputedStyle(el, '::before').content;
      const hinted = el.classList.contains('overflowing') || (before && before !== 'none' && before !== 'normal');
      if (!hinted) out.push(`${name(el.firstElementChild || el)} scrolls sideways without the visible hint`);
      // On a desktop every table fits: wrapping cells and headers share the width.
      if (vw >= 1280) out.push(`${name(el.firstElementChild || el)} needs ${el.scrollWidth - el.clientWidth}px more than a ${vw}px window`);
    }
  }
  // Every SVG text inside its SVG's box.
  let texts = 0;
  for (const svg of document.querySelectorAll('svg')) {
    const vb = svg.viewBox && svg.viewBox.baseVal;
    if (!vb || !vb.width) continue;
    for (const t of svg.querySelectorAll('text')) {
      texts++;
      const b = t.getBBox();
      if (b.x < vb.x - 0.5 || b.y < vb.y - 0.5 || b.x + b.width > vb.x + vb.width + 0.5 || b.y + b.height > vb.y + vb.height + 0.5) {
        out.push(`chart label "${t.textContent}" is outside its chart (x ${b.x.toFixed(1)}–${(b.x + b.width).toFixed(1)} of 0–${vb.width}, y ${b.y.toFixed(1)}–${(b.y + b.height).toFixed(1)} of 0–${vb.height})`);
      }
      // Shown labels are readable: drawn at least 8 px tall on the screen.
      const r = t.getBoundingClientRect();
      if (svg.classList.contains('chart') && r.height > 0 && r.height < 8 && t.textContent.trim()) {
        out.push(`chart label "${t.textContent}" is ${r.height.toFixed(1)} px tall on screen`);
      }
    }
  }
  // Strip charts' time labels (HTML): inside their chart and apart from each other.
  for (const fig of document.querySelectorAll('figure.strip')) {
    const box = fig.getBoundingClientRect();
    if (box.width === 0) continue;
    let prev = null;
    for (const s of fig.querySelectorAll('.saxis span')) {
      const r = s.getBoundingClientRect();
      if (r.width === 0) continue;
      texts++;
      if (r.left < box.left - 0.5 || r.right > box.right + 0.5) out.push(`strip label "${s.textContent}" is outside its chart (x ${Math.round(r.left)}–${Math.round(r.right)} of ${Math.round(box.left)}–${Math.round(box.right)})`);
      if (prev && r.left < prev.right + 4) out.push(`strip labels "${prev.text}" and "${s.textContent}" touch`);
      prev = { right: r.right, text: s.textContent };
    }
  }
  // Every action button of the alerts table on screen horizontally, with its label.
  const actions = [];
  for (const b of document.querySelectorAll('#firing button')) {
    const r = b.getBoundingClientRect();
    const vis = r.width > 0 && r.height > 0 && r.left >= 0 && r.right <= vw;
    actions.push(b.textContent.trim());
    if (!vis) out.push(`alert action "${b.textContent.trim()}" is not visible (x ${Math.round(r.left)}–${Math.round(r.right)} of ${vw})`);
  }
  // Charts over two days or more say which day.
  let dated = 0, charts = 0;
  for (const svg of document.querySelectorAll('svg.chart')) {
    // A chart and its phone twin: the one the stylesheet shows at this width.
    if (svg.getBoundingClientRect().width === 0) continue;
    charts++;
    const labs = [...svg.querySelectorAll('text.xlab tspan')];
    if (labs.some((t) => t.dataset.fmt === 'date' || t.dataset.fmt === 'datetime') && labs.some((t) => /[A-Za-z]{3}/.test(t.textContent))) dated++;
  }
  for (const fig of document.querySelectorAll('figure.strip')) {
    if (fig.getBoundingClientRect().width === 0) continue;
    charts++;
    const labs = [...fig.querySelectorAll('.saxis span')].filter((s) => s.getBoundingClientRect().width > 0);
    if (labs.some((t) => t.dataset.fmt === 'date' || t.dataset.fmt === 'datetime') && labs.some((t) => /[A-Za-z]{3}/.test(t.textContent))) dated++;
  }
  if (days && dated < charts) out.push(`${charts - dated} of ${charts} charts over days show no dates`);
  return { problems: out, texts, charts, dated, actions, scrollers, h1: (document.querySelector('h1') || {}).textContent || '' };
}

try {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await ctx.newPage();
  let where = 'login';
  let errorPage = false;
  const errors = [];
  page.on('console', (m) => {
    // An error page's own status is logged by Chromium as a failed load: that one is meant.
    if (m.type() === 'error' && !(errorPage && m.text().includes('Failed to load resource'))) errors.push(`${where}: console: ${m.text()}`);
  });
  page.on('pageerror', (e) => errors.push(`${where}: script error: ${e}`));
  page.on('requestfailed', (r) => errors.push(`${where}: request failed: ${r.url()}`));
  let documentUrl = '';
  page.on('response', (r) => {
    if (r.status() >= 400 && r.url() !== documentUrl) errors.push(`${where}: ${r.status()} for ${r.url()}`);
  });
  await page.goto(base + '/login');
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', password);
  await page.click('button[type=submit]');
  await page.waitForSelector('#heatmap');

  // And a tablet between them, where wide tables have pushed pages sideways before.
  for (const [width, height] of [[1440, 900], [768, 1024], [390, 844]]) {
    await page.setViewportSize({ width, height });
    for (const [name, path, flags] of pages) {
      where = `${name}@${width}`;
      documentUrl = base + path;
      errorPage = (flags || '').includes('error');
      const resp = await page.goto(base + path);
      const status = resp.status();
      const type = resp.headers()['content-type'] || '';
      if ((flags || '').includes('error')) {
        if (status < 400) problem(where, `expected an error status, got ${status}`);
        if (!type.startsWith('text/html')) problem(where, `an error in the browser answers ${type}, not a page`);
      } else if (status !== 200) {
        problem(where, `status ${status}`);
      }
      const m = await page.evaluate(measure, (flags || '').includes('days'));
      for (const p of m.problems.slice(0, 12)) problem(where, p);
      if (m.problems.length > 12) problem(where, `… and ${m.problems.length - 12} more`);
      await page.screenshot({ path: `${out}/layout-${name}-${width}.png`, fullPage: true });
      console.log(`OK layout ${where} status=${status} charts=${m.charts} dated=${m.dated} svg-texts=${m.texts} scrollable-tables=${m.scrollers} actions=${JSON.stringify(m.actions)} h1=${JSON.stringify(m.h1.trim())}`);
    }
  }
  for (const e of errors) problem('console/network', e);

  // Acknowledge and silence from the alerts table: each visibly changes the row, and the
  // fleet's count of unhandled alerts drops.
  where = 'alerts-actions';
  errorPage = false;
  await page.setViewportSize({ width: 390, height: 844 });
  const unhandled = async () => { await page.goto(base + '/'); return Number((await page.textContent('#kpi-alerts')).trim()); };
  const before = await unhandled();
  await page.goto(base + '/alerts');
  const open = page.locator('#firing tr.alert:not(.handled)');
  const openBefore = await open.count();
  await open.first().locator('button', { hasText: 'Acknowledge' }).click();
  // Back at the acknowledged alert's own row, not the top of the page.
  await page.waitForURL(/\/alerts#alert-[0-9a-f]{16}$/);
  const targetRows = await page.locator('#firing tr.alert:target').count();
  if (targetRows !== 1) problem(where, `after Acknowledge ${targetRows} rows are the page's target, expected the acknowledged one`);
  const targetAcked = targetRows === 1 && (await page.locator('#firing tr.alert:target .badge', { hasText: 'acknowledged by' }).count()) === 1;
  if (!targetAcked) problem(where, 'the row returned to after Acknowledge does not say it is acknowledged');
  // The page says what was done, in a status line a screen reader announces, once.
  const announced = async (what) => {
    const line = page.locator('main #announce[role=status]');
    try { await line.waitFor({ timeout: 2000 }); await page.waitForFunction(() => document.querySelector('#announce').textContent !== ''); } catch (e) { /* reported below */ }
    const text = (await line.count()) === 1 ? (await line.textContent()).trim() : '';
    if (!text.startsWith(what)) problem(where, `after the action the status line reads ${JSON.stringify(text)}, expected ${JSON.stringify(what + ' …')}`);
    // In view, wherever the page scrolled to (the row acted on).
    const inView = text !== '' && await line.evaluate((el) => { const r = el.getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight && r.height > 0; });
    if (text !== '' && !inView) problem(where, `the status line ${JSON.stringify(text)} is outside the window`);
    return text;
  };
  const ackSaid = await announced('Acknowledged: ');
  const ackBadges = await page.locator('#firing .badge', { hasText: 'acknowledged by' }).count();
  const afterAck = await unhandled();
  if ((await page.locator('#announce').count()) !== 0) problem(where, 'the status line of an action shows again on the next page');
  await page.goto(base + '/alerts');
  await page.locator('#firing tr.alert:not(.handled)').first().locator('button', { hasText: 'Silence' }).click();
  await page.waitForURL(/\/alerts$/);
  const silenceSaid = await announced('Silenced for 2 hours: ');
  const silencedBadges = await page.locator('#firing .badge', { hasText: 'silenced' }).count();
  const openAfter = await page.locator('#firing tr.alert:not(.handled)').count();
  const handledOpacity = await page.locator('#firing tr.handled td').first().evaluate((el) => getComputedStyle(el).opacity);
  await page.screenshot({ path: `${out}/layout-alerts-acted-390.png`, fullPage: true });
  const afterSilence = await unhandled();
  const handledNote = (await page.locator('#kpi-alerts-handled').textContent()).trim();
  console.log(`OK alerts-actions open-rows=${openBefore}->${openAfter} fleet-unhandled=${before}->${afterAck}->${afterSilence} ack-badges=${ackBadges} silenced-badges=${silencedBadges} handled-opacity=${handledOpacity} note=${JSON.stringify(handledNote)} said=${JSON.stringify([ackSaid, silenceSaid])}`);

  // The page's 30 s refresh waits while someone types in a form, and runs once they
  // leave it as served (a fake clock runs the minutes).
  where = 'refresh-keeps-typing';
  const typing = await page.context().newPage();
  await typing.clock.install();
  await typing.goto(base + '/alerts');
  const field = typing.locator('form[action="/silences"] input[name=matchers]:not([type=hidden])');
  await field.fill('host=half-typed');
  await typing.locator('h1').click();
  await typing.evaluate(() => { window.servedOnce = true; });
  await typing.clock.runFor(95000);
  const kept = await field.inputValue();
  const sameDocument = await typing.evaluate(() => window.servedOnce === true);
  if (kept !== 'host=half-typed' || !sameDocument) problem(where, `typing lost to a refresh: field ${JSON.stringify(kept)}, same document ${sameDocument}`);
  await field.fill('');
  await typing.locator('h1').click();
  await Promise.all([typing.waitForEvent('load'), typing.clock.runFor(35000)]);
  if (await typing.evaluate(() => window.servedOnce === true)) problem(where, 'no refresh once the form is as served');
  await typing.close();
  console.log(`OK refresh-keeps-typing kept=${JSON.stringify(kept)}`);

  // Keyboard focus holds the refresh too (a reload would send it back to the top), and
  // the page's switch pauses and resumes it.
  where = 'refresh-keeps-keyboard-focus';
  const kb = await page.context().newPage();
  await kb.clock.install();
  await kb.goto(base + '/alerts');
  const noteText = async () => (await kb.locator('.refresh-note').textContent()).trim();
  const served = await noteText();
  if (!served.startsWith('Updates every 30 s')) problem(where, `refresh note ${JSON.stringify(served)}`);
  await kb.locator('#firing button').first().focus();
  await kb.keyboard.press('Tab');
  await kb.evaluate(() => { window.servedOnce = true; });
  await kb.clock.runFor(95000);
  if (!(await kb.evaluate(() => window.servedOnce === true))) problem(where, 'a refresh took the keyboard focus away');
  await kb.locator('.refresh-note button').click();
  const pausedText = await noteText();
  await kb.clock.runFor(95000);
  if (!pausedText.startsWith('Updates paused') || !(await kb.evaluate(() => window.servedOnce === true))) problem(where, `paused: ${JSON.stringify(pausedText)}, reloaded ${!(await kb.evaluate(() => window.servedOnce === true))}`);
  await kb.locator('.refresh-note button').click();
  await Promise.all([kb.waitForEvent('load'), kb.clock.runFor(35000)]);
  await kb.close();
  console.log(`OK refresh-keeps-keyboard-focus note=${JSON.stringify(served)} paused=${JSON.stringify(pausedText)}`);

  // Revoking a token asks first; dismissed, nothing is posted.
  where = 'confirm-revoke';
  await page.goto(base + '/admin');
  const revokes = page.locator('form[data-confirm] button', { hasText: 'Revoke' });
  const before2 = await revokes.count();
  let asked = '';
  page.once('dialog', async (d) => { asked = d.message(); await d.dismiss(); });
  if (before2 > 0) await revokes.first().click();
  await page.waitForTimeout(300);
  const after2 = await page.locator('form[data-confirm] button', { hasText: 'Revoke' }).count();
  if (!asked.startsWith('Revoke token') || after2 !== before2) problem(where, `revoke asked ${JSON.stringify(asked)}, ${before2} -> ${after2} live tokens`);
  console.log(`OK confirm-revoke asked=${JSON.stringify(asked)} tokens=${before2}->${after2}`);
} catch (e) {
  failed++;
  console.error(String(e && e.stack || e));
} finally {
  await browser.close();
}
console.log(failed ? `FAILED ${failed} problem(s)` : 'OK layout done');
process.exitCode = failed ? 1 : 0;
