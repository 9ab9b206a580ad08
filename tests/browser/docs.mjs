// The API reference (/docs) in headless Chromium: Swagger UI draws every operation of the
// node's OpenAPI document under the page's Content-Security-Policy, and a reader can try an
// operation against the node.
// Usage: node docs.mjs <base-url> <screenshot.png>
// Prints {"operations": N, "tags": [...], "tried": {...}, "console": [...]}.
import { chromium } from 'playwright-core';

const [base, screenshot] = process.argv.slice(2);
const report = { console: [], violations: [] };
function expect(condition, what) {
  if (!condition) throw new Error(`expected: ${what}`);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.text().includes('Content Security Policy')) {
      report.console.push(msg.text());
    }
  });
  page.on('pageerror', (error) => report.console.push(String(error)));
  const outside = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(base) && !request.url().startsWith('data:')) outside.push(request.url());
  });
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__violations = window.__violations || [];
      window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });

  await page.goto(`${base}/docs`);
  await page.waitForSelector('.opblock');
  // Every tag's operations are drawn (the tags are expanded by default).
  report.operations = await page.locator('.opblock').count();
  report.tags = await page.locator('.opblock-tag-section h3 a span').allTextContents();
  report.title = (await page.locator('.info .title').textContent()).trim();

  // Try GET /api/health against the node.
  const health = page.locator('#operations-operations-health');
  await health.locator('.opblock-summary').click();
  await health.getByRole('button', { name: 'Try it out' }).click();
  await health.getByRole('button', { name: 'Execute' }).click();
  const status = health.locator('.live-responses-table .response .response-col_status').first();
  await status.waitFor();
  const body = health.locator('.live-responses-table .response-col_description pre').first();
  report.tried = { status: (await status.textContent()).trim(), body: (await body.textContent()).trim() };
  await page.screenshot({ path: screenshot, fullPage: false });

  report.violations = await page.evaluate(() => window.__violations || []);
  report.outside = outside;
  expect(report.violations.length === 0, `no policy violation: ${report.violations}`);
  expect(outside.length === 0, `no request leaves the node: ${outside}`);
  console.log(JSON.stringify(report));
} catch (error) {
  console.log(JSON.stringify({ ...report, error: String(error) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
