// Uploads a file with tus-js-client under Node, as a third-party client of the node would:
// 8 MiB chunks, retries with backoff, resumption from the node's offset after a failure.
// Usage: node tus-upload.mjs <base-url> <token> <file> <title>
// Prints {"video_id": ..., "url": ..., "retries": ...}.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import * as tus from 'tus-js-client';

const [base, token, path, title] = process.argv.slice(2);
const file = readFileSync(path);
let videoId = null;
let retries = 0;
const upload = new tus.Upload(file, {
  endpoint: `${base}/api/uploads`,
  chunkSize: 8 * 1024 * 1024,
  retryDelays: [0, 300, 1000, 2000, 3000, 5000],
  metadata: { title, filename: basename(path) },
  headers: { Authorization: `Bearer ${token}` },
  onShouldRetry: (error, attempt, options) => {
    retries += 1;
    const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
    return status === 0 || status === 409 || status === 423 || status >= 500;
  },
  onAfterResponse: (_, response) => {
    const id = response.getHeader('Showcase-Video-Id');
    if (id) videoId = Number(id);
  },
  onSuccess: () => console.log(JSON.stringify({ video_id: videoId, url: upload.url, retries })),
  onError: (error) => {
    console.log(JSON.stringify({ error: String(error) }));
    process.exit(1);
  },
});
upload.start();
