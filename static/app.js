const text = (tag, value, cls) => {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
};

async function loadVideos() {
  const box = document.getElementById('videos');
  const res = await fetch('/api/public/videos?limit=24');
  const videos = res.ok ? await res.json() : [];
  box.replaceChildren();
  if (videos.length === 0) {
    box.append(text('p', 'Aún no hay videos publicados.', 'muted'));
    return;
  }
  for (const v of videos) {
    const card = document.createElement('div');
    card.className = 'video';
    const player = document.createElement('video');
    player.controls = true;
    player.preload = 'none';
    player.src = v.processed_url;
    player.poster = v.poster_url;
    card.append(player, text('p', v.title),
      text('p', `${v.owner_name} · ${v.owner_city} · ${v.votes} votos`, 'muted'));
    box.append(card);
  }
}

async function loadRankings(city) {
  const body = document.getElementById('rankings');
  const query = new URLSearchParams({ limit: '20' });
  if (city) query.set('city', city);
  const res = await fetch('/api/public/rankings?' + query);
  const rows = res.ok ? await res.json() : [];
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    const td = text('td', 'Sin jugadores clasificados.', 'muted');
    td.colSpan = 4;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const r of rows) {
    const tr = document.createElement('tr');
    tr.append(text('td', r.position), text('td', r.username), text('td', r.city), text('td', r.votes));
    body.append(tr);
  }
}

document.getElementById('city-form').addEventListener('submit', (e) => {
  e.preventDefault();
  loadRankings(document.getElementById('city').value.trim());
});
loadVideos();
loadRankings('');
