// RED per service and route (counted before sampling): rate, errors, p50/p99, with charts of
// the recent past, computed from the differences between polls.
import { useRef } from 'preact/hooks';
import { usePoll, fmt } from '../api.js';
import { Chart } from '../Chart.jsx';

const KEEP = 90; // points of history per chart (3 minutes at one poll every 2 s)

function keyOf(r) {
  return `${r.service} ${r.kind} ${r.operation} ${r.route}`;
}

export function Services() {
  const red = usePoll('/v1/red', 2000);
  const history = useRef({ last: null, times: [], rate: [], errors: [], p99: [] });
  const rows = red.data ? red.data.routes : [];
  const h = history.current;
  if (red.data && red.at && (!h.last || h.last.at !== red.at)) {
    const total = rows.reduce((a, r) => ({ count: a.count + r.count, errors: a.errors + r.errors }), { count: 0, errors: 0 });
    if (h.last) {
      const seconds = (red.at - h.last.at) / 1000;
      h.times.push(red.at / 1000);
      h.rate.push((total.count - h.last.count) / seconds);
      h.errors.push((total.errors - h.last.errors) / seconds);
      h.p99.push(Math.max(0, ...rows.map((r) => r.p99_seconds * 1000)));
      for (const list of [h.times, h.rate, h.errors, h.p99]) if (list.length > KEEP) list.shift();
    }
    h.last = { at: red.at, ...total, perRoute: Object.fromEntries(rows.map((r) => [keyOf(r), r])) };
  }
  const services = [...new Set(rows.map((r) => r.service))];
  return (
    <section>
      <h1>Services</h1>
      {red.error && <p class="error">{red.error}</p>}
      <div class="charts">
        <Chart title="Requests per second (all services)" series={[{ label: 'req/s', color: '#2a7ae2' }]} data={[h.times, h.rate]} />
        <Chart title="Errors per second" series={[{ label: 'errors/s', color: '#d33' }]} data={[h.times, h.errors]} />
        <Chart title="Slowest route p99 (ms)" series={[{ label: 'p99 ms', color: '#e08a00' }]} data={[h.times, h.p99]} />
      </div>
      {services.length === 0 && <p class="muted">No requests seen yet: the http and tls probes count every request before sampling.</p>}
      {services.map((service) => (
        <div class="service" data-testid={`service-${service}`}>
          <h2>{service}</h2>
          <table>
            <thead>
              <tr><th>Side</th><th>Method</th><th>Route</th><th>Requests</th><th>Errors</th><th>Error rate</th><th>p50 ms</th><th>p99 ms</th></tr>
            </thead>
            <tbody>
              {rows.filter((r) => r.service === service).map((r) => (
                <tr>
                  <td>{r.kind}</td>
                  <td>{r.operation}</td>
                  <td><code>{r.route}</code></td>
                  <td>{r.count}</td>
                  <td class={r.errors ? 'bad' : ''}>{r.errors}</td>
                  <td>{fmt.pct(r.count ? r.errors / r.count : 0)}</td>
                  <td>{fmt.ms(r.p50_seconds)}</td>
                  <td>{fmt.ms(r.p99_seconds)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ))}
    </section>
  );
}
