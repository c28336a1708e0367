#!/usr/bin/python3
"""Reference renderer for Hugging Face chat templates, used by tests/engine/chat/chat_template_test.cc.

Renders a Jinja chat template the way transformers' apply_chat_template does: an
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension, a
`{% generation %}` block that renders its body, the `raise_exception` and `strftime_now` globals
and transformers' `tojson` filter (ensure_ascii=False). Needs jinja2 (Debian: python3-jinja2, so
run it with /usr/bin/python3).

Input (stdin, JSON), either one request:
  {"template": "...", "messages": [{"role": "user", "content": "hi"}, ...],
   "add_generation_prompt": true, "vars": {"bos_token": "<s>", "enable_thinking": false}}
which prints the rendering to stdout as raw UTF-8 and exits 0 (on a template error: the message
on stderr, exit 1); or a batch:
  {"requests": [<request>, ...]}
which prints a JSON array with one {"ok": true, "text": "..."} or {"ok": false, "error": "..."}
per request, so a test can compare hundreds of conversations with one interpreter start.
Keys of "vars" are passed to the template like transformers passes the tokenizer's special tokens
and extra apply_chat_template kwargs; a key absent from "vars" is undefined in the template.
"""

import json
import sys
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationBlock(Extension):
    """transformers' AssistantTracker without the tracking: {% generation %} renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, cache, request):
    source = request["template"]
    if source not in cache:
        cache[source] = env.from_string(source)
    kwargs = dict(request.get("vars", {}))
    return cache[source].render(messages=request["messages"], tools=None, documents=None,
                                add_generation_prompt=bool(request.get("add_generation_prompt")),
                                **kwargs)


def main():
    request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    env = make_env()
    cache = {}
    if "requests" in request:
        results = []
        for r in request["requests"]:
            try:
                results.append({"ok": True, "text": render(env, cache, r)})
            except Exception as e:  # noqa: BLE001 -- any failure is "the template raised"
                results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
        sys.stdout.buffer.write(json.dumps(results, ensure_ascii=False).encode("utf-8"))
        return 0
    try:
        text = render(env, cache, request)
    except Exception as e:  # noqa: BLE001
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        return 1
    sys.stdout.buffer.write(text.encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
