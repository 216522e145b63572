// Opens the tokensync status page in headless Chromium and reports, as one
// JSON line on stdout, what a person would see: the token rows, whether the
// page updated itself without a reload, console errors, and any forbidden
// string (a token value or secret) found in the rendered page.
//
// Environment: STATUS_URL (the page), FORBIDDEN (JSON array of strings that
// must never appear), WAIT_MS (how long to wait for an update, default 15000),
// CHROMIUM (the browser binary, default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const url = process.env.STATUS_URL;
const forbidden = JSON.parse(process.env.FORBIDDEN || '[]');
const waitMs = Number(process.env.WAIT_MS || 15000);
if (!url) {
  console.error('STATUS_URL is not set');
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), 'tokensync-chromium-'));
// A fresh, empty profile for every run; the flags keep Chromium from
// contacting any host on its own.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const result = { tokens: [], updated: false, consoleErrors: [], leaked: [] };
try {
  const page = await browser.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') result.consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => result.consoleErrors.push(String(error)));

  await page.goto(url, { waitUntil: 'load' });
  await page.waitForSelector('tr[data-token]', { timeout: 10000 });
  const before = await page.$$eval('tr[data-token]', (rows) => rows.map((row) => [row.dataset.token, row.dataset.lastRefresh]));
  result.tokens = before.map(([name]) => name);

  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline && !result.updated) {
    await page.waitForTimeout(500);
    const now = await page.$$eval('tr[data-token]', (rows) => rows.map((row) => [row.dataset.token, row.dataset.lastRefresh]));
    result.updated = now.some(([name, last]) => {
      const earlier = before.find(([other]) => other === name);
      return earlier && last && earlier[1] !== last;
    });
  }

  const content = await page.content();
  const text = await page.evaluate(() => document.body.innerText);
  result.leaked = forbidden.filter((value) => value && (content.includes(value) || text.includes(value)));
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
