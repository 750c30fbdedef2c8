"""Talks to a running Kotae with the official `openai` client (used by the server tests).

    python tests/openai_client.py http://127.0.0.1:8080
"""
import json
import sys

from openai import OpenAI

base = sys.argv[1].rstrip("/") + "/v1"
client = OpenAI(base_url=base, api_key="unused")
models = [m.id for m in client.models.list()]
assert "kotae" in models, models

question = "How do I reserve a meeting room?"
r = client.chat.completions.create(model="kotae", messages=[{"role": "user", "content": question}], max_tokens=48)
text = r.choices[0].message.content
assert text, r
extra = r.model_extra.get("kotae") or {}
sources = [c["source"] for c in extra.get("citations", [])]

chunks = list(
    client.chat.completions.create(
        model="kotae", messages=[{"role": "user", "content": question}], max_tokens=48, stream=True
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
print(json.dumps({"text": text, "streamed": streamed, "sources": sources, "finish": finish, "chunks": len(chunks)}))
