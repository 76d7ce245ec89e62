// The profiles built into the node: each one's summary, whether its signature checks out with
// the cluster's trusted keys, the diff against the running config, and apply (one config
// event, optionally time-limited) and undo (a revert to the version before) with the token.
import { useState } from 'preact/hooks';
import { usePoll, write, fmt } from '../api.js';

function signerText(signer) {
  if (!signer) return 'not trusted here';
  if (signer.kind === 'trusted') return `signed by key ${signer.key_id}`;
  return `unverified (${signer.reason})`;
}

export function Profiles() {
  const view = usePoll('/v1/profiles', 3000);
  const [duration, setDuration] = useState({});
  const [result, setResult] = useState(null);
  const [applied, setApplied] = useState(null);

  const apply = async (name) => {
    try {
      const body = { name, comment: `profile ${name} from the dashboard`, author: 'dashboard' };
      if (duration[name]) body.for = duration[name];
      const answer = await write('POST', '/v1/profiles/apply', body);
      const version = answer.committed.version;
      setApplied({ name, version });
      setResult({ ok: true, text: `${name} v${answer.version} committed as version ${version} (${answer.diff.length} keys)` });
    } catch (error) {
      setResult({ ok: false, text: error.message });
    }
  };
  const undo = async () => {
    try {
      const to = applied.version - 1;
      const answer = await write('POST', '/v1/config/revert', { version: to, comment: `undo profile ${applied.name} from the dashboard`, author: 'dashboard' });
      setResult({ ok: true, text: `undone: reverted to version ${to} as version ${answer.version}` });
      setApplied(null);
    } catch (error) {
      setResult({ ok: false, text: error.message });
    }
  };

  const catalogue = view.data ? view.data.catalogue : [];
  const active = view.data ? view.data.active : [];
  return (
    <section>
      <h1>Profiles</h1>
      <p class="summary">
        Reviewed, signed partial configurations: applying one is a single config event on every node, and one revert undoes it.
        Trusted keys: {view.data ? view.data.trusted_keys.map((k) => k.key_id).join(', ') : '…'}
      </p>
      {view.error && <p class="error">{view.error}</p>}
      {result && (
        <p class={result.ok ? 'ok' : 'error'} data-testid="profile-result">
          {result.text}{' '}
          {applied && <button class="undo" onClick={undo}>Undo (revert to v{applied.version - 1})</button>}
        </p>
      )}
      {active.length > 0 && (
        <table data-testid="profiles-active">
          <thead><tr><th>Active until</th><th>Profile</th><th>Applied at version</th></tr></thead>
          <tbody>
            {active.map((a) => (
              <tr><td>{new Date(a.expires_at_unix * 1000).toISOString()}</td><td>{a.name} v{a.profile_version}</td><td>{a.version}</td></tr>
            ))}
          </tbody>
        </table>
      )}
      <div data-testid="profiles">
        {catalogue.map((p) => (
          <div class="event profile" data-profile={p.name}>
            <div class="event-head">
              <b>{p.name}</b> v{p.version} · {p.stack} · <i>{signerText(p.signer)}</i>
              {p.time_limit && <> · ends after {p.time_limit}</>}
            </div>
            <p>{p.summary} <span class="muted">({p.author}; needs apiary {p.min_apiary_version})</span></p>
            {p.problems.map((problem) => <p class="error">{problem}</p>)}
            <table class="diff">
              {p.diff.map((d) => (
                <tr>
                  <td><code>{d.key}</code></td>
                  <td class="from">{fmt.value(d.from)}</td>
                  <td>→</td>
                  <td class="to">{fmt.value(d.to)}</td>
                </tr>
              ))}
            </table>
            {p.problems.length === 0 && (
              <form class="edit" onSubmit={(e) => { e.preventDefault(); apply(p.name); }}>
                <input name="for" placeholder={p.time_limit ? `for (default ${p.time_limit})` : 'for, e.g. 15m (optional)'} value={duration[p.name] || ''} onInput={(e) => setDuration({ ...duration, [p.name]: e.currentTarget.value })} />
                <button type="submit" disabled={p.diff.length === 0}>{p.diff.length === 0 ? 'Already applied' : `Apply (${p.diff.length} keys)`}</button>
              </form>
            )}
          </div>
        ))}
      </div>
    </section>
  );
}
