// The node's live spans (the same stream as `apiary tail`), newest first, filterable.
import { useEffect, useState } from 'preact/hooks';
import { stream } from '../api.js';

const KEEP = 300;

export function Spans() {
  const [spans, setSpans] = useState([]);
  const [filter, setFilter] = useState('');
  const [status, setStatus] = useState('connecting…');
  const [paused, setPaused] = useState(false);
  useEffect(() => {
    if (paused) return undefined;
    let stop = () => {};
    let retry = null;
    const connect = () => {
      stop = stream('/v1/spans/stream', {
        onOpen: () => setStatus('live'),
        onEvent: (name, data) => {
          if (name === 'span') {
            const span = JSON.parse(data);
            setSpans((list) => [span, ...list].slice(0, KEEP));
          } else if (name === 'missed') {
            setStatus(`live (missed ${data} spans while the page was slow)`);
          }
        },
        onError: (message) => {
          setStatus(`no stream (${message}; a node started with --no-probes has no spans); retrying…`);
          retry = setTimeout(connect, 3000);
        },
      });
    };
    connect();
    return () => {
      clearTimeout(retry);
      stop();
    };
  }, [paused]);
  const needle = filter.trim().toLowerCase();
  const shown = needle
    ? spans.filter((s) => [s.service, s.method, s.route, s.target, String(s.status), s.probe].some((f) => f && f.toLowerCase().includes(needle)))
    : spans;
  return (
    <section>
      <h1>Live spans</h1>
      <p class="summary">
        <span data-testid="stream-status">{status}</span> ·{' '}
        <input name="filter" placeholder="filter: service, route, status…" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} />{' '}
        <button onClick={() => setPaused(!paused)}>{paused ? 'Resume' : 'Pause'}</button>{' '}
        <button onClick={() => setSpans([])}>Clear</button> · {shown.length} of {spans.length}
      </p>
      <table data-testid="spans">
        <thead>
          <tr><th>Time</th><th>Service</th><th>Side</th><th>Method</th><th>Route</th><th>Status</th><th>Duration</th><th>Sampled</th><th>Trace</th></tr>
        </thead>
        <tbody>
          {shown.map((s) => (
            <tr>
              <td>{new Date(s.start_unix_nanos / 1e6).toLocaleTimeString()}</td>
              <td>{s.service}</td>
              <td>{s.kind}</td>
              <td>{s.method}</td>
              <td><code>{s.route}</code></td>
              <td class={s.status >= 500 ? 'bad' : ''}>{s.status}</td>
              <td>{(s.duration_ns / 1e6).toFixed(2)} ms</td>
              <td>{s.sampled ? 'yes' : s.kept_by ? `kept: ${s.kept_by}` : 'no'}</td>
              <td><code>{s.traceparent ? s.traceparent.split('-')[1].slice(0, 12) : '—'}</code></td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
