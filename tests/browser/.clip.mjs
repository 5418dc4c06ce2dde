import { chromium } from 'playwright-core';
const [base, path, out, w, h, sel, nth] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: +w, height: +h } });
await page.goto(base + '/login');
await page.fill('input[name=username]', 'admin');
await page.fill('input[name=password]', 'demo-pw-1');
await Promise.all([page.waitForNavigation(), page.press('input[name=password]', 'Enter')]);
await page.goto(base + path);
if (sel) { await page.locator(sel).nth(+(nth||0)).screenshot({ path: out }); } else { await page.screenshot({ path: out }); }
await browser.close();
