// Helpers the npm end-to-end tests share: start kvstashd on a free port, wait until it is
// healthy, stop it, and skip (loudly) when `npm ci` could not install the SDKs.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..', '..');
export const KVSTASHD = path.resolve(process.env.KVSTASHD || path.join(REPO, 'build', 'bin', 'kvstashd'));
export const FIXTURES = path.resolve(process.env.KVSTASH_FIXTURES || path.join(REPO, '..', 'shared', 'models'));

export const READY_TIMEOUT_MS = 60_000;
export const EXIT_TIMEOUT_MS = 30_000;

// Why the test must skip, or null: a missing fixture, or an SDK `npm ci` could not install
// (scripts/test leaves .npm-ci-failed when the registry was unreachable, e.g. behind a
// TLS-intercepting proxy whose CA the machine lacks).
export function skipReason(fixture, sdkDir) {
  if (!existsSync(fixture)) return `fixture ${fixture} not found (set KVSTASH_FIXTURES)`;
  const npmFailed = path.join(HERE, '.npm-ci-failed');
  if (!existsSync(path.join(HERE, 'node_modules', sdkDir)) && existsSync(npmFailed)) {
    return `npm ci could not install ${sdkDir}: ${readFileSync(npmFailed, 'utf8').trim()}`;
  }
  return null;
}

// SIGTERM, wait for the exit, return {code, signal} (SIGKILL and throw after EXIT_TIMEOUT_MS).
export async function stopDaemon(daemon) {
  if (!daemon.exit) daemon.child.kill('SIGTERM');
  return withTimeout(daemon.exited, EXIT_TIMEOUT_MS, 'kvstashd to exit on SIGTERM').catch((e) => {
    daemon.child.kill('SIGKILL');
    throw e;
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Starts kvstashd on a free port; resolves once it printed its address.
export function startDaemon(cacheDir, model, extraArgs = []) {
  // HTTP only (--socket none): the default socket path is one per user.
  const args = ['--port', '0', '--cache-dir', cacheDir, '-m', model, '--log-level', 'warn',
    '--socket', 'none', ...extraArgs];
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

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Polls /health until 200 {"status":"ok"}; 503 {"status":"loading"} means keep waiting.
export async function waitHealthy(base, daemon) {
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

