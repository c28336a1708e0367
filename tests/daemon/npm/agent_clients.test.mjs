// End-to-end: coding-agent tool-use loops through the official `@anthropic-ai/sdk` (Messages) and
// `openai` (chat completions and Responses) packages, pinned in package.json, against a real
// kvstashd. Streamed replies go through the SDKs' own stream accumulators (messages.stream ->
// finalMessage, beta.chat.completions.stream -> finalChatCompletion, responses.stream ->
// finalResponse), so every event kvstashd sends must parse.
//
// The model is a synthetic tiny-qwen3 with the real Qwen3 tokenizer and chat template (built here
// with kvstash-mkmodel from ../shared/models/tokenizers/qwen3); its weights are random, so the
// replies are scripted (`kvstash.script`, kvstashd --allow-scripted-replies): their tokens are
// forced through the model and parsed like any reply. Environment as openai_client.test.mjs, plus
//   KVSTASH_MKMODEL   the kvstash-mkmodel binary (default: <repo>/build/bin/kvstash-mkmodel)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, renameSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { FIXTURES, REPO, skipReason, startDaemon, stopDaemon, waitHealthy } from './kvstashd.mjs';

const TOKENIZER = path.join(FIXTURES, 'tokenizers', 'qwen3', 'tokenizer.json');
const MKMODEL = path.resolve(process.env.KVSTASH_MKMODEL || path.join(REPO, 'build', 'bin', 'kvstash-mkmodel'));

function buildModel() {
  const out = path.join(tmpdir(), 'kvstash-npm-tiny-qwen3-q8_0.gguf');
  if (existsSync(out)) return out;
  const tmp = `${out}.${process.pid}`;
  execFileSync(MKMODEL, ['--preset', 'tiny-qwen3', '--type', 'q8_0', '--tokenizer', TOKENIZER, '-o', tmp],
    { stdio: 'ignore' });
  renameSync(tmp, out);
  return out;
}

const SYSTEM = 'You are a careful coding agent. Use the tools to answer.';
const TOOL = {
  name: 'read_file',
  description: 'Read a file of the repository',
  schema: { type: 'object', properties: { path: { type: 'string' } }, required: ['path'] },
};

// The scripted reply of turn `i`: reasoning and a tool call, except the last turn, which answers.
function script(i, last) {
  if (last) return '<think>\nDone.\n</think>\n\nThe answer is in src/file_2.cc.';
  return `<think>\nI should read file ${i}.\n</think>\n\n<tool_call>\n` +
    `{"name": "read_file", "arguments": {"path": "src/file_${i}.cc"}}\n</tool_call>`;
}

const TURNS = 4;

test('official SDKs run tool-use loops against kvstashd', { timeout: 300_000 }, async (t) => {
  for (const sdk of ['@anthropic-ai/sdk', 'openai']) {
    const reason = skipReason(TOKENIZER, sdk);
    if (reason) {
      console.log(`kvstash: SKIPPED: ${reason}`);
      t.skip(reason);
      return;
    }
  }
  const Anthropic = (await import('@anthropic-ai/sdk')).default;
  const OpenAI = (await import('openai')).default;
  const model = buildModel();
  const cacheDir = await mkdtemp(path.join(tmpdir(), 'kvstash-npm-agents-'));
  const daemon = startDaemon(cacheDir, model, ['--allow-scripted-replies', '-c', '8192']);
  try {
    const base = `http://127.0.0.1:${await daemon.port}`;
    await waitHealthy(base, daemon);
    const anthropic = new Anthropic({ baseURL: base, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
    const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });

    for (const stream of [false, true]) {
      await t.test(`anthropic messages loop (stream: ${stream})`, async () => {
        const messages = [{ role: 'user', content: 'Which file holds the answer?' }];
        const tools = [{ name: TOOL.name, description: TOOL.description, input_schema: TOOL.schema }];
        for (let i = 0; i < TURNS; i++) {
          const last = i + 1 === TURNS;
          const params = {
            model: 'claude-sonnet-4-5', max_tokens: 256, system: SYSTEM, messages, tools,
            metadata: { user_id: `npm-${stream}` }, kvstash: { script: script(i, last) },
          };
          const msg = stream
            ? await anthropic.messages.stream(params).finalMessage()
            : await anthropic.messages.create(params);
          assert.equal(msg.type, 'message');
          assert.equal(msg.stop_reason, last ? 'end_turn' : 'tool_use');
          assert.equal(msg.content[0].type, 'thinking');
          assert.equal(typeof msg.usage.cache_read_input_tokens, 'number');
          if (i > 0) assert.ok(msg.usage.cache_read_input_tokens > 0, 'later turns read the cache');
          messages.push({ role: 'assistant', content: msg.content });
          if (last) {
            assert.match(msg.content.at(-1).text, /src\/file_2\.cc/);
            break;
          }
          const use = msg.content.find((b) => b.type === 'tool_use');
          assert.ok(use, JSON.stringify(msg.content));
          assert.deepEqual(use.input, { path: `src/file_${i}.cc` });
          messages.push({
            role: 'user',
            content: [{ type: 'tool_result', tool_use_id: use.id, content: `// contents of file ${i}\nint f${i}();` }],
          });
        }
        const count = await anthropic.messages.countTokens({ model: 'x', messages, system: SYSTEM, tools });
        assert.ok(count.input_tokens > 0);
      });

      await t.test(`openai chat completions loop (stream: ${stream})`, async () => {
        const messages = [{ role: 'system', content: SYSTEM }, { role: 'user', content: 'Which file?' }];
        const tools = [{ type: 'function', function: { name: TOOL.name, description: TOOL.description, parameters: TOOL.schema } }];
        for (let i = 0; i < TURNS; i++) {
          const last = i + 1 === TURNS;
          const params = { model: 'any', messages, tools, max_tokens: 256, kvstash: { script: script(i, last) } };
          if (stream) params.stream_options = { include_usage: true };
          const done = stream
            ? await openai.beta.chat.completions.stream(params).finalChatCompletion()
            : await openai.chat.completions.create(params);
          const choice = done.choices[0];
          assert.equal(choice.finish_reason, last ? 'stop' : 'tool_calls');
          messages.push(choice.message);
          if (last) {
            assert.match(choice.message.content, /src\/file_2\.cc/);
            break;
          }
          const call = choice.message.tool_calls[0];
          assert.equal(call.function.name, 'read_file');
          assert.deepEqual(JSON.parse(call.function.arguments), { path: `src/file_${i}.cc` });
          messages.push({ role: 'tool', tool_call_id: call.id, content: `int f${i}();` });
          if (i > 0) assert.ok(done.usage.prompt_tokens_details.cached_tokens > 0);
        }
      });

      await t.test(`openai responses loop (stream: ${stream})`, async () => {
        const input = [{ role: 'user', content: 'Which file?' }];
        const tools = [{ type: 'function', name: TOOL.name, description: TOOL.description, parameters: TOOL.schema, strict: false }];
        for (let i = 0; i < TURNS; i++) {
          const last = i + 1 === TURNS;
          const params = {
            model: 'codex', instructions: SYSTEM, input, tools, max_output_tokens: 256, store: false,
            prompt_cache_key: `npm-responses-${stream}`, kvstash: { script: script(i, last) },
          };
          const resp = stream
            ? await openai.responses.stream(params).finalResponse()
            : await openai.responses.create(params);
          assert.equal(resp.status, 'completed');
          for (const item of resp.output) input.push(item);
          if (last) {
            const text = resp.output.filter((o) => o.type === 'message')
              .flatMap((o) => o.content.map((c) => c.text)).join('');
            assert.match(text, /src\/file_2\.cc/);
            break;
          }
          const call = resp.output.find((o) => o.type === 'function_call');
          assert.ok(call, JSON.stringify(resp.output));
          assert.deepEqual(JSON.parse(call.arguments), { path: `src/file_${i}.cc` });
          input.push({ type: 'function_call_output', call_id: call.call_id, output: `int f${i}();` });
          if (i > 0) assert.ok(resp.usage.input_tokens_details.cached_tokens > 0);
        }
      });
    }

    await t.test('errors come back in each API shape', async () => {
      await assert.rejects(
        anthropic.messages.create({ model: 'x', max_tokens: 5, messages: [] }),
        (err) => err instanceof Anthropic.APIError && err.status === 400 && err.error?.type === 'error',
      );
      await assert.rejects(
        openai.responses.create({ model: 'x', input: 'hi', previous_response_id: 'resp_1' }),
        (err) => err instanceof OpenAI.APIError && err.status === 400 && err.param === 'previous_response_id',
      );
    });
  } finally {
    const exit = await stopDaemon(daemon);
    await rm(cacheDir, { recursive: true, force: true });
    assert.deepEqual(exit, { code: 0, signal: null }, `stderr:\n${daemon.stderr}`);
  }
});
