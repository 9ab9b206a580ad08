"""Uploads a file with tuspy (the tus client of PyPI), as a third-party client would: 8 MiB
chunks, retries that ask the node for its offset and continue from there.

Usage: python tuspy_upload.py <base-url> <token> <file> <title>
Prints {"url": ..., "offset": ...}.
"""

import json
import os
import sys

from tusclient import client

base, token, path, title = sys.argv[1:5]
tus = client.TusClient(f"{base}/api/uploads", headers={"Authorization": f"Bearer {token}"})
uploader = tus.uploader(
    path,
    chunk_size=8 * 1024 * 1024,
    metadata={"title": title, "filename": os.path.basename(path)},
    retries=5,
    retry_delay=1,
)
uploader.upload()
print(json.dumps({"url": uploader.url, "offset": uploader.offset}))
