// Each probe's state and reason, and its cost from the kernel's BPF run-time statistics.
import { usePoll } from '../api.js';

export function Probes() {
  const probes = usePoll('/v1/probes');
  return (
    <section>
      <h1>Probes</h1>
      {probes.error && <p class="error">{probes.error}</p>}
      <table data-testid="probes">
        <thead>
          <tr><th>Probe</th><th>State</th><th>Reason</th><th>Sample rate</th><th>Runs</th><th>ns/run</th><th>Events</th><th>Sampled out</th><th>Filtered</th><th>Lost</th></tr>
        </thead>
        <tbody>
          {(probes.data || []).map((p) => (
            <tr>
              <td>{p.name}</td>
              <td class={p.state === 'failed' ? 'bad' : p.state === 'attached' ? 'ok' : 'muted'}>{p.state}</td>
              <td>{p.reason || ''}</td>
              <td>{p.sample_rate}</td>
              <td>{p.runs}</td>
              <td>{p.ns_per_run.toFixed(0)}</td>
              <td>{p.events}</td>
              <td>{p.sampled_out}</td>
              <td>{p.filtered}</td>
              <td class={p.lost ? 'bad' : ''}>{p.lost}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
