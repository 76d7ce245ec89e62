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

// Every read carries the token too: reads need one unless the cluster set api.public_read.
function authorization() {
  const secret = token.get();
  return secret ? { authorization: `Bearer ${secret}` } : {};
}

export const TOKEN_NEEDED = 'this node needs an API token to show anything: paste one in the token field at the top (DATA_DIR/api-token on any node, or one from `apiary token create`)';

export async function get(path) {
  const response = await fetch(path, { headers: authorization() });
  if (response.status === 401) throw new Error(TOKEN_NEEDED);
  return answer(response);
}

// Server-sent events with the token (EventSource cannot send headers): calls onEvent(name,
// data) per event until the returned function is called; onOpen and onError as EventSource's.
export function stream(path, { onOpen, onEvent, onError }) {
  const abort = new AbortController();
  (async () => {
    try {
      const response = await fetch(path, { headers: authorization(), signal: abort.signal });
      if (response.status === 401) throw new Error(TOKEN_NEEDED);
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      onOpen();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error('the stream ended');
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) name = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
          if (data.length) onEvent(name, data.join('\n'));
        }
      }
    } catch (e) {
      if (!abort.signal.aborted) onError(e.message);
    }
  })();
  return () => abort.abort();
}

export async function write(method, path, body) {
  const secret = token.get();
  if (!secret) throw new Error('writes need the API token: paste it in the token field at the top (DATA_DIR/api-token on any node)');
  return answer(
    await fetch(path, {
      method,
      headers: { 'content-type': 'application/json', ...authorization() },
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
  bytes: (n) => (n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(0)} KiB` : `${n} B`),
  seconds: (s) => (s === null || s === undefined ? '—' : s < 60 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`),
};
