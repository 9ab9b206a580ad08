// The web application in headless Chromium, as its users use it: a player signs up, logs in,
// uploads and follows processing; a fan votes; an operator watches and repairs the node. Every
// view is checked with axe-core and photographed at 1280 and 375 px.
// Usage: node app.mjs <base-url> <output-dir> <scenario.json>
// The scenario gives the admin token, the clips and the server's own refusal texts. A failed
// expectation ends the script with a non-zero exit and says what was expected.
import { readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const [base, out, scenarioPath] = process.argv.slice(2);
const scenario = JSON.parse(readFileSync(scenarioPath, 'utf8'));
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
mkdirSync(out, { recursive: true });

const report = { views: {}, steps: [], console: [], requests: { tus: [], form: 0 } };
const step = (text) => { report.steps.push(text); console.error(`· ${text}`); };
function expect(condition, what) {
  if (!condition) throw new Error(`expected: ${what}`);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
    '--autoplay-policy=no-user-gesture-required'],
});

/** A fresh tab (its own session storage) that records script errors and refusals. */
async function tab() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'es-ES' });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.text().includes('Content Security Policy')) {
      report.console.push(msg.text());
    }
  });
  page.on('pageerror', (error) => report.console.push(String(error)));
  page.on('request', (request) => {
    const path = new URL(request.url()).pathname;
    if (path.startsWith('/api/uploads')) {
      report.requests.tus.push({ method: request.method(), offset: request.headers()['upload-offset'] ?? null });
    }
    if (path.startsWith('/api/videos/upload')) report.requests.form += 1;
  });
  page.on('dialog', (dialog) => dialog.accept());
  return page;
}

/** axe-core on the current view at both widths, and a full-page screenshot of each. */
async function check(page, view) {
  const found = [];
  for (const width of [1280, 375]) {
    await page.setViewportSize({ width, height: width === 375 ? 812 : 900 });
    await page.waitForTimeout(150);
    await page.screenshot({ path: `${out}/${view}-${width}.png`, fullPage: true });
    // Evaluated through the debugging protocol, which the page's policy does not govern.
    await page.evaluate(axeSource);
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
    for (const v of result.violations) {
      found.push({ width, id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) });
    }
  }
  await page.setViewportSize({ width: 1280, height: 900 });
  report.views[view] = found;
}

async function signUp(page, player) {
  await page.goto(`${base}/#/registro`);
  await page.getByRole('heading', { name: 'Crear cuenta' }).waitFor();
  await page.getByLabel('Nombre', { exact: true }).fill(player.first);
  await page.getByLabel('Apellido').fill(player.last);
  await page.getByLabel('Correo electrónico').fill(player.email);
  await page.getByLabel('Contraseña', { exact: true }).fill(player.password);
  await page.getByLabel('Confirmar contraseña').fill(player.password);
  await page.getByLabel('Ciudad').fill(player.city);
  await page.getByLabel('País').fill('Colombia');
  await page.getByRole('button', { name: 'Crear cuenta' }).click();
  await page.getByRole('heading', { name: 'Iniciar sesión' }).waitFor();
  await page.getByText('Cuenta creada').waitFor();
}

async function logIn(page, player, origin = base) {
  await page.goto(`${origin}/#/entrar`);
  await page.getByRole('heading', { name: 'Iniciar sesión' }).waitFor();
  await page.getByLabel('Correo electrónico').fill(player.email);
  await page.getByLabel('Contraseña').fill(player.password);
  await page.getByRole('button', { name: 'Iniciar sesión' }).click();
  await page.getByRole('heading', { name: 'Mis videos' }).waitFor();
}

async function upload(page, title, file) {
  await page.getByLabel('Título').fill(title);
  await page.getByLabel('Archivo de video').setInputFiles(file);
  await page.getByRole('button', { name: 'Subir video' }).click();
}

/** The item of a player's video, by its title. */
const mine = (page, title) => page.getByRole('list', { name: 'Tus videos' }).getByRole('listitem')
  .filter({ has: page.getByRole('heading', { name: title, exact: true }) });

/** An alert with exactly the given text: how the application reports a refusal. */
async function alerted(page, text) {
  const alert = page.getByRole('alert').filter({ hasText: text });
  await alert.waitFor();
  return (await alert.textContent()).trim();
}

const admin = (path, body) => fetch(`${base}${path}`, {
  method: 'POST',
  headers: { Authorization: `Bearer ${scenario.admin_token}`, 'Content-Type': 'application/json' },
  body: JSON.stringify(body),
}).then((r) => { expect(r.ok, `${path} answers 200, not ${r.status}`); });

const [star, fan] = scenario.players;
try {
  // --- A player signs up, logs in, uploads and follows the processing. ---
  const player = await tab();
  await player.goto(`${base}/#/registro`);
  await player.getByRole('heading', { name: 'Crear cuenta' }).waitFor();
  await check(player, 'registro');
  await signUp(player, star);
  await check(player, 'entrar');
  await logIn(player, star);
  step('a player signed up and logged in');
  expect(await player.getByRole('button', { name: 'Cerrar sesión' }).isVisible(), 'a logout button');

  const bar = player.getByRole('progressbar', { name: 'Progreso de la subida' });
  await upload(player, scenario.title, scenario.clips.valid);
  const seen = new Set();
  for (let i = 0; i < 600; i += 1) {
    const now = Number(await bar.getAttribute('aria-valuenow') ?? await bar.evaluate((el) => el.value));
    seen.add(now);
    if (now === 100) break;
    await player.waitForTimeout(20);
  }
  expect(seen.has(100), `the progress bar reaches 100 % (saw ${[...seen]})`);
  await player.getByRole('status').filter({ hasText: 'Video subido exitosamente' }).waitFor();
  const item = mine(player, scenario.title);
  await item.getByText('Procesando').waitFor({ timeout: 60000 });
  const processing = (await item.locator('.state').textContent()).trim();
  expect(/^Procesando \d{1,3} %$/.test(processing), `the state says its percentage: "${processing}"`);
  await check(player, 'mis-videos');
  await item.getByText('Publicado').waitFor({ timeout: 180000 });
  step(`the upload reached 100 %, then "${processing}", then "Publicado"`);

  // Refusals: the words are the server's, whether the browser or the node found the problem.
  await upload(player, 'Demasiado corto', scenario.clips.short);
  const short = await alerted(player, scenario.refusals.short);
  expect(short === scenario.refusals.short, `"${short}" is the server's "${scenario.refusals.short}"`);
  await upload(player, 'No es un video', scenario.clips.text);
  const text = await alerted(player, scenario.refusals.text);
  expect(text === scenario.refusals.text, `"${text}" is the server's "${scenario.refusals.text}"`);
  step('refused uploads show the server\'s reasons');

  // A reload in the middle of an upload: the same file chosen again continues where the node
  // stopped receiving it (the upload's fingerprint is in local storage). This tab reaches the
  // node through a slow uplink (2 MiB/s) and sends 24 MiB, so that the reload lands mid-way.
  // What the browser had already handed to its network stack still arrives after the reload:
  // the node answers 409 to the resumed upload until that request is over, then the upload
  // continues from where the node stands.
  const slow = await tab();
  await logIn(slow, star, scenario.slow_base);
  const before = report.requests.tus.length;
  await upload(slow, scenario.resumed_title, scenario.clips.large);
  await slow.waitForTimeout(2500);
  await slow.reload();
  await slow.getByRole('heading', { name: 'Mis videos' }).waitFor();
  await slow.getByText('sin terminar').waitFor();
  const reloaded = report.requests.tus.length;
  await upload(slow, scenario.resumed_title, scenario.clips.large);
  await slow.getByRole('status').filter({ hasText: 'Video subido exitosamente' }).waitFor({ timeout: 90000 });
  // One upload was created, before the reload; after it, the first PATCH starts where the
  // node stood.
  const creations = report.requests.tus.slice(before).filter((r) => r.method === 'POST');
  const after = report.requests.tus.slice(reloaded);
  expect(creations.length === 1 && !after.some((r) => r.method === 'POST'), `one upload: ${JSON.stringify(report.requests.tus.slice(before))}`);
  const patchFrom = Number(after.find((r) => r.method === 'PATCH' && Number(r.offset) > 0)?.offset);
  const size = readFileSync(scenario.clips.large).length;
  const from = Math.round((100 * patchFrom) / size);
  expect(from >= 10 && from < 100, `resumed from the node's offset, not from the start: ${JSON.stringify(after)}`);
  report.resumed = { from, offset: patchFrom, size };
  step(`a reload mid-upload resumed it at ${from} % (byte ${patchFrom} of ${size})`);

  // --- Everyone: the video plays and seeks. ---
  await player.goto(`${base}/#/`);
  const card = player.getByRole('listitem').filter({ has: player.getByRole('heading', { name: scenario.title }) });
  await card.waitFor();
  expect(await player.locator('video').count() === 0, 'no video element before one is played');
  await check(player, 'inicio');
  await card.getByRole('button', { name: `Reproducir «${scenario.title}»` }).focus();
  await player.keyboard.press('Enter');
  await card.locator('video').waitFor();
  expect(await player.evaluate(() => document.activeElement.tagName) === 'VIDEO', 'the player takes the focus');
  const played = await card.locator('video').evaluate(async (video) => {
    const once = (name) => new Promise((resolve, reject) => {
      video.addEventListener(name, resolve, { once: true });
      video.addEventListener('error', () => reject(new Error(`media error ${video.error?.code}`)), { once: true });
    });
    video.muted = true;
    if (video.readyState < 1) await once('loadedmetadata');
    const { preload } = video;
    await video.play();
    video.currentTime = 10;
    await once('seeked');
    await new Promise((resolve) => setTimeout(resolve, 500));
    return { preload, duration: video.duration, currentTime: video.currentTime, readyState: video.readyState };
  });
  expect(played.preload === 'none', 'the player was created with preload="none"');
  expect(played.currentTime >= 10 && played.readyState >= 2, `seeked to 10 s: ${JSON.stringify(played)}`);
  report.played = played;
  step(`the video played and seeked to ${played.currentTime.toFixed(1)} s`);

  // --- A fan votes once; the ranking shows it; a later attempt is refused in words. ---
  const voter = await tab();
  await signUp(voter, fan);
  await logIn(voter, fan);
  await voter.goto(`${base}/#/`);
  const vcard = voter.getByRole('listitem').filter({ has: voter.getByRole('heading', { name: scenario.title }) });
  await vcard.getByRole('button', { name: 'Votar' }).click();
  await vcard.getByRole('status').filter({ hasText: 'Voto registrado.' }).waitFor();
  await vcard.getByText('1 voto', { exact: true }).waitFor();
  await vcard.getByRole('button', { name: '✓ Votado' }).waitFor();
  await voter.goto(`${base}/#/clasificacion?ciudad=${encodeURIComponent(scenario.city_query)}`);
  await voter.reload();
  const table = voter.getByRole('table');
  const headers = (await table.getByRole('columnheader').allTextContents()).map((t) => t.trim());
  expect(JSON.stringify(headers) === JSON.stringify(['Posición', 'Jugador', 'Ciudad', 'Votos']), `headers ${headers}`);
  const row = table.getByRole('row').filter({ hasText: `${star.first} ${star.last}` });
  await row.waitFor();
  const cells = (await row.getByRole('cell').allTextContents()).map((t) => t.trim());
  expect(cells[0] === '1' && cells[2] === star.city && cells[3] === '1', `the ranking row ${cells}`);
  expect(await voter.getByLabel('Filtrar por ciudad').inputValue() === scenario.city_query, 'the filter survives the reload');
  await check(voter, 'clasificacion');
  step(`a fan voted; the ranking filtered by "${scenario.city_query}" shows ${cells.join(' | ')}`);

  // Keyboard only: the log-in form takes the focus, Tab moves through it in order, Enter sends.
  const again = await tab();
  await again.goto(`${base}/#/entrar`);
  await again.getByRole('heading', { name: 'Iniciar sesión' }).waitFor();
  expect(await again.evaluate(() => document.activeElement.id) === 'email', 'the focus starts in the e-mail field');
  await again.keyboard.type(fan.email);
  await again.keyboard.press('Tab');
  expect(await again.evaluate(() => document.activeElement.id) === 'password', 'Tab leads to the password');
  await again.keyboard.type(fan.password);
  await again.keyboard.press('Enter');
  await again.getByRole('heading', { name: 'Mis videos' }).waitFor();
  expect(await again.evaluate(() => document.activeElement.tagName) === 'H1', 'the new view\'s heading has the focus');
  await again.goto(`${base}/#/`);
  const acard = again.getByRole('listitem').filter({ has: again.getByRole('heading', { name: scenario.title }) });
  await acard.getByRole('button', { name: 'Votar' }).click();
  await acard.getByRole('status').filter({ hasText: 'Ya has votado por este video.' }).waitFor();
  await acard.getByText('1 voto', { exact: true }).waitFor();
  step('a second vote by the same fan was refused in words');

  // --- An operator: five running actors, a fault and its restart, dead letters re-driven. ---
  const ops = await tab();
  await ops.goto(`${base}/#/operaciones`);
  await ops.getByLabel('Token de administración').waitFor();
  await check(ops, 'operaciones-acceso');
  await ops.getByLabel('Token de administración').fill('no-es-el-token');
  await ops.getByRole('button', { name: 'Abrir panel' }).click();
  await ops.getByRole('alert').waitFor();
  await ops.getByLabel('Token de administración').fill(scenario.admin_token);
  await ops.getByRole('button', { name: 'Abrir panel' }).click();
  const running = ops.locator('tr[data-actor] [data-state="running"]');
  await ops.waitForFunction(() => document.querySelectorAll('tr[data-actor] [data-state="running"]').length === 5);
  expect(await running.count() === 5, 'five running actors');
  await ops.locator('figure.chart').first().waitFor();
  await ops.waitForTimeout(4500); // a few samples for the charts
  await check(ops, 'operaciones');
  await ops.getByRole('button', { name: 'Provocar fallo en streamer' }).click();
  const restarts = ops.locator('tr[data-actor="streamer"] td').nth(1);
  await ops.waitForFunction(() => document.querySelector('tr[data-actor="streamer"] td:nth-of-type(2)')?.textContent === '1', null, { timeout: 20000 });
  await ops.locator('tr[data-actor="streamer"] [data-state="running"]').waitFor({ timeout: 20000 });
  step(`an injected fault was seen restarted (restarts: ${await restarts.textContent()})`);

  // Two uploads whose transcodes crash are dead-lettered; the player deletes one, sees the
  // other fail with its reason, and the operator re-drives it once the fault is gone.
  await admin('/api/admin/faults', { transcode_child: 'crash' });
  await player.goto(`${base}/#/mis-videos`);
  for (const title of [scenario.failing_title, scenario.deleted_title]) {
    await upload(player, title, scenario.clips.valid);
    await player.getByRole('status').filter({ hasText: 'Video subido exitosamente' }).waitFor({ timeout: 30000 });
  }
  for (const title of [scenario.failing_title, scenario.deleted_title]) {
    await mine(player, title).getByText('Falló:').waitFor({ timeout: 90000 });
  }
  const failed = (await mine(player, scenario.failing_title).locator('.state').textContent()).trim();
  step(`the player sees "${failed}"`);
  await mine(player, scenario.deleted_title).getByRole('button', { name: 'Eliminar' }).click();
  await player.getByRole('status').filter({ hasText: 'El video ha sido eliminado exitosamente.' }).first().waitFor();
  await mine(player, scenario.deleted_title).waitFor({ state: 'detached' });
  step('the player deleted an unpublished video');
  await admin('/api/admin/faults', {});
  const redrive = ops.getByRole('button', { name: new RegExp(`^Reencolar video \\d+$`) });
  await ops.waitForFunction(() => [...document.querySelectorAll('button')].some((b) => /^Reencolar video \d+$/.test(b.getAttribute('aria-label') || '')), null, { timeout: 20000 });
  const label = await redrive.first().getAttribute('aria-label');
  await redrive.first().click();
  await ops.getByRole('status').filter({ hasText: 'volvió a la cola' }).waitFor();
  await ops.getByRole('button', { name: label, exact: true }).waitFor({ state: 'detached' });
  await mine(player, scenario.failing_title).getByText('Publicado').waitFor({ timeout: 180000 });
  step(`the operator re-drove (${label}) and the video was published`);

  await player.getByRole('button', { name: 'Cerrar sesión' }).click();
  await player.getByRole('link', { name: 'Entrar' }).waitFor();
  await check(player, 'inicio-sin-sesion');
  step('the player logged out');
  // Deep links survive a reload, signed out: a private view sends to the log-in and back.
  await player.goto(`${base}/#/mis-videos`);
  await player.getByRole('heading', { name: 'Iniciar sesión' }).waitFor();
  expect(player.url().endsWith('#/entrar?volver=mis-videos'), `redirected to log in: ${player.url()}`);
} catch (error) {
  report.error = String(error.stack || error);
} finally {
  await browser.close();
}
writeFileSync(`${out}/report.json`, JSON.stringify(report, null, 2));
console.log(JSON.stringify(report));
if (report.error) process.exit(1);
