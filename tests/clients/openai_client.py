"""tests/clients/openai_client.py: drives a shoal node's API with the official `openai` Python
package (run by tests/tests/api_openai_python.rs in a venv it makes). Usage:
python openai_client.py BASE_URL. Prints one JSON line with what it saw; exits non-zero with
the reason when a check fails."""
import json
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base, api_key="unused")
seen = {}


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


# Completions, plain: greedy, usage.
model = client.models.list().data[0].id
c = client.completions.create(model=model, prompt="Hello ", max_tokens=12, temperature=0)
text = c.choices[0].text
check(c.object == "text_completion", f"object {c.object}")
check(c.usage is not None and c.usage.completion_tokens > 0, f"usage {c.usage}")
check(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, "usage sum")
seen["completion"] = text

# Completions, streamed: the same text; with include_usage the last chunk has usage.
chunks = list(client.completions.create(model=c.model, prompt="Hello ", max_tokens=12,
                                        temperature=0, stream=True,
                                        stream_options={"include_usage": True}))
streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
check(streamed == text, f"streamed {streamed!r} != {text!r}")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, "stream usage")

# A stop sequence from inside the text: the answer ends before it.
stop = next((ch for ch in text[2:] if ch != "\ufffd"), None)
if stop is not None:
    s = client.completions.create(model=c.model, prompt="Hello ", max_tokens=12,
                                  temperature=0, stop=[stop])
    check(s.choices[0].text == text[:text.index(stop)], f"stop {s.choices[0].text!r}")
    check(s.choices[0].finish_reason == "stop", f"finish {s.choices[0].finish_reason}")
    seen["stopped"] = s.choices[0].text

# Log-probabilities: one per generated token, with the alternatives asked for.
lp = client.completions.create(model=c.model, prompt="Hello ", max_tokens=12, temperature=0,
                               logprobs=2)
check(lp.choices[0].text == text, f"logprobs changed the text {lp.choices[0].text!r}")
check(len(lp.choices[0].logprobs.token_logprobs) == lp.usage.completion_tokens, "token_logprobs")
check(all(len(t) <= 2 for t in lp.choices[0].logprobs.top_logprobs), "top_logprobs")
seen["logprobs"] = lp.choices[0].logprobs.token_logprobs[:2]

# Chat, plain and streamed.
msgs = [{"role": "user", "content": "Hi"}]
r = client.chat.completions.create(model=c.model, messages=msgs, max_tokens=8, temperature=0)
check(r.choices[0].message.role == "assistant", "chat role")
reply = r.choices[0].message.content
deltas = client.chat.completions.create(model=c.model, messages=msgs, max_tokens=8,
                                        temperature=0, stream=True)
streamed_chat = "".join((d.choices[0].delta.content or "") for d in deltas if d.choices)
check(streamed_chat == reply, f"chat stream {streamed_chat!r} != {reply!r}")
seen["chat"] = reply
rl = client.chat.completions.create(model=c.model, messages=msgs, max_tokens=8, temperature=0,
                                    logprobs=True, top_logprobs=2)
check(rl.choices[0].message.content == reply, "chat logprobs changed the reply")
check(all(len(t.top_logprobs) == 2 for t in rl.choices[0].logprobs.content), "chat top_logprobs")

# An error: the client raises BadRequestError with the server's message.
try:
    client.completions.create(model=c.model, prompt=[999999999], max_tokens=2)
    check(False, "an out-of-vocabulary token was accepted")
except openai.BadRequestError as e:
    check("vocabulary" in str(e), f"error {e}")
    seen["error"] = e.status_code

print(json.dumps(seen))
