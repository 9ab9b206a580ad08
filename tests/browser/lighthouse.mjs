// Lighthouse (mobile form factor, simulated throttling: its defaults) on one page in Debian's
// Chromium, several runs; prints each run's category scores and what the first load
// transferred, split into media (images and video) and everything else.
// Usage: node lighthouse.mjs <url> <runs> <output-dir>
import { mkdirSync, writeFileSync } from 'node:fs';
import * as chromeLauncher from 'chrome-launcher';
import lighthouse from 'lighthouse';

const [url, runs = '3', out] = process.argv.slice(2);
mkdirSync(out, { recursive: true });
const results = [];
for (let run = 1; run <= Number(runs); run += 1) {
  const chrome = await chromeLauncher.launch({
    chromePath: '/usr/bin/chromium',
    chromeFlags: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const { lhr, report } = await lighthouse(url, {
      port: chrome.port,
      output: 'html',
      logLevel: 'error',
      onlyCategories: ['performance', 'accessibility', 'best-practices'],
    });
    writeFileSync(`${out}/lighthouse-${run}.html`, report);
    const requests = lhr.audits['network-requests'].details?.items ?? [];
    const media = (r) => r.resourceType === 'Image' || r.resourceType === 'Media';
    const sum = (items) => items.reduce((total, r) => total + (r.transferSize || 0), 0);
    const failed = Object.values(lhr.audits)
      .filter((a) => a.score !== null && a.score < 1 && a.scoreDisplayMode !== 'informative'
        && a.scoreDisplayMode !== 'notApplicable' && a.scoreDisplayMode !== 'manual')
      .map((a) => `${a.id}: ${a.displayValue ?? a.score}`);
    results.push({
      run,
      scores: Object.fromEntries(Object.entries(lhr.categories)
        .map(([id, category]) => [id, Math.round(category.score * 100)])),
      metrics: Object.fromEntries(['first-contentful-paint', 'largest-contentful-paint',
        'total-blocking-time', 'cumulative-layout-shift', 'speed-index']
        .map((id) => [id, lhr.audits[id].numericValue])),
      bytes: { total: sum(requests), without_media: sum(requests.filter((r) => !media(r))), requests: requests.length },
      not_perfect: failed,
      runtime_error: lhr.runtimeError?.message ?? null,
    });
    console.error(JSON.stringify(results[results.length - 1]));
  } finally {
    await chrome.kill();
  }
}
console.log(JSON.stringify(results));
