// Talks to the node that served the page: every node serves the same API, and writes are
// forwarded to the Raft leader by the node itself.
import { useEffect, useState } from 'preact/hooks';

const TOKEN_KEY = 'apiary-token';
export const token = {
  get: () => localStorage.getItem(TOKEN_KEY) || '',
  set: (value) => localStorage.setItem(TOKEN_KEY, value.trim()),
};

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    throw new Error(`${response.status}: the node answered with a body that is not JSON`);
  }
  if (!response.ok) throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
  return body;
}

export async function get(path) {
  return answer(await fetch(path));
}

export async function write(method, path, body) {
  const secret = token.get();
  if (!secret) throw new Error('writes need the API token: paste it in the token field at the top (DATA_DIR/api-token on any node)');
  return answer(
    await fetch(path, {
      method,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
      body: JSON.stringify(body),
    }),
  );
}

// Polls `path` every `ms`; returns { data, error, at } and keeps the last good data on errors.
export function usePoll(path, ms = 2000) {
  const [state, setState] = useState({ data: null, error: null, at: 0 });
  useEffect(() => {
    let live = true;
    const tick = async () => {
      try {
        const data = await get(path);
        if (live) setState({ data, error: null, at: Date.now() });
      } catch (e) {
        if (live) setState((s) => ({ ...s, error: e.message }));
      }
    };
    tick();
    const timer = setInterval(tick, ms);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [path, ms]);
  return state;
}

export const fmt = {
  ms: (seconds) => (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1),
  rate: (n) => (n >= 100 ? n.toFixed(0) : n.toFixed(1)),
  pct: (x) => `${(x * 100).toFixed(1)} %`,
  value: (v) => (v === null || v === undefined ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v)),
};
