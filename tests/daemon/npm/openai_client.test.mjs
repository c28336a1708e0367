// End-to-end: the official `openai` npm package (pinned in package.json) against a real kvstashd
// serving the stories260K fixture. Run with `node --test` from this folder, or through CTest
// (daemon.npm_openai). Environment:
//   KVSTASHD          the daemon binary (default: <repo>/build/bin/kvstashd)
//   KVSTASH_FIXTURES  the folder holding stories260K.gguf (default: <repo>/../shared/models)
// Every path is resolved from this file, never from the working directory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..', '..');
const KVSTASHD = path.resolve(process.env.KVSTASHD || path.join(REPO, 'build', 'bin', 'kvstashd'));
const FIXTURES = path.resolve(process.env.KVSTASH_FIXTURES || path.join(REPO, '..', 'shared', 'models'));
const MODEL = path.join(FIXTURES, 'stories260K.gguf');
const MODEL_ID = 'stories260K';

const READY_TIMEOUT_MS = 60_000;
const EXIT_TIMEOUT_MS = 30_000;

// A long prompt (well over 64 tokens with the model's 512-token vocabulary) so that whole KV
// blocks (16 tokens by default) are cached after the first request.
const SENTENCE = 'Once upon a time there was a little girl named Lily who liked to play in the park. ';
const LONG_PROMPT = SENTENCE.repeat(4);
const CHAT_MESSAGES = [
  { role: 'system', content: 'You are a storyteller. You tell short, happy stories to children.' },
  { role: 'user', content: 'Tell me a story about a dog named Max and his red ball.' },
];

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Loads the SDK. A missing node_modules is a broken setup (scripts/test runs `npm ci`), so it fails.
async function loadOpenAI() {
  try {
    return (await import('openai')).default;
  } catch (err) {
    throw new Error(
      `cannot load the 'openai' package (${err.message}); run \`npm ci --prefix ${HERE}\` first`,
    );
  }
}

// Starts kvstashd on a free port; resolves once it printed its address.
function startDaemon(cacheDir) {
  const args = ['--port', '0', '--cache-dir', cacheDir, '-m', MODEL, '--log-level', 'warn',
    '--socket', 'none'];  // HTTP only; the default socket path is one per user
  const child = spawn(KVSTASHD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const daemon = { child, stdout: '', stderr: '', exit: null };
  daemon.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      daemon.exit = { code, signal };
      resolve(daemon.exit);
    });
  });
  child.stderr.setEncoding('utf8').on('data', (d) => (daemon.stderr += d));
  const listening = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.stdout.setEncoding('utf8').on('data', (d) => {
      daemon.stdout += d;
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(daemon.stdout);
      if (m) resolve(Number(m[1]));
    });
    daemon.exited.then((e) =>
      reject(new Error(`kvstashd exited before listening (${JSON.stringify(e)}):\n${daemon.stderr}`)),
    );
  });
  daemon.port = withTimeout(listening, READY_TIMEOUT_MS, 'kvstashd to print its port');
  return daemon;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Polls /health until 200 {"status":"ok"}; 503 {"status":"loading"} means keep waiting.
async function waitHealthy(base, daemon) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (daemon.exit) throw new Error(`kvstashd exited while loading: ${JSON.stringify(daemon.exit)}`);
    try {
      const res = await fetch(`${base}/health`);
      const body = await res.text();
      last = `${res.status} ${body}`;
      if (res.status === 200) {
        assert.equal(JSON.parse(body).status, 'ok');
        return;
      }
      assert.equal(res.status, 503, `unexpected /health answer: ${last}`);
    } catch (err) {
      if (err instanceof assert.AssertionError) throw err;
      last = err.message;
    }
    await sleep(100);
  }
  throw new Error(`kvstashd not healthy after ${READY_TIMEOUT_MS} ms (last: ${last})`);
}

function assertUsage(usage, what) {
  assert.ok(usage, `${what}: usage missing`);
  for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens']) {
    assert.equal(typeof usage[k], 'number', `${what}: usage.${k}`);
  }
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens, `${what}: total`);
  assert.ok(usage.prompt_tokens > 0, `${what}: prompt_tokens`);
  assert.ok(usage.completion_tokens > 0, `${what}: completion_tokens`);
  assert.equal(typeof usage.prompt_tokens_details?.cached_tokens, 'number', `${what}: cached_tokens`);
  const cached = usage.prompt_tokens_details.cached_tokens;
  assert.ok(cached >= 0 && cached <= usage.prompt_tokens, `${what}: cached_tokens ${cached}`);
  // kvstash's own breakdown: every prompt token was either found in a tier or prefilled.
  const kv = usage.kvstash;
  assert.ok(kv, `${what}: usage.kvstash missing`);
  for (const k of ['cached_tokens', 'device_tokens', 'host_tokens', 'disk_tokens', 'prefilled_tokens']) {
    assert.equal(typeof kv[k], 'number', `${what}: usage.kvstash.${k}`);
  }
  assert.equal(kv.cached_tokens, cached, `${what}: kvstash.cached_tokens vs cached_tokens`);
  assert.equal(kv.device_tokens + kv.host_tokens + kv.disk_tokens, cached, `${what}: tiers add up`);
  assert.equal(kv.prefilled_tokens + cached, usage.prompt_tokens, `${what}: prefilled + cached`);
  return cached;
}

test('kvstashd serves the official openai SDK', { timeout: 240_000 }, async (t) => {
  if (!existsSync(MODEL)) {
    const reason = `fixture ${MODEL} not found (set KVSTASH_FIXTURES to the folder holding stories260K.gguf)`;
    console.log(`kvstash: SKIPPED: ${reason}`);
    t.skip(reason);
    return;
  }
  assert.ok(existsSync(KVSTASHD), `kvstashd not found at ${KVSTASHD} (build it, or set KVSTASHD)`);
  // scripts/test leaves this file when `npm ci` could not reach the registry (e.g. a machine
  // behind a TLS-intercepting proxy whose CA it lacks): the SDK is absent, said loudly.
  const npmFailed = path.join(HERE, '.npm-ci-failed');
  if (!existsSync(path.join(HERE, 'node_modules', 'openai')) && existsSync(npmFailed)) {
    const reason = `npm ci could not install the openai SDK: ${readFileSync(npmFailed, 'utf8').trim()}`;
    console.log(`kvstash: SKIPPED: ${reason}`);
    t.skip(reason);
    return;
  }
  const OpenAI = await loadOpenAI();

  const cacheDir = await mkdtemp(path.join(tmpdir(), 'kvstash-npm-'));
  const daemon = startDaemon(cacheDir);
  try {
    const port = await daemon.port;
    const base = `http://127.0.0.1:${port}`;
    await waitHealthy(base, daemon);
    const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });

    const completionRequest = { model: MODEL_ID, prompt: LONG_PROMPT, max_tokens: 24, temperature: 0 };
    let completionText;

    await t.test('completions: non-stream, then the same request hits the prefix cache', async () => {
      const first = await client.completions.create(completionRequest);
      assert.equal(first.object, 'text_completion');
      assert.equal(first.model, MODEL_ID);
      assert.equal(first.choices.length, 1);
      completionText = first.choices[0].text;
      assert.ok(completionText.length > 0, 'empty completion text');
      assert.ok(['stop', 'length'].includes(first.choices[0].finish_reason), first.choices[0].finish_reason);
      assert.ok(first.usage.prompt_tokens >= 64, `prompt_tokens ${first.usage.prompt_tokens} < 64`);
      assert.equal(assertUsage(first.usage, 'first completion'), 0, 'first call of a new prompt was cached');

      const second = await client.completions.create(completionRequest);
      assert.ok(assertUsage(second.usage, 'second completion') > 0, 'repeat was not served from the cache');
      assert.equal(second.usage.prompt_tokens, first.usage.prompt_tokens);
      assert.equal(second.choices[0].text, completionText, 'greedy text changed on a cache hit');
      assert.equal(second.choices[0].finish_reason, first.choices[0].finish_reason);
    });

    await t.test('completions: stream with include_usage equals the non-stream text', async () => {
      const stream = await client.completions.create({
        ...completionRequest,
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      assert.ok(chunks.length >= 2, `only ${chunks.length} chunks`);
      const text = chunks.map((c) => c.choices.map((ch) => ch.text).join('')).join('');
      assert.equal(text, completionText);
      const reasons = chunks.flatMap((c) => c.choices.map((ch) => ch.finish_reason)).filter(Boolean);
      assert.equal(reasons.length, 1, `finish_reason chunks: ${JSON.stringify(reasons)}`);
      const last = chunks[chunks.length - 1];
      assert.deepEqual(last.choices, [], 'the usage chunk has choices []');
      assert.ok(assertUsage(last.usage, 'streamed completion') > 0, 'streamed repeat not cached');
      for (const c of chunks.slice(0, -1)) assert.ok(!c.usage, 'usage on a chunk before the last');
    });

    const chatRequest = { model: MODEL_ID, messages: CHAT_MESSAGES, max_tokens: 24, temperature: 0 };
    let chatContent;
    let chatFinish;

    await t.test('chat.completions: non-stream', async () => {
      const res = await client.chat.completions.create(chatRequest);
      assert.equal(res.object, 'chat.completion');
      assert.equal(res.model, MODEL_ID);
      assert.equal(res.choices.length, 1);
      const choice = res.choices[0];
      assert.equal(choice.message.role, 'assistant');
      chatContent = choice.message.content;
      assert.equal(typeof chatContent, 'string');
      assert.ok(chatContent.length > 0, 'empty chat content');
      chatFinish = choice.finish_reason;
      assert.ok(['stop', 'length'].includes(chatFinish), chatFinish);
      assertUsage(res.usage, 'chat');
    });

    await t.test('chat.completions: stream (for await) equals non-stream', async () => {
      const stream = await client.chat.completions.create({
        ...chatRequest,
        stream: true,
        stream_options: { include_usage: true },
      });
      let content = '';
      let finish = null;
      let role = null;
      let usage = null;
      for await (const chunk of stream) {
        assert.equal(chunk.object, 'chat.completion.chunk');
        for (const ch of chunk.choices) {
          if (ch.delta.role) role = ch.delta.role;
          content += ch.delta.content ?? '';
          if (ch.finish_reason) finish = ch.finish_reason;
        }
        if (chunk.usage) usage = chunk.usage;
      }
      assert.equal(role, 'assistant');
      assert.equal(content, chatContent);
      assert.equal(finish, chatFinish);
      assertUsage(usage, 'streamed chat');
    });

    await t.test('chat.completions: SDK stream helper (beta.chat.completions.stream)', async () => {
      const stream = client.beta.chat.completions.stream({
        ...chatRequest,
        stream_options: { include_usage: true },
      });
      let deltas = '';
      stream.on('content', (delta) => (deltas += delta));
      const final = await stream.finalChatCompletion();
      assert.equal(deltas, chatContent);
      assert.equal(final.choices[0].message.role, 'assistant');
      assert.equal(final.choices[0].message.content, chatContent);
      assert.equal(final.choices[0].finish_reason, chatFinish);
      assert.equal(await stream.finalContent(), chatContent);
    });

    await t.test('models.list returns the model id', async () => {
      const ids = [];
      for await (const m of client.models.list()) {
        assert.equal(m.object, 'model');
        ids.push(m.id);
      }
      assert.ok(ids.includes(MODEL_ID), `models: ${JSON.stringify(ids)}`);
    });

    await t.test('max_tokens: -5 is an APIError with status 400', async () => {
      await assert.rejects(
        client.completions.create({ model: MODEL_ID, prompt: 'Hello', max_tokens: -5 }),
        (err) => {
          assert.ok(err instanceof OpenAI.APIError, `not an APIError: ${err}`);
          assert.ok(err instanceof OpenAI.BadRequestError, `not a BadRequestError: ${err}`);
          assert.equal(err.status, 400);
          assert.equal(err.type, 'invalid_request_error');
          assert.equal(err.param, 'max_tokens');
          return true;
        },
      );
      await assert.rejects(
        client.chat.completions.create({ ...chatRequest, max_tokens: -5 }),
        (err) => err instanceof OpenAI.APIError && err.status === 400,
      );
    });

    await t.test('/metrics counts prompt tokens', async () => {
      const res = await fetch(`${base}/metrics`);
      assert.equal(res.status, 200);
      const text = await res.text();
      assert.match(text, /^kvstash_prompt_tokens_total\{/m);
      // The repeated requests above were served from the cache: the device tier counted them.
      const device = /^kvstash_prompt_tokens_total\{source="device"\} (\d+)/m.exec(text);
      assert.ok(device && Number(device[1]) > 0, 'no device-tier prompt tokens counted');
    });
  } finally {
    if (!daemon.exit) daemon.child.kill('SIGTERM');
    const exit = await withTimeout(daemon.exited, EXIT_TIMEOUT_MS, 'kvstashd to exit on SIGTERM').catch((e) => {
      daemon.child.kill('SIGKILL');
      throw e;
    });
    await rm(cacheDir, { recursive: true, force: true });
    await t.test('SIGTERM shuts kvstashd down with exit code 0', () => {
      assert.deepEqual(exit, { code: 0, signal: null }, `stderr:\n${daemon.stderr}`);
    });
  }
});
