// Drives the dashboard in headless Chromium like an operator would; started by
// tests/it/browser.rs with: node drive.mjs BASE_URL USER PASSWORD OUT_DIR
// Prints one `OK …` line per step with the numbers it saw; exits non-zero on failure.
import { chromium } from 'playwright-core';
import fs from 'node:fs';

const [base, user, password, out] = process.argv.slice(2);
fs.mkdirSync(out, { recursive: true });
const exe = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath: exe,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
function check(cond, msg) { if (!cond) { throw new Error('FAILED: ' + msg); } }
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, timezoneId: 'Asia/Tokyo' });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  // A script or style the Content-Security-Policy blocks is a failure too.
  page.on('console', (m) => { if (m.text().includes('Content Security Policy')) errors.push(m.text()); });

  // Login: anonymous → login form → fleet.
  await page.goto(base + '/');
  check(page.url().includes('/login'), 'anonymous visit lands on login, got ' + page.url());
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', 'wrong password');
  await page.click('button[type=submit]');
  check((await page.textContent('[role=alert]')).includes('Wrong user name or password'), 'wrong password message');
  await page.fill('input[name=password]', password);
  await page.click('button[type=submit]');
  await page.waitForSelector('#heatmap');
  console.log('OK login url=' + new URL(page.url()).pathname);

  // Fleet heatmap.
  const cells = await page.locator('a.cell').count();
  const faults = await page.locator('a.cell.fault').count();
  console.log(`OK fleet cells=${cells} faults=${faults}`);
  await page.screenshot({ path: out + '/fleet-1280.png', fullPage: true });

  // Keyboard: the first Tab lands on the skip link, Enter moves focus to the content.
  await page.keyboard.press('Tab');
  const first = await page.evaluate(() => document.activeElement.textContent);
  check(first === 'Skip to content', 'first Tab focuses the skip link, got ' + first);
  console.log('OK keyboard first-tab=' + JSON.stringify(first));

  // Color by temperature.
  await page.click('a[data-metric=temp]');
  await page.waitForURL(/metric=temp/);
  console.log('OK metric url=' + new URL(page.url()).search);
  // Cells are colored by class (one CSS rule per scale step): a 91 °C GPU is the top step.
  const hotBg = await page.locator('a.cell.hot').first().evaluate((el) => getComputedStyle(el).backgroundColor);
  console.log('OK hot color=' + hotBg);

  // Hovering a cell shows its label (a CSS tooltip drawn from aria-label).
  const hovered = page.locator('a.cell.fault').first();
  await hovered.hover();
  const tip = await hovered.evaluate((el) => getComputedStyle(el, '::after').content);
  console.log('OK tooltip ' + tip);

  // Click through to the faulty GPU.
  const fault = page.locator('a.cell.fault').first();
  const label = await fault.getAttribute('aria-label');
  await fault.click();
  await page.waitForSelector('#events');
  const xid = await page.locator('#events tbody tr').first().textContent();
  const charts = await page.locator('svg.chart:visible').count();
  const marks = await page.locator('svg.chart:visible g.event').count();
  const shaded = await page.locator('svg.chart:visible rect.throttle').count();
  console.log(`OK gpu path=${new URL(page.url()).pathname} charts=${charts} marks=${marks} shaded=${shaded} label=${JSON.stringify(label)}`);
  console.log('OK event ' + JSON.stringify(xid.replace(/\s+/g, ' ').trim()));
  // Times are shown in the viewer's zone (Asia/Tokyo, UTC+9), with its name.
  const shown = await page.locator('#events time').first().textContent();
  const iso = await page.locator('#events time').first().getAttribute('datetime');
  const p = {};
  new Intl.DateTimeFormat('en-US', { timeZone: 'Asia/Tokyo', year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23', timeZoneName: 'short' })
    .formatToParts(new Date(iso)).forEach((x) => { p[x.type] = x.value; });
  const expected = `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second} ${p.timeZoneName}`;
  console.log('OK localtime ' + JSON.stringify({ iso, shown, tokyo: expected }));
  await page.screenshot({ path: out + '/gpu-1280.png', fullPage: true });

  // Range picker: a preset, then a custom range in the viewer's zone.
  await page.click('a[data-range="6h"]');
  await page.waitForURL(/range=6h/);
  const current = await page.locator('.picker a[aria-current=true]').textContent();
  const note = await page.locator('.picker + p').textContent();
  console.log(`OK range url=${new URL(page.url()).search} current=${JSON.stringify(current)} note=${JSON.stringify(note)}`);
  const fromVal = await page.inputValue('input[name=from]');
  const tzo = await page.inputValue('input[name=tzo]');
  await page.click('.picker form button');
  await page.waitForURL(/from=/);
  const after = await page.locator('.picker + p').textContent();
  console.log(`OK custom from-local=${fromVal} tzo=${tzo} url=${new URL(page.url()).search} note=${JSON.stringify(after)}`);

  // Dark theme and a phone.
  await page.emulateMedia({ colorScheme: 'dark' });
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  console.log('OK dark background=' + bg);
  await page.screenshot({ path: out + '/gpu-dark.png', fullPage: false });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(base + '/');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  console.log('OK phone horizontal-overflow=' + overflow);
  await page.screenshot({ path: out + '/fleet-phone-dark.png', fullPage: false });

  // Capacity: from the fleet's KPI to the pools, then one pool's chart with its bands.
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.click('#kpi-capacity a');
  await page.waitForSelector('section.pool');
  const pools = await page.locator('section.pool').count();
  const actions = await page.locator('section.pool .actions li').count();
  const action = (await page.locator('section.pool .actions li').allTextContents()).map((t) => t.replace(/\s+/g, ' ').trim()).join(' | ');
  console.log(`OK capacity path=${new URL(page.url()).pathname} pools=${pools} actions=${actions} said=${JSON.stringify(action)}`);
  await page.screenshot({ path: out + '/capacity-1280.png', fullPage: true });
  await page.click('section.pool h3 a');
  await page.waitForSelector('#evidence');
  const capCharts = await page.locator('svg.chart:visible').count();
  const bands = await page.locator('svg.chart:visible path.band').count();
  const wide = await page.locator('#pool-chart .wide-only svg.chart').isVisible();
  const evidence = await page.locator('#evidence tbody tr').count();
  console.log(`OK capacity-pool path=${new URL(page.url()).pathname} charts=${capCharts} bands=${bands} wide=${wide} evidence=${evidence}`);
  await page.screenshot({ path: out + '/capacity-pool-1280.png', fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  const poolOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.goto(base + '/capacity');
  const capOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  console.log(`OK capacity-phone horizontal-overflow=${capOverflow} pool-overflow=${poolOverflow}`);
  await page.screenshot({ path: out + '/capacity-phone.png', fullPage: true });
  check(errors.length === 0, 'page errors: ' + errors.join('; '));
  console.log('OK done');
} catch (e) {
  console.error(String(e && e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
