"""The official `openai` SDK against Sluice's Batch API, unchanged: upload, create,
retrieve until done, read the output file. Prints one JSON summary line.

Environment: OPENAI_BASE_URL (the Sluice API + /v1), OPENAI_API_KEY, BATCH_INPUT (path).
"""
import json
import os
import sys
import time

from openai import OpenAI

client = OpenAI()
with open(os.environ["BATCH_INPUT"], "rb") as f:
    uploaded = client.files.create(file=f, purpose="batch")
assert uploaded.purpose == "batch", uploaded
batch = client.batches.create(
    input_file_id=uploaded.id,
    endpoint="/v1/chat/completions",
    completion_window="24h",
    metadata={"source": "openai-python"},
)
deadline = time.time() + 120
while batch.status not in ("completed", "failed", "expired", "cancelled"):
    if time.time() > deadline:
        sys.exit(f"batch {batch.id} still {batch.status}")
    time.sleep(0.3)
    batch = client.batches.retrieve(batch.id)
if batch.status != "completed":
    sys.exit(f"batch ended {batch.status}: {batch.errors}")
text = client.files.content(batch.output_file_id).text
lines = [json.loads(l) for l in text.splitlines() if l.strip()]
print(json.dumps({
    "status": batch.status,
    "counts": batch.request_counts.model_dump(),
    "metadata": batch.metadata,
    "custom_ids": sorted(l["custom_id"] for l in lines),
    "contents": [l["response"]["body"]["choices"][0]["message"]["content"] for l in lines],
    "listed": [b.id for b in client.batches.list(limit=5).data],
    "batch_id": batch.id,
}))
