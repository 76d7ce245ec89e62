// The replicated config: current values, a form that changes them (through any node, with the
// token), and the history with each version's diff and a revert button.
import { useState } from 'preact/hooks';
import { usePoll, write, fmt } from '../api.js';

// {"probes": {"http": {"enabled": true}}} → [["probe.http.enabled", true]], the CLI's keys.
function flatten(value, prefix = '', out = []) {
  if (value && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length) {
    for (const [key, inner] of Object.entries(value)) {
      const name = prefix === '' ? ({ probes: 'probe', destinations: 'destination' }[key] || key) : `${prefix}.${key}`;
      flatten(inner, name, out);
    }
  } else {
    out.push([prefix, value]);
  }
  return out;
}

// As the CLI reads `key=value`: JSON when it is JSON (0.2, false, [80,443]), else a string.
function parseValue(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export function Config() {
  const current = usePoll('/v1/config');
  const history = usePoll('/v1/config/history');
  const [key, setKey] = useState('');
  const [value, setValue] = useState('');
  const [comment, setComment] = useState('');
  const [result, setResult] = useState(null);
  const entries = current.data ? flatten(current.data.config) : [];

  const submit = async (e) => {
    e.preventDefault();
    try {
      const answer = await write('PATCH', '/v1/config', {
        changes: { [key.trim()]: parseValue(value.trim()) },
        comment: comment || 'from the dashboard',
        author: 'dashboard',
      });
      setResult({ ok: true, text: `committed as version ${answer.version}` });
    } catch (error) {
      setResult({ ok: false, text: error.message });
    }
  };
  const revert = async (version) => {
    try {
      const answer = await write('POST', '/v1/config/revert', { version, comment: `revert to version ${version} from the dashboard`, author: 'dashboard' });
      setResult({ ok: true, text: `reverted to version ${version} as version ${answer.version}` });
    } catch (error) {
      setResult({ ok: false, text: error.message });
    }
  };

  return (
    <section>
      <h1>Config</h1>
      <p class="summary">version <b data-testid="config-version">{current.data ? current.data.version : '…'}</b>, the same on every node once applied</p>
      <form class="edit" onSubmit={submit} data-testid="config-form">
        <input name="key" list="config-keys" placeholder="key, e.g. probe.http.sample_rate" value={key} onInput={(e) => setKey(e.currentTarget.value)} required />
        <datalist id="config-keys">{entries.map(([k]) => <option value={k} />)}</datalist>
        <input name="value" placeholder="value, e.g. 0.2" value={value} onInput={(e) => setValue(e.currentTarget.value)} required />
        <input name="comment" placeholder="why (kept in the history)" value={comment} onInput={(e) => setComment(e.currentTarget.value)} />
        <button type="submit">Apply</button>
      </form>
      {result && <p class={result.ok ? 'ok' : 'error'} data-testid="config-result">{result.text}</p>}
      <div class="columns">
        <div>
          <h2>Current</h2>
          <table data-testid="config-current">
            <thead><tr><th>Key</th><th>Value</th></tr></thead>
            <tbody>
              {entries.map(([k, v]) => (
                <tr data-key={k}><td><code>{k}</code></td><td>{fmt.value(v)}</td></tr>
              ))}
            </tbody>
          </table>
        </div>
        <div>
          <h2>History</h2>
          {(history.data ? [...history.data.events].reverse() : []).map((event) => (
            <div class="event" data-version={event.version}>
              <div class="event-head">
                <b>v{event.version}</b> {event.at} · {event.author} on {event.origin_node}
                {event.comment && <> · <i>{event.comment}</i></>}
                {event.change.kind === 'profile' && (
                  <> · <span class="profile-stamp">profile {event.change.profile.name} v{event.change.profile.version} ({event.change.profile.signer.kind === 'trusted' ? `signed by key ${event.change.profile.signer.key_id}` : 'UNVERIFIED'})</span></>
                )}
                {event.change.kind === 'profile_ended' && <> · <span class="profile-stamp">end of the profile of version {event.change.profile_version}</span></>}
                <button class="revert" onClick={() => revert(event.version - 1)} title={`restore the config of version ${event.version - 1}`}>
                  Revert to v{event.version - 1}
                </button>
              </div>
              <table class="diff">
                {(event.diff || []).map((d) => (
                  <tr>
                    <td><code>{d.key}</code></td>
                    <td class="from">{fmt.value(d.from)}</td>
                    <td>→</td>
                    <td class="to">{fmt.value(d.to)}</td>
                  </tr>
                ))}
              </table>
            </div>
          ))}
        </div>
      </div>
    </section>
  );
}
