// Members, roles, leader and health; each node's probe cost and share of the export budget.
import { usePoll, fmt } from '../api.js';

export function Cluster() {
  const cluster = usePoll('/v1/cluster');
  const intensity = usePoll('/v1/intensity');
  const c = cluster.data;
  const i = intensity.data;
  return (
    <section>
      <h1>Cluster</h1>
      {cluster.error && <p class="error">{cluster.error}</p>}
      {c && (
        <p class="summary" data-testid="cluster-summary">
          leader <b>{c.leader_name || 'none (no quorum)'}</b> · term {c.term} · config version{' '}
          <b>{c.committed_version}</b> · this node {c.node_name} ({c.state})
        </p>
      )}
      <table data-testid="members">
        <thead>
          <tr><th>Name</th><th>Role</th><th>Leader</th><th>Health</th><th>Address</th><th>ID</th></tr>
        </thead>
        <tbody>
          {(c ? c.members : []).map((m) => (
            <tr>
              <td>{m.name}</td>
              <td>{m.role}</td>
              <td>{m.leader ? '★' : ''}</td>
              <td class={m.reachable ? 'ok' : 'bad'}>{m.reachable ? 'reachable' : 'UNREACHABLE'}</td>
              <td><code>{m.address}</code></td>
              <td><code>{m.id}</code></td>
            </tr>
          ))}
        </tbody>
      </table>
      <h2>Probe cost and share</h2>
      {i && (
        <p class="summary">
          tuning <b>{i.mode}</b> · export budget {i.budget_export_events_per_second} spans/s for the
          cluster · CPU budget {i.budget_cpu_percent_per_node} % per node
        </p>
      )}
      <table data-testid="intensity">
        <thead>
          <tr><th>Node</th><th>Requests/s</th><th>CPU</th><th>Share (spans/s)</th><th>Rate</th><th>Configured</th><th>Exported/s</th><th>Report age</th></tr>
        </thead>
        <tbody>
          {(i ? i.view : []).map((v) => {
            const decision = i.allocation && i.allocation.decisions.find((d) => d.node === v.node);
            return (
              <tr class={v.fresh ? '' : 'stale'}>
                <td>{v.name}</td>
                <td>{fmt.rate(v.demand)}</td>
                <td>{v.cpu_percent.toFixed(1)} %</td>
                <td>{decision ? fmt.rate(decision.share) : '—'}</td>
                <td>{v.rate.toFixed(3)}</td>
                <td>{v.configured_rate}</td>
                <td>{fmt.rate(v.exported)}</td>
                <td>{v.fresh ? `${v.age_ms} ms` : 'stale'}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </section>
  );
}
