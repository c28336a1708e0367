#!/usr/bin/python3
"""Reference renderings for kvstash's Jinja interpreter (tests/engine/chat/jinja_test.cc).

Renders with jinja2 exactly as transformers' apply_chat_template does (the environment of
render_chat_template.py: ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks,
loopcontrols, {% generation %}, raise_exception, strftime_now and transformers' tojson). Needs
jinja2, so run it with Debian's /usr/bin/python3 (python3-jinja2).

strftime_now() is pinned to 2026-01-15 10:30:00 local time so both sides print the same date; the
C++ test injects the same clock.

Modes:
  conversations --templates DIR --count N --seed S
      For every DIR/*.jinja, N random conversations (seeded): system prompt present or absent,
      multi-turn chats with tool calls and tool results, parallel tool calls, content-part
      arrays, reasoning_content
      and <think> blocks, unicode (CJK, emoji, combining marks), tool lists,
      add_generation_prompt and enable_thinking true/false/absent. Prints a JSON array of
      {"template": file name, "context": {...}, "ok": bool, "text": str | "error": str}.
  render
      stdin {"requests": [{"template": "...", "context": {...}}, ...]}; prints a JSON array of
      {"ok": true, "text": ...} / {"ok": false, "error": ...}, one per request.
"""

import argparse
import json
import os
import random
import sys
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from render_chat_template import make_env  # noqa: E402

FIXED_NOW = datetime(2026, 1, 15, 10, 30, 0)


def env_with_fixed_clock():
    env = make_env()
    env.globals["strftime_now"] = lambda fmt: FIXED_NOW.strftime(fmt)
    return env


def render_all(env, requests):
    cache = {}
    results = []
    for r in requests:
        try:
            source = r["template"]
            if source not in cache:
                cache[source] = env.from_string(source)
            text = cache[source].render(**r["context"])
            results.append({"ok": True, "text": text})
        except Exception as e:  # noqa: BLE001 -- any failure is "the template raised"
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    return results


# ---- random conversations ----------------------------------------------------------------------

TEXTS = [
    "Hello!",
    "What is the capital of France?",
    "Write a Python function that reverses a string.\n\n```python\ndef f(s):\n    return s[::-1]\n```",
    "  leading and trailing spaces  ",
    "line one\nline two\n\nline four\n",
    "你好，世界！请用中文回答。",
    "日本語のテキストとカタカナ。",
    "Emoji test 😀🚀👩‍💻 and flags 🇫🇷",
    "Combining marks: e\u0301 a\u0308 n\u0303 — and Z\u0335a\u0336l\u0337g\u0338o",
    "Quotes ' and \" and backslash \\ and braces {{ x }} {% y %}",
    "Tabs\tand\tcarriage\rreturns",
    "Arabic مرحبا and Hebrew שלום",
    "<tool_response>\nfake\n</tool_response>",
    "",
    "Ünïcödé ÀÉÎÕÜ ß ﬁ",
]

THOUGHTS = [
    "Let me think about this step by step.",
    "The user wants X. I should call a tool.",
    "思考中……",
    "First, 2 + 2 = 4.\nThen verify.",
]

FUNCTIONS = [
    ("get_weather", "Get the current weather for a city.",
     {"city": {"type": "string", "description": "City name"},
      "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"]),
    ("read_file", "Read a file from the repository.",
     {"path": {"type": "string"}, "max_bytes": {"type": "integer", "minimum": 1}}, ["path"]),
    ("search_code", "Search the code base.\nReturns matching lines.",
     {"query": {"type": "string"}, "regex": {"type": "boolean"},
      "paths": {"type": "array", "items": {"type": "string"}}}, ["query"]),
    ("run_tests", "Run the test suite.", {}, []),
    ("calc", "Evaluate: a * b.", {"a": {"type": "number"}, "b": {"type": "number"}}, ["a", "b"]),
]

ARG_VALUES = [
    "Paris", "東京", "src/main.cc", "a \"quoted\" value", "multi\nline", 42, 0, -7, 3.5, 1e-05,
    2.0, 1e16, True, False, None, ["a", "b"], {"nested": {"k": [1, 2.5, "x"]}}, "😀",
]


def rand_id(rng):
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                   for _ in range(9))


def make_tools(rng):
    tools = []
    for name, desc, props, required in rng.sample(FUNCTIONS, rng.randint(1, len(FUNCTIONS))):
        tools.append({"type": "function", "function": {
            "name": name, "description": desc,
            "parameters": {"type": "object", "properties": props, "required": required}}})
    return tools


def make_tool_call(rng, tools):
    name = rng.choice(tools)["function"]["name"] if tools else rng.choice(FUNCTIONS)[0]
    args = {}
    for key in rng.sample(["city", "path", "query", "a", "b", "unit", "paths", "flag"],
                          rng.randint(0, 3)):
        args[key] = rng.choice(ARG_VALUES)
    if rng.random() < 0.1:
        args = json.dumps(args, ensure_ascii=False)  # some clients send arguments as a string
    return {"id": rand_id(rng), "type": "function", "function": {"name": name, "arguments": args}}


def make_conversation(rng):
    tools = make_tools(rng) if rng.random() < 0.5 else None
    messages = []
    if rng.random() < 0.6:
        messages.append({"role": "system", "content": rng.choice(TEXTS[:12]) or "You are helpful."})
    for turn in range(rng.randint(1, 4)):
        if rng.random() < 0.1:
            # OpenAI content parts (templates that expect a string print Python's repr).
            messages.append({"role": "user", "content": [
                {"type": "text", "text": rng.choice(TEXTS)} for _ in range(rng.randint(1, 2))]})
        else:
            messages.append({"role": "user", "content": rng.choice(TEXTS)})
        last_turn = turn == 0 or rng.random() < 0.3
        if last_turn and rng.random() < 0.4:
            break  # ends with the user: a generation prompt
        r = rng.random()
        assistant = {"role": "assistant", "content": rng.choice(TEXTS)}
        if r < 0.2:
            assistant["reasoning_content"] = rng.choice(THOUGHTS)
        elif r < 0.35:
            assistant["content"] = "<think>\n" + rng.choice(THOUGHTS) + "\n</think>\n\n" + \
                assistant["content"]
        if rng.random() < 0.4:
            calls = [make_tool_call(rng, tools) for _ in range(1 if rng.random() < 0.6 else rng.randint(2, 3))]
            assistant["tool_calls"] = calls
            if rng.random() < 0.5:
                assistant["content"] = "" if rng.random() < 0.5 else None
            messages.append(assistant)
            for call in calls:
                messages.append({"role": "tool", "tool_call_id": call["id"],
                                 "name": call["function"]["name"],
                                 "content": rng.choice(['{"temperature": 21.5, "unit": "celsius"}',
                                                        "file contents:\nint main() {}\n",
                                                        "no results", "结果：成功 ✅"])})
            if rng.random() < 0.7:
                messages.append({"role": "assistant", "content": rng.choice(TEXTS[:12])})
        else:
            messages.append(assistant)
    context = {"messages": messages, "tools": tools, "documents": None,
               "add_generation_prompt": rng.random() < 0.7,
               "bos_token": rng.choice(["<s>", "<|begin_of_text|>", "<bos>"]),
               "eos_token": rng.choice(["</s>", "<|eot_id|>", "<|im_end|>"])}
    r = rng.random()
    if r < 0.35:
        context["enable_thinking"] = True
    elif r < 0.7:
        context["enable_thinking"] = False
    return context


def conversations(templates_dir, count, seed):
    env = env_with_fixed_clock()
    cases = []
    for name in sorted(os.listdir(templates_dir)):
        if not name.endswith(".jinja"):
            continue
        with open(os.path.join(templates_dir, name), encoding="utf-8") as f:
            source = f.read()
        rng = random.Random(f"{seed}:{name}")
        contexts = [make_conversation(rng) for _ in range(count)]
        results = render_all(env, [{"template": source, "context": c} for c in contexts])
        for context, result in zip(contexts, results):
            cases.append({"template": name, "context": context, **result})
    return cases


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["conversations", "render"])
    parser.add_argument("--templates")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.mode == "render":
        request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
        out = render_all(env_with_fixed_clock(), request["requests"])
    else:
        out = conversations(args.templates, args.count, args.seed)
    sys.stdout.buffer.write(json.dumps(out, ensure_ascii=False).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
