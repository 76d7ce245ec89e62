// Each export destination of this node: what was accepted, delivered, refused, pushed back
// and dropped, the backlog on disk and how long it takes to drain, and the disk's free space.
import { usePoll, fmt } from '../api.js';

function backlogClass(d) {
  if (d.state === 'failed' || d.disk_low) return 'bad';
  return d.queued_batches > 0 && d.drain_seconds === null ? 'bad' : '';
}

export function Export() {
  const destinations = usePoll('/v1/export');
  const list = destinations.data || [];
  return (
    <section>
      <h1>Export</h1>
      {destinations.error && <p class="error">{destinations.error}</p>}
      {destinations.data && list.length === 0 && (
        <p class="muted" data-testid="export-empty">
          no destination: spans and metrics stay on this node (<code>apiary config set destination.main.endpoint=http://COLLECTOR:4318</code>)
        </p>
      )}
      <table data-testid="export">
        <thead>
          <tr>
            <th>Destination</th><th>State</th><th>When full</th><th>Accepted</th><th>Delivered</th>
            <th>Refused</th><th>Pushed back</th><th>Dropped</th><th>Backlog</th><th>Drains in</th>
            <th>In flight</th><th>Disk free</th><th>Last error</th>
          </tr>
        </thead>
        <tbody>
          {list.map((d) => (
            <tr data-destination={d.name}>
              <td>{d.name} <code>{d.endpoint}</code></td>
              <td class={d.state === 'failed' ? 'bad' : 'ok'}>{d.state}</td>
              <td>{d.full_policy}</td>
              <td>{d.accepted_items}</td>
              <td>{d.delivered_items}</td>
              <td class={d.refused_items ? 'bad' : ''}>{d.refused_items}</td>
              <td class={d.pushed_back_items ? 'bad' : ''}>{d.pushed_back_items}</td>
              <td class={d.dropped_items ? 'bad' : ''}>{d.dropped_items}</td>
              <td class={backlogClass(d)}>
                {d.queued_items} items · {fmt.bytes(d.queued_bytes)} of {fmt.bytes(d.max_bytes)}
              </td>
              <td>{d.queued_batches > 0 ? fmt.seconds(d.drain_seconds) : '—'}</td>
              <td>{d.in_flight}</td>
              <td class={d.disk_low ? 'bad' : ''}>
                {d.disk_available_bytes === null ? '—' : fmt.bytes(d.disk_available_bytes)}
                {d.disk_low ? ` (under the ${fmt.bytes(d.disk_reserve_bytes)} reserve: pushing back)` : ''}
              </td>
              <td>{d.reason || ''}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
