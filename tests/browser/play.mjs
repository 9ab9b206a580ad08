// Plays a served video in headless Chromium, seeks to 10 s and reports what the element saw.
// Usage: node play.mjs <base-url> <media-path>
import { chromium } from 'playwright-core';

const [base, media] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run',
         '--autoplay-policy=no-user-gesture-required'],
});
try {
  const page = await browser.newPage();
  // Whatever the page's Content-Security-Policy refuses, and any script error, is reported.
  const refused = [];
  page.on('console', (msg) => {
    if (msg.text().includes('Content Security Policy')) refused.push(msg.text());
  });
  page.on('pageerror', (error) => refused.push(String(error)));
  await page.goto(base + '/');
  await page.waitForLoadState('networkidle');
  const shown = await page.evaluate(() => document.body.innerText);
  const result = await page.evaluate(async (src) => {
    const video = document.createElement('video');
    video.muted = true;
    video.preload = 'auto';
    document.body.append(video);
    const once = (event) => new Promise((resolve, reject) => {
      video.addEventListener(event, resolve, { once: true });
      video.addEventListener('error', () => reject(new Error('media error ' + (video.error && video.error.code))), { once: true });
    });
    video.src = src;
    await once('loadedmetadata');
    const duration = video.duration;
    await video.play();
    video.currentTime = 10;
    await once('seeked');
    // Keep playing a little past the seek point.
    await new Promise((resolve) => setTimeout(resolve, 500));
    return { duration, currentTime: video.currentTime, paused: video.paused, readyState: video.readyState };
  }, media);
  console.log(JSON.stringify({ ...result, shown, refused }));
} finally {
  await browser.close();
}
