// ANB Rising Stars Showcase: the web application for players, fans and operators.
// One module without dependencies. A hash router renders one view at a time into <main>, so
// every view has a link that survives a reload (#/clasificacion?ciudad=Cali&pagina=2).

const PAGE_SIZE = 24;
const RANKING_SIZE = 20;
const UPLOAD_RETRIES = 5;

// The node's upload policy, written into the page by the server from its configuration.
const POLICY = (() => {
  const data = document.body.dataset;
  return {
    maxBytes: Number(data.maxBytes),
    minDuration: Number(data.minDurationS),
    maxDuration: Number(data.maxDurationS),
    minShortSide: Number(data.minShortSide),
  };
})();

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** An element with attributes (`on*` are listeners, `text` its text) and children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'text') el.textContent = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  return el;
}

/** Tells screen readers what changed, once. */
function announce(text) {
  const region = document.getElementById('announcer');
  region.textContent = '';
  setTimeout(() => { region.textContent = text; }, 50);
}

/** A message box; `show(kind, text)` fills it, `clear()` empties it. Errors are alerts. */
function messageBox() {
  const el = h('div', { class: 'message', 'aria-live': 'polite' });
  return {
    el,
    show(kind, text, ...extra) {
      el.className = `message ${kind}`;
      el.setAttribute('role', kind === 'error' ? 'alert' : 'status');
      el.replaceChildren(text, ...extra);
    },
    clear() { el.className = 'message'; el.removeAttribute('role'); el.replaceChildren(); },
  };
}

function field(label, attrs, hint) {
  const id = attrs.id;
  const hintId = hint ? `${id}-hint` : null;
  const input = h('input', { ...attrs, 'aria-describedby': hintId });
  return {
    input,
    el: h('div', { class: 'field' },
      h('label', { for: id, text: label }), input,
      hint ? h('p', { class: 'hint', id: hintId, text: hint }) : null),
  };
}

const number = new Intl.NumberFormat('es');
const dateTime = new Intl.DateTimeFormat('es', { dateStyle: 'medium', timeStyle: 'short' });
const votesText = (n) => `${number.format(n)} ${n === 1 ? 'voto' : 'votos'}`;
const when = (iso) => (iso ? dateTime.format(new Date(iso)) : '');
const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
});

function positiveInt(raw, fallback) {
  const n = Number(raw);
  return Number.isInteger(n) && n >= 1 ? n : fallback;
}

/** `#/path?query` from a path and the non-empty parameters. */
function link(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== '' && value !== null && value !== undefined) query.set(key, value);
  }
  const q = query.toString();
  return `#/${path}${q ? `?${q}` : ''}`;
}

// ---------------------------------------------------------------------------------------------
// Sessions: the player's token and the operator's token live as long as the tab.

const session = {
  get() {
    try {
      const s = JSON.parse(sessionStorage.getItem('showcase.session'));
      if (s && s.expiresAt > Date.now()) return s;
    } catch { /* nothing stored, or not ours */ }
    return null;
  },
  start(token, expiresIn, email) {
    const s = { token, email, expiresAt: Date.now() + expiresIn * 1000, voted: [] };
    sessionStorage.setItem('showcase.session', JSON.stringify(s));
  },
  voted(id) {
    const s = this.get();
    if (s && !s.voted.includes(id)) {
      s.voted.push(id);
      sessionStorage.setItem('showcase.session', JSON.stringify(s));
    }
  },
  end() { sessionStorage.removeItem('showcase.session'); },
};

const adminToken = {
  get: () => sessionStorage.getItem('showcase.admin') || '',
  set: (token) => sessionStorage.setItem('showcase.admin', token),
  clear: () => sessionStorage.removeItem('showcase.admin'),
};

/** A message shown once, by the next view (after a redirect). */
const flash = {
  set: (text) => sessionStorage.setItem('showcase.flash', text),
  take() {
    const text = sessionStorage.getItem('showcase.flash');
    sessionStorage.removeItem('showcase.flash');
    return text;
  },
};

// ---------------------------------------------------------------------------------------------
// The API: every error carries the server's `detail` and, when given, `Retry-After`.

class ApiError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

function retryAfterOf(headers) {
  const seconds = Number(headers.get('Retry-After'));
  return Number.isFinite(seconds) && seconds >= 0 ? Math.min(seconds, 120) : null;
}

const OFFLINE = 'No se pudo conectar con el servidor. Revisa tu conexión e inténtalo de nuevo.';

function errorOf(status, data, headers) {
  const detail = data && typeof data.detail === 'string'
    ? data.detail : `El servidor respondió con un error (${status}).`;
  return new ApiError(status, detail, retryAfterOf(headers));
}

/** Calls the API. `auth`: as the signed-in player; `admin`: with the operator's token. */
async function api(path, { method = 'GET', body, auth = false, admin = false, signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (auth) {
    const s = session.get();
    if (!s) throw new ApiError(401, 'Inicia sesión para continuar.');
    headers.Authorization = `Bearer ${s.token}`;
  }
  if (admin) headers.Authorization = `Bearer ${adminToken.get()}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, OFFLINE);
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    if (res.status === 401 && auth) sessionExpired();
    throw errorOf(res.status, data, res.headers);
  }
  return data;
}

function sessionExpired() {
  session.end();
  updateNav();
  flash.set('Tu sesión terminó. Inicia sesión de nuevo.');
}

// ---------------------------------------------------------------------------------------------
// Router

const VIEWS = {
  '': { title: 'Videos publicados', render: homeView },
  clasificacion: { title: 'Clasificación', render: rankingsView },
  registro: { title: 'Crear cuenta', render: signupView },
  entrar: { title: 'Iniciar sesión', render: loginView },
  'mis-videos': { title: 'Mis videos', render: myVideosView },
  operaciones: { title: 'Operaciones', render: operationsView },
};

let current = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  return { path: decodeURIComponent(path).replace(/\/+$/, ''), params: new URLSearchParams(query) };
}

function go(hash) {
  if (location.hash === hash) render(true);
  else location.hash = hash;
}

function updateNav(path = parseHash().path) {
  const signedIn = Boolean(session.get());
  for (const item of document.querySelectorAll('[data-for]')) {
    item.hidden = (item.dataset.for === 'player') !== signedIn;
  }
  for (const a of document.querySelectorAll('nav a[data-route]')) {
    if (a.dataset.route === path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

async function render(moveFocus) {
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const { path, params } = parseHash();
  const view = VIEWS[path];
  updateNav(path);
  const main = document.getElementById('main');
  const title = view ? view.title : 'Página no encontrada';
  document.title = `${title} · ANB Rising Stars Showcase`;
  const heading = h('h1', { tabindex: '-1', text: title });
  main.replaceChildren(heading);
  if (moveFocus) heading.focus();
  if (!view) {
    main.append(h('p', {}, 'Esta página no existe. ', h('a', { href: '#/', text: 'Volver a los videos' })));
    return;
  }
  try {
    await view.render(main, params, controller.signal, heading);
  } catch (error) {
    if (error.name !== 'AbortError') {
      const box = messageBox();
      main.append(box.el);
      box.show('error', error.detail || String(error));
    }
  }
}

window.addEventListener('hashchange', () => render(true));
// The skip link moves the focus to the view without touching the route in the hash.
document.querySelector('.skip').addEventListener('click', (event) => {
  event.preventDefault();
  document.getElementById('main').focus();
});
document.getElementById('logout').addEventListener('click', () => {
  session.end();
  announce('Sesión cerrada.');
  flash.set('Sesión cerrada.');
  go('#/');
});

// ---------------------------------------------------------------------------------------------
// Everyone: published videos

function pager(path, params, page, count, size) {
  const nav = h('nav', { class: 'pager', 'aria-label': 'Páginas' });
  if (page > 1) nav.append(h('a', { class: 'btn secondary', href: link(path, { ...params, pagina: page - 1 }), text: '← Anterior' }));
  if (page > 1 || count === size) nav.append(h('span', { class: 'meta', text: `Página ${page}` }));
  if (count === size) nav.append(h('a', { class: 'btn secondary', href: link(path, { ...params, pagina: page + 1 }), text: 'Siguiente →' }));
  return nav;
}

function cityFilter(path, city, label) {
  const input = field(label, { id: 'ciudad', name: 'ciudad', type: 'search', value: city, autocomplete: 'address-level2' });
  const form = h('form', { class: 'inline', role: 'search' }, input.el,
    h('button', { class: 'btn', type: 'submit', text: 'Filtrar' }),
    city ? h('a', { href: link(path), text: 'Ver todas las ciudades' }) : null);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    go(link(path, { ciudad: input.input.value.trim() }));
  });
  return form;
}

async function homeView(main, params, signal) {
  const page = positiveInt(params.get('pagina'), 1);
  const city = (params.get('ciudad') || '').trim();
  const flashed = flash.take();
  const box = messageBox();
  const list = h('ul', { class: 'cards skeleton', 'aria-busy': 'true', 'aria-label': 'Videos' });
  main.append(
    h('p', { class: 'lead', text: 'Los mejores videos de habilidades de los jugadores aficionados. Mira, vota y sigue la clasificación.' }),
    cityFilter('', city, 'Ciudad de los jugadores'), box.el, list);
  if (flashed) box.show('info', flashed);
  const query = new URLSearchParams({ page, limit: PAGE_SIZE });
  if (city) query.set('city', city);
  const videos = await api(`/api/public/videos?${query}`, { signal });
  list.classList.remove('skeleton');
  list.removeAttribute('aria-busy');
  if (videos.length === 0) {
    list.replaceWith(h('p', { class: 'empty', text: city ? `Aún no hay videos publicados de ${city}.` : 'Aún no hay videos publicados.' }));
    return;
  }
  list.replaceChildren(...videos.map((video, index) => videoCard(video, index)));
  main.append(pager('', { ciudad: city }, page, videos.length, PAGE_SIZE));
}

function videoCard(video, index) {
  const s = session.get();
  const titleId = `video-${video.video_id}-title`;
  const media = h('div', { class: 'media' });
  // The poster is an image until the video is played: lazy below the fold, and the video
  // element (preload="none") is only created on demand.
  const poster = h('img', {
    src: video.poster_url, alt: '', width: 1280, height: 720, decoding: 'async',
    loading: index < 4 ? 'eager' : 'lazy', fetchpriority: index === 0 ? 'high' : null,
  });
  const play = h('button', { type: 'button', class: 'play', 'aria-label': `Reproducir «${video.title}»` },
    poster, h('span', { class: 'play-icon', 'aria-hidden': 'true', text: '▶' }));
  play.addEventListener('click', () => {
    const player = h('video', {
      controls: true, preload: 'none', playsinline: true, poster: video.poster_url,
      src: video.processed_url, 'aria-labelledby': titleId,
    });
    media.replaceChildren(player);
    player.focus();
    player.play().catch(() => { /* the controls let the viewer start it */ });
  });
  media.append(play);

  const votes = h('span', { class: 'votes', text: votesText(video.votes) });
  const status = h('p', { class: 'vote-status', role: 'status' });
  const already = s && s.voted.includes(video.video_id);
  const button = h('button', {
    type: 'button', class: 'btn small', 'aria-describedby': titleId,
    'aria-pressed': already ? 'true' : 'false', text: already ? '✓ Votado' : 'Votar',
  });
  let busy = false;
  button.addEventListener('click', async () => {
    if (busy) return;
    if (!session.get()) {
      status.className = 'vote-status error';
      status.replaceChildren('Para votar, ', h('a', { href: link('entrar', { volver: location.hash.slice(2) }), text: 'inicia sesión' }), '.');
      return;
    }
    busy = true;
    button.setAttribute('aria-disabled', 'true');
    try {
      await api(`/api/public/videos/${video.video_id}/vote`, { method: 'POST', auth: true });
      video.votes += 1;
      votes.textContent = votesText(video.votes);
      status.className = 'vote-status ok';
      status.textContent = 'Voto registrado.';
      session.voted(video.video_id);
      button.textContent = '✓ Votado';
      button.setAttribute('aria-pressed', 'true');
    } catch (error) {
      status.className = 'vote-status error';
      status.textContent = error.retryAfter ? `${error.detail} Inténtalo en ${error.retryAfter} s.` : error.detail;
    } finally {
      busy = false;
      button.removeAttribute('aria-disabled');
    }
  });

  return h('li', { class: 'card' }, media,
    h('div', { class: 'card-body' },
      h('h2', { id: titleId, text: video.title }),
      h('p', { class: 'meta', text: `${video.owner_name} · ${video.owner_city}` }),
      h('div', { class: 'actions' }, votes, button),
      status));
}

// ---------------------------------------------------------------------------------------------
// Everyone: rankings

async function rankingsView(main, params, signal) {
  const page = positiveInt(params.get('pagina'), 1);
  const city = (params.get('ciudad') || '').trim();
  const box = messageBox();
  const body = h('tbody', {}, h('tr', {}, h('td', { colspan: 4, class: 'empty', text: 'Cargando…' })));
  const table = h('table', {},
    h('caption', { text: city ? `Jugadores de ${city}, por votos` : 'Jugadores, por votos' }),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col', class: 'num', text: 'Posición' }),
      h('th', { scope: 'col', text: 'Jugador' }),
      h('th', { scope: 'col', text: 'Ciudad' }),
      h('th', { scope: 'col', class: 'num', text: 'Votos' }))),
    body);
  const pages = h('div');
  main.append(
    h('p', { class: 'lead', text: 'Los jugadores con al menos un video publicado, ordenados por los votos que han recibido. Se actualiza sola.' }),
    h('section', { class: 'panel' }, cityFilter('clasificacion', city, 'Filtrar por ciudad'), box.el,
      h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Tabla de clasificación' }, table), pages));
  const query = new URLSearchParams({ page, limit: RANKING_SIZE });
  if (city) query.set('city', city);
  // Votes keep coming: the table refreshes while it is shown.
  while (!signal.aborted) {
    let rows;
    try {
      rows = await api(`/api/public/rankings?${query}`, { signal });
      box.clear();
    } catch (error) {
      if (error.name === 'AbortError') return;
      box.show('error', error.detail);
      rows = null;
    }
    if (rows) {
      body.replaceChildren(...(rows.length ? rows.map((r) => h('tr', {},
        h('td', { class: 'num', text: r.position }),
        h('td', { text: r.username }),
        h('td', { text: r.city }),
        h('td', { class: 'num', text: number.format(r.votes) }))) : [h('tr', {}, h('td', {
        colspan: 4, class: 'empty',
        text: city ? `Aún no hay jugadores clasificados en ${city}.` : 'Aún no hay jugadores clasificados.',
      }))]));
      pages.replaceChildren(pager('clasificacion', { ciudad: city }, page, rows.length, RANKING_SIZE));
    }
    await sleep(10000, signal);
  }
}

// ---------------------------------------------------------------------------------------------
// Players: sign up and log in

function submitting(form, button, busyText) {
  const idle = button.textContent;
  return {
    start() { button.setAttribute('aria-disabled', 'true'); button.textContent = busyText; form.setAttribute('aria-busy', 'true'); },
    stop() { button.removeAttribute('aria-disabled'); button.textContent = idle; form.removeAttribute('aria-busy'); },
    busy: () => form.getAttribute('aria-busy') === 'true',
  };
}

async function signupView(main) {
  if (session.get()) { go('#/mis-videos'); return; }
  const f = {
    first_name: field('Nombre', { id: 'first_name', required: true, maxlength: 100, autocomplete: 'given-name' }),
    last_name: field('Apellido', { id: 'last_name', required: true, maxlength: 100, autocomplete: 'family-name' }),
    email: field('Correo electrónico', { id: 'email', type: 'email', required: true, autocomplete: 'email' }),
    password1: field('Contraseña', { id: 'password1', type: 'password', required: true, minlength: 8, autocomplete: 'new-password' }, 'Al menos 8 caracteres.'),
    password2: field('Confirmar contraseña', { id: 'password2', type: 'password', required: true, minlength: 8, autocomplete: 'new-password' }),
    city: field('Ciudad', { id: 'city', required: true, maxlength: 100, autocomplete: 'address-level2' }),
    country: field('País', { id: 'country', required: true, maxlength: 100, autocomplete: 'country-name' }),
  };
  const box = messageBox();
  const button = h('button', { class: 'btn', type: 'submit', text: 'Crear cuenta' });
  const form = h('form', { class: 'stack panel', novalidate: true },
    h('div', { class: 'two' }, f.first_name.el, f.last_name.el), f.email.el,
    h('div', { class: 'two' }, f.password1.el, f.password2.el),
    h('div', { class: 'two' }, f.city.el, f.country.el), box.el, button,
    h('p', { class: 'hint' }, '¿Ya tienes cuenta? ', h('a', { href: '#/entrar', text: 'Inicia sesión' })));
  main.append(h('p', { class: 'lead', text: 'Crea tu cuenta de jugador para subir tus videos y votar por los de otros.' }), form);
  const state = submitting(form, button, 'Creando cuenta…');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (state.busy()) return;
    for (const { input } of Object.values(f)) input.removeAttribute('aria-invalid');
    const invalid = Object.values(f).find(({ input }) => !input.checkValidity());
    if (invalid) {
      invalid.input.setAttribute('aria-invalid', 'true');
      box.show('error', `Revisa el campo «${invalid.el.querySelector('label').textContent}»: ${invalid.input.validationMessage}`);
      invalid.input.focus();
      return;
    }
    if (f.password1.input.value !== f.password2.input.value) {
      f.password2.input.setAttribute('aria-invalid', 'true');
      box.show('error', 'Las contraseñas no coinciden.');
      f.password2.input.focus();
      return;
    }
    const body = Object.fromEntries(Object.entries(f).map(([key, { input }]) => [key, input.value.trim()]));
    body.password1 = f.password1.input.value;
    body.password2 = f.password2.input.value;
    state.start();
    try {
      await api('/api/auth/signup', { method: 'POST', body });
      flash.set(`Cuenta creada para ${body.email}. Ya puedes iniciar sesión.`);
      sessionStorage.setItem('showcase.email', body.email);
      go('#/entrar');
    } catch (error) {
      box.show('error', error.detail);
    } finally {
      state.stop();
    }
  });
  f.first_name.input.focus();
}

async function loginView(main, params) {
  const back = params.get('volver');
  const target = back && /^[a-z-]*(\?.*)?$/.test(back) ? `#/${back}` : '#/mis-videos';
  if (session.get()) { go(target); return; }
  const email = field('Correo electrónico', { id: 'email', type: 'email', required: true, autocomplete: 'username', value: sessionStorage.getItem('showcase.email') || '' });
  const password = field('Contraseña', { id: 'password', type: 'password', required: true, autocomplete: 'current-password' });
  const box = messageBox();
  const button = h('button', { class: 'btn', type: 'submit', text: 'Iniciar sesión' });
  const form = h('form', { class: 'stack panel', novalidate: true }, email.el, password.el, box.el, button,
    h('p', { class: 'hint' }, '¿No tienes cuenta? ', h('a', { href: '#/registro', text: 'Crea una' })));
  main.append(form);
  const flashed = flash.take();
  if (flashed) box.show('info', flashed);
  const state = submitting(form, button, 'Entrando…');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (state.busy()) return;
    if (!email.input.value.trim() || !password.input.value) {
      box.show('error', 'Escribe tu correo electrónico y tu contraseña.');
      (email.input.value.trim() ? password : email).input.focus();
      return;
    }
    state.start();
    try {
      const answer = await api('/api/auth/login', {
        method: 'POST', body: { email: email.input.value.trim(), password: password.input.value },
      });
      session.start(answer.access_token, answer.expires_in, email.input.value.trim());
      sessionStorage.setItem('showcase.email', email.input.value.trim());
      announce('Sesión iniciada.');
      go(target);
    } catch (error) {
      box.show('error', error.retryAfter ? `${error.detail} Inténtalo en ${error.retryAfter} s.` : error.detail);
      password.input.focus();
    } finally {
      state.stop();
    }
  });
  (email.input.value ? password : email).input.focus();
}

// ---------------------------------------------------------------------------------------------
// Players: their videos and uploads

const STATES = {
  uploaded: () => 'En cola',
  processing: (v) => `Procesando ${v.progress ?? 0} %`,
  processed: () => 'Publicado',
  failed: (v) => (v.error ? `Falló: ${v.error}` : 'Falló'),
};

/** Reads a file's duration and size in the browser; null when the browser cannot tell. */
function readMetadata(file) {
  return new Promise((resolve) => {
    const url = URL.createObjectURL(file);
    const video = document.createElement('video');
    let timer = null;
    const done = (result) => {
      clearTimeout(timer);
      video.removeAttribute('src');
      video.load();
      URL.revokeObjectURL(url);
      resolve(result);
    };
    timer = setTimeout(() => done(null), 5000);
    video.preload = 'metadata';
    video.muted = true;
    video.addEventListener('loadedmetadata', () => done(
      Number.isFinite(video.duration) && video.videoWidth > 0
        ? { duration: video.duration, width: video.videoWidth, height: video.videoHeight } : null));
    video.addEventListener('error', () => done(null));
    video.src = url;
  });
}

/** What the server's policy would say about this file, when the browser can tell already.
 * The words are the server's own. */
async function policyProblem(file) {
  if (file.size > POLICY.maxBytes) {
    return `El campo 'video_file' supera el tamaño máximo permitido de ${Math.floor(POLICY.maxBytes / 1048576)} MiB.`;
  }
  const meta = await readMetadata(file);
  if (!meta) return null;
  if (meta.duration < POLICY.minDuration || meta.duration > POLICY.maxDuration) {
    return `El video dura ${meta.duration.toFixed(1)} s; la duración debe estar entre ${POLICY.minDuration} y ${POLICY.maxDuration} segundos.`;
  }
  if (Math.min(meta.width, meta.height) < POLICY.minShortSide) {
    return `La resolución ${meta.width}x${meta.height} es insuficiente; el lado menor debe medir al menos ${POLICY.minShortSide} px.`;
  }
  return null;
}

const UPLOADED = 'Video subido exitosamente. Procesamiento en curso.';
let uploader = null;

/** tus-js-client (vendored), loaded on first use: watching videos does not need it. */
function loadUploader() {
  uploader ??= new Promise((resolve, reject) => {
    const script = h('script', { src: document.body.dataset.uploader });
    script.addEventListener('load', () => resolve(window.tus));
    script.addEventListener('error', () => {
      uploader = null;
      reject(new ApiError(0, 'No se pudo cargar el cargador de videos. Revisa tu conexión.'));
    });
    document.head.append(script);
  });
  return uploader;
}

/** Uploads this browser began and did not finish (tus keeps them in local storage). */
function unfinishedUploads() {
  const found = [];
  for (let i = 0; i < localStorage.length; i += 1) {
    const key = localStorage.key(i);
    if (!key || !key.startsWith('tus::')) continue;
    try {
      const { metadata } = JSON.parse(localStorage.getItem(key));
      if (metadata && metadata.title) found.push(metadata);
    } catch { /* not ours */ }
  }
  return found;
}

/** One resumable upload (tus 1.0): dropped connections are retried with backoff and resumed
 * from what the node holds, also after a reload (the upload's fingerprint is in local
 * storage). Resolves as the node answered: status, body and Retry-After; -1 when cancelled. */
async function send(title, file, onProgress, signal) {
  let tus;
  try {
    tus = await loadUploader();
  } catch (error) {
    return { status: 0, data: { detail: error.detail }, retryAfter: null };
  }
  return new Promise((resolve) => {
    let videoId = null;
    const upload = new tus.Upload(file, {
      endpoint: '/api/uploads',
      chunkSize: 8 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
      metadata: { title, filename: file.name },
      headers: { Authorization: `Bearer ${session.get()?.token ?? ''}` },
      removeFingerprintOnSuccess: true,
      onProgress: (sent, total) => onProgress(total ? sent / total : 0),
      onAfterResponse: (_, response) => {
        const id = response.getHeader('Showcase-Video-Id');
        if (id) videoId = Number(id);
      },
      // A busy node says when to come back: that wait is the form's to count down.
      onShouldRetry: (error) => {
        const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
        if (status === 503 || status === 429) return false;
        return status === 0 || status === 409 || status === 423 || status >= 500;
      },
      onSuccess: () => resolve({ status: 201, data: { message: UPLOADED, video_id: videoId }, retryAfter: null }),
      onError: (error) => {
        const response = error.originalResponse;
        if (!response) {
          resolve({ status: signal.aborted ? -1 : 0, data: null, retryAfter: null });
          return;
        }
        let data = null;
        try { data = JSON.parse(response.getBody()); } catch { /* not JSON */ }
        const retry = Number(response.getHeader('Retry-After'));
        resolve({
          status: response.getStatus(),
          data,
          retryAfter: Number.isFinite(retry) && retry > 0 ? Math.min(retry, 120) : null,
        });
      },
    });
    signal.addEventListener('abort', () => {
      // Cancelled by the player: the node forgets it. Left for another view: it can resume.
      upload.abort(signal.reason === 'cancel').catch(() => {});
      resolve({ status: -1, data: null, retryAfter: null });
    }, { once: true });
    upload.findPreviousUploads().then((previous) => {
      if (signal.aborted) return;
      if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
      upload.start();
    });
  });
}

async function myVideosView(main, params, signal) {
  if (!session.get()) {
    flash.set(flash.take() || 'Inicia sesión para ver tus videos.');
    go(link('entrar', { volver: 'mis-videos' }));
    return;
  }
  const flashed = flash.take();
  const list = h('ul', { class: 'mine', 'aria-label': 'Tus videos' });
  const listBox = messageBox();
  const upload = uploadForm(signal);
  main.append(h('div', { class: 'grid-2' },
    h('section', { class: 'panel', 'aria-labelledby': 'upload-title' },
      h('h2', { id: 'upload-title', text: 'Subir un video' }), upload),
    h('section', { class: 'panel', 'aria-labelledby': 'mine-title' },
      h('h2', { id: 'mine-title', text: 'Tus videos' }), listBox.el, list)));
  if (flashed) listBox.show('info', flashed);

  const items = new Map();
  const reasons = new Map();
  let wake = null;
  async function refresh() {
    const videos = await api('/api/videos', { auth: true, signal });
    // The list has no progress or failure reason: the detail route has both.
    const details = await Promise.all(videos.map((v) => (
      v.status === 'processing' || (v.status === 'failed' && !reasons.has(v.video_id))
        ? api(`/api/videos/${v.video_id}`, { auth: true, signal }).catch(() => null) : null)));
    videos.forEach((v, i) => {
      const detail = details[i];
      if (detail) {
        v.progress = detail.progress;
        if (detail.error) reasons.set(v.video_id, detail.error);
      }
      v.error = reasons.get(v.video_id);
    });
    showVideos(videos);
    return videos.some((v) => v.status === 'uploaded' || v.status === 'processing');
  }

  function showVideos(videos) {
    const seen = new Set();
    for (const v of videos) {
      seen.add(v.video_id);
      let item = items.get(v.video_id);
      if (!item) {
        item = videoItem(v, () => remove(v));
        items.set(v.video_id, item);
      } else if (item.status !== v.status) {
        announce(`«${v.title}»: ${STATES[v.status]?.(v) ?? v.status}.`);
      }
      item.update(v);
      list.append(item.el);
    }
    for (const [id, item] of items) {
      if (!seen.has(id)) { item.el.remove(); items.delete(id); }
    }
    if (videos.length === 0) {
      listBox.show('info', 'Aún no has subido videos. Sube el primero con el formulario.');
    } else if (listBox.el.classList.contains('info') && !flashed) {
      listBox.clear();
    }
  }

  async function remove(v) {
    if (!window.confirm(`¿Eliminar «${v.title}»? No se puede deshacer.`)) return;
    try {
      const answer = await api(`/api/videos/${v.video_id}`, { method: 'DELETE', auth: true, signal });
      listBox.show('ok', answer.message);
      announce(answer.message);
      items.get(v.video_id)?.el.remove();
      items.delete(v.video_id);
      document.getElementById('mine-title').setAttribute('tabindex', '-1');
      document.getElementById('mine-title').focus();
    } catch (error) {
      if (error.name !== 'AbortError') listBox.show('error', error.detail);
    }
  }

  // Statuses change by themselves: poll every second while something is on its way, every
  // fifteen otherwise (an upload from another tab shows up too).
  upload.addEventListener('uploaded', () => wake?.());
  while (!signal.aborted) {
    let pending = false;
    try {
      pending = await refresh();
    } catch (error) {
      if (error.name === 'AbortError') return;
      if (error.status === 401) { go(link('entrar', { volver: 'mis-videos' })); return; }
      listBox.show('error', error.detail);
    }
    const nap = new AbortController();
    wake = () => nap.abort();
    signal.addEventListener('abort', wake, { once: true });
    await sleep(pending ? 1000 : 15000, nap.signal);
  }
}

function videoItem(v, onDelete) {
  const titleId = `mine-${v.video_id}`;
  const state = h('p', { class: 'state' });
  const bar = h('progress', { max: 100, 'aria-labelledby': titleId });
  const actions = h('div', { class: 'item-actions' });
  const el = h('li', {}, h('h3', { id: titleId, text: v.title }), state,
    h('p', { class: 'when', text: `Subido: ${when(v.uploaded_at)}` }), actions);
  const item = {
    el,
    status: null,
    update(video) {
      state.className = `state ${video.status}`;
      state.textContent = STATES[video.status]?.(video) ?? video.status;
      if (video.status === 'processing') {
        bar.value = video.progress ?? 0;
        state.after(bar);
      } else {
        bar.remove();
      }
      if (item.status !== video.status) {
        actions.replaceChildren(video.status === 'processed'
          ? h('a', { class: 'btn secondary small', href: video.processed_url, target: '_blank', rel: 'noopener', text: 'Ver video', 'aria-describedby': titleId })
          : h('button', { type: 'button', class: 'btn danger small', text: 'Eliminar', 'aria-describedby': titleId, onclick: onDelete }));
      }
      item.status = video.status;
    },
  };
  return item;
}

function uploadForm(signal) {
  const title = field('Título', { id: 'title', required: true, maxlength: 255 });
  const fileHint = `MP4 de ${POLICY.minDuration} a ${POLICY.maxDuration} s, lado menor de al menos ${POLICY.minShortSide} px, hasta ${Math.floor(POLICY.maxBytes / 1048576)} MiB.`;
  const file = field('Archivo de video', { id: 'video_file', type: 'file', required: true, accept: 'video/mp4,.mp4' }, fileHint);
  const progress = h('progress', { id: 'upload-progress', max: 100, value: 0, 'aria-label': 'Progreso de la subida' });
  const percent = h('span', { class: 'meta', 'aria-hidden': 'true', text: '0 %' });
  const progressRow = h('div', { class: 'progress', hidden: true }, progress, percent);
  const box = messageBox();
  const button = h('button', { class: 'btn', type: 'submit', text: 'Subir video' });
  const cancel = h('button', { class: 'btn secondary', type: 'button', text: 'Cancelar', hidden: true });
  const form = h('form', { class: 'stack', novalidate: true }, title.el, file.el, progressRow, box.el,
    h('div', { class: 'toolbar' }, button, cancel));
  const state = submitting(form, button, 'Subiendo…');
  let attempt = null;
  const unfinished = unfinishedUploads();
  if (unfinished.length) {
    const titles = unfinished.map((m) => `«${m.title}»`).join(', ');
    box.show('info', `Tienes ${unfinished.length === 1 ? 'una subida' : `${unfinished.length} subidas`} sin terminar: ${titles}. Elige el mismo archivo y pulsa «Subir video» para continuar donde quedó.`);
  }
  loadUploader().catch(() => { /* reported when an upload needs it */ });
  cancel.addEventListener('click', () => attempt?.abort('cancel'));
  signal.addEventListener('abort', () => attempt?.abort());

  const setProgress = (fraction) => {
    const value = Math.round(fraction * 100);
    progress.value = value;
    percent.textContent = `${value} %`;
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (state.busy()) return;
    title.input.removeAttribute('aria-invalid');
    file.input.removeAttribute('aria-invalid');
    const name = title.input.value.trim();
    const chosen = file.input.files[0];
    if (!name) {
      title.input.setAttribute('aria-invalid', 'true');
      box.show('error', 'Escribe un título para el video.');
      title.input.focus();
      return;
    }
    if (!chosen) {
      file.input.setAttribute('aria-invalid', 'true');
      box.show('error', 'Elige el archivo de video que quieres subir.');
      file.input.focus();
      return;
    }
    state.start();
    box.show('info', 'Comprobando el archivo…');
    const problem = await policyProblem(chosen);
    if (problem) {
      state.stop();
      file.input.setAttribute('aria-invalid', 'true');
      box.show('error', problem);
      return;
    }
    attempt = new AbortController();
    cancel.hidden = false;
    progressRow.hidden = false;
    setProgress(0);
    try {
      for (let tries = 1; ; tries += 1) {
        box.show('info', 'Subiendo el video…');
        const answer = await send(name, chosen, setProgress, attempt.signal);
        if (answer.status === 201) {
          setProgress(1);
          box.show('ok', `${answer.data.message} Verás su estado en «Tus videos».`);
          form.reset();
          form.dispatchEvent(new Event('uploaded'));
          return;
        }
        if (answer.status === -1) {
          box.show('info', 'Subida cancelada.');
          return;
        }
        if (answer.status === 401) {
          sessionExpired();
          go(link('entrar', { volver: 'mis-videos' }));
          return;
        }
        const busy = answer.status === 503 || answer.status === 429;
        if (busy && answer.retryAfter !== null && tries <= UPLOAD_RETRIES) {
          // The node says when to come back: wait that long, counting down, then try again.
          for (let left = Math.max(1, Math.ceil(answer.retryAfter)); left > 0 && !attempt.signal.aborted; left -= 1) {
            box.show('info', `El servidor está ocupado. Se reintentará automáticamente en ${left} s (intento ${tries + 1} de ${UPLOAD_RETRIES + 1}).`);
            await sleep(1000, attempt.signal);
          }
          if (attempt.signal.aborted) { box.show('info', 'Subida cancelada.'); return; }
          continue;
        }
        progressRow.hidden = true;
        box.show('error', answer.status === 0 ? OFFLINE
          : (answer.data && answer.data.detail) || `El servidor respondió con un error (${answer.status}).`);
        return;
      }
    } finally {
      cancel.hidden = true;
      attempt = null;
      state.stop();
    }
  });
  return form;
}

// ---------------------------------------------------------------------------------------------
// Operators

const ACTOR_STATES = {
  running: 'En marcha', starting: 'Arrancando', restarting: 'Reiniciando', stopped: 'Detenido', failed: 'Fallido',
};
const HISTORY_MS = 5 * 60 * 1000;
// Samples of /metrics, kept while the tab lives so that the charts survive a change of view.
const samples = [];

function metric(text, name) {
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name) && (line[name.length] === ' ' || line[name.length] === '{')) {
      const value = Number(line.slice(line.lastIndexOf(' ') + 1));
      if (Number.isFinite(value)) total += value;
    }
  }
  return total;
}

function gib(bytes) {
  return `${(bytes / 1073741824).toLocaleString('es', { maximumFractionDigits: 1 })} GiB`;
}

async function operationsView(main, params, signal) {
  if (!adminToken.get()) { adminLogin(main); return; }
  const box = messageBox();
  const node = h('dl', { class: 'stats' });
  const queue = h('dl', { class: 'stats' });
  const actorsBody = h('tbody');
  const deadBody = h('tbody');
  const charts = h('div', { class: 'charts' });
  const redriveAll = h('button', { type: 'button', class: 'btn small', text: 'Reencolar todos' });
  const forget = h('button', { type: 'button', class: 'btn secondary small', text: 'Cerrar panel' });
  let faultsEnabled = false;
  const actorHead = h('tr', {}, ...['Actor', 'Estado', 'Reinicios', 'Último fallo', 'Buzón', 'En curso', 'Latido']
    .map((name) => h('th', { scope: 'col', text: name })));
  main.append(
    h('div', { class: 'toolbar' }, h('p', { class: 'lead', text: 'El estado de este nodo, actualizado cada dos segundos.' }), forget),
    box.el,
    h('section', { class: 'panel', 'aria-labelledby': 'node-title' }, h('h2', { id: 'node-title', text: 'Nodo' }), node),
    h('section', { class: 'panel', 'aria-labelledby': 'actors-title' }, h('h2', { id: 'actors-title', text: 'Actores' }),
      h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Tabla de actores' },
        h('table', {}, h('thead', {}, actorHead), actorsBody))),
    h('section', { class: 'panel', 'aria-labelledby': 'queue-title' }, h('h2', { id: 'queue-title', text: 'Cola de procesamiento' }), queue),
    h('section', { class: 'panel', 'aria-labelledby': 'dead-title' },
      h('div', { class: 'toolbar' }, h('h2', { id: 'dead-title', text: 'Trabajos fallidos' }), redriveAll),
      h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Tabla de trabajos fallidos' }, h('table', {},
        h('thead', {}, h('tr', {}, ...['Video', 'Motivo', 'Intentos', 'Fallido', 'Acción'].map((name) => h('th', { scope: 'col', text: name })))),
        deadBody))),
    h('section', { class: 'panel', 'aria-labelledby': 'charts-title' }, h('h2', { id: 'charts-title', text: 'Actividad de los últimos 5 minutos' }), charts));

  forget.addEventListener('click', () => { adminToken.clear(); announce('Panel cerrado.'); go('#/operaciones'); });
  redriveAll.addEventListener('click', async () => {
    try {
      const answer = await api('/api/admin/dead-letters/redrive', { method: 'POST', admin: true });
      box.show('ok', `${answer.redriven} trabajos reencolados.`);
      await refresh();
    } catch (error) { box.show('error', error.detail); }
  });
  try {
    await api('/api/admin/faults', { admin: true, signal });
    faultsEnabled = true;
    actorHead.append(h('th', { scope: 'col', text: 'Pruebas' }));
  } catch (error) {
    if (error.name === 'AbortError') return;
    if (error.status === 401) { adminToken.clear(); adminLogin(main, error.detail); return; }
  }

  const stat = (dl, label, value) => dl.append(h('div', {}, h('dt', { text: label }), h('dd', { text: value })));

  async function refresh() {
    const [report, dead, ready, metrics] = await Promise.all([
      api('/api/health/actors', { signal }),
      api('/api/admin/dead-letters', { admin: true, signal }),
      fetch('/api/health/ready', { signal }).then(async (r) => ({ ok: r.ok, body: await r.json().catch(() => ({})) })),
      fetch('/metrics', { signal }).then((r) => r.text()),
    ]);
    node.replaceChildren();
    stat(node, 'Preparado', ready.ok ? 'Sí' : `No: ${ready.body.detail || ready.body.reason || ready.body.status || ''}`);
    stat(node, 'Rol', report.role);
    stat(node, 'Versión', report.version);
    stat(node, 'En marcha desde hace', `${number.format(Math.round(report.uptime_s / 60))} min`);
    stat(node, 'Nodos api / worker', `${report.nodes.api} / ${report.nodes.worker}`);
    stat(node, 'Disco libre', `${gib(report.disk.free_bytes)} (mínimo ${gib(report.disk.min_free_bytes)})`);
    queue.replaceChildren();
    stat(queue, 'En espera', number.format(report.queue.depth));
    stat(queue, 'En curso', number.format(report.queue.in_flight));
    stat(queue, 'Fallidos', number.format(report.queue.dead));
    stat(queue, 'Reproducciones activas', number.format(report.streams.active));

    actorsBody.replaceChildren(...report.actors.map((a) => {
      const row = h('tr', { 'data-actor': a.name },
        h('th', { scope: 'row', text: a.name }),
        h('td', {}, h('span', { class: `badge ${a.state}`, 'data-state': a.state, text: ACTOR_STATES[a.state] || a.state })),
        h('td', { class: 'num', text: a.restarts }),
        h('td', { text: a.last_failure ? `${when(a.last_failure.at)}: ${a.last_failure.reason}` : '—' }),
        h('td', { class: 'num', text: `${a.mailbox_depth} / ${a.mailbox_capacity}` }),
        h('td', { class: 'num', text: a.in_flight }),
        h('td', { class: 'num', text: a.heartbeat_age_ms === null ? '—' : `${number.format(a.heartbeat_age_ms)} ms` }));
      if (faultsEnabled) {
        row.append(h('td', {}, a.name === 'supervisor' ? '—' : h('button', {
          type: 'button', class: 'btn danger small', text: 'Provocar fallo', 'aria-label': `Provocar fallo en ${a.name}`,
          onclick: () => injectFault(a.name),
        })));
      }
      return row;
    }));

    deadBody.replaceChildren(...(dead.length ? dead.map((d) => h('tr', {},
      h('td', { class: 'num', text: d.video_id }),
      h('td', { text: d.reason }),
      h('td', { class: 'num', text: d.receive_count }),
      h('td', { text: when(d.dead_at) }),
      h('td', {}, h('button', {
        type: 'button', class: 'btn small', text: 'Reencolar', 'aria-label': `Reencolar video ${d.video_id}`,
        onclick: () => redrive(d.video_id),
      })))) : [h('tr', {}, h('td', { colspan: 5, class: 'empty', text: 'No hay trabajos fallidos.' }))]));
    redriveAll.hidden = dead.length === 0;

    samples.push({
      at: Date.now(),
      requests: metric(metrics, 'showcase_http_requests_total'),
      refusals: metric(metrics, 'showcase_uploads_refused_total'),
      depth: metric(metrics, 'showcase_queue_depth'),
    });
    while (samples.length && samples[0].at < Date.now() - HISTORY_MS) samples.shift();
    drawCharts(charts);
  }

  async function redrive(id) {
    try {
      await api(`/api/admin/dead-letters/${id}/redrive`, { method: 'POST', admin: true });
      box.show('ok', `El video ${id} volvió a la cola.`);
      await refresh();
    } catch (error) { box.show('error', error.detail); }
  }

  async function injectFault(actor) {
    try {
      await api(`/api/admin/faults/actors/${actor}/panic`, { method: 'POST', admin: true });
      box.show('info', `Fallo provocado en ${actor}; el supervisor lo reinicia.`);
    } catch (error) { box.show('error', error.detail); }
  }

  while (!signal.aborted) {
    try {
      await refresh();
      if (box.el.textContent === OFFLINE) box.clear();
    } catch (error) {
      if (error.name === 'AbortError') return;
      if (error.status === 401) { adminToken.clear(); main.replaceChildren(main.querySelector('h1')); adminLogin(main, error.detail); return; }
      box.show('error', error.detail || OFFLINE);
    }
    await sleep(2000, signal);
  }
}

function adminLogin(main, problem) {
  const token = field('Token de administración', { id: 'admin-token', type: 'password', required: true, autocomplete: 'off' },
    'El token de administración de la configuración del nodo (admin.token).');
  const box = messageBox();
  const button = h('button', { class: 'btn', type: 'submit', text: 'Abrir panel' });
  const form = h('form', { class: 'stack panel', novalidate: true }, token.el, box.el, button);
  main.append(form);
  if (problem) box.show('error', problem);
  const state = submitting(form, button, 'Comprobando…');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (state.busy()) return;
    const given = token.input.value.trim();
    if (!given) { box.show('error', 'Escribe el token de administración.'); token.input.focus(); return; }
    state.start();
    adminToken.set(given);
    try {
      await api('/api/admin/dead-letters', { admin: true });
      announce('Panel de operaciones abierto.');
      render(true);
    } catch (error) {
      adminToken.clear();
      box.show('error', error.detail);
      token.input.focus();
    } finally {
      state.stop();
    }
  });
  token.input.focus();
}

/** Three small charts: request rate, upload refusals per second, queue depth. */
function drawCharts(container) {
  const rate = (key) => samples.slice(1).map((s, i) => {
    const before = samples[i];
    const seconds = (s.at - before.at) / 1000;
    // A counter that went down belongs to a restarted node: count from zero.
    const delta = s[key] >= before[key] ? s[key] - before[key] : s[key];
    return { at: s.at, value: seconds > 0 ? delta / seconds : 0 };
  });
  const series = [
    { title: 'Peticiones por segundo', points: rate('requests'), digits: 1 },
    { title: 'Subidas rechazadas por segundo', points: rate('refusals'), digits: 1 },
    { title: 'Trabajos en cola', points: samples.map((s) => ({ at: s.at, value: s.depth })), digits: 0 },
  ];
  container.replaceChildren(...series.map(({ title, points, digits }) => {
    const now = points.length ? points[points.length - 1].value : 0;
    const max = Math.max(1, ...points.map((p) => p.value));
    const format = (v) => v.toLocaleString('es', { maximumFractionDigits: digits });
    const chart = svg('svg', { viewBox: '0 0 300 80', preserveAspectRatio: 'none', role: 'img',
      'aria-label': `${title}: ahora ${format(now)}, máximo ${format(max)} en los últimos 5 minutos` });
    chart.append(svg('line', { x1: 0, y1: 79, x2: 300, y2: 79 }));
    const end = Date.now();
    const line = svg('polyline', { points: points.map((p) => {
      const x = 300 - ((end - p.at) / HISTORY_MS) * 300;
      const y = 78 - (p.value / max) * 74;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    }).join(' ') });
    chart.append(line);
    return h('figure', { class: 'chart' },
      h('figcaption', {}, h('span', { text: title }), h('strong', { text: format(now) })), chart);
  }));
}

render(false);
