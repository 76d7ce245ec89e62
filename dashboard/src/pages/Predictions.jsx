// Every member's predictions (GET /v1/predictions?scope=cluster): per active prediction, the
// series it rests on, the fit and the forecast line to the limit, drawn as SVG; the latest
// events below, and the members that did not answer.
import { usePoll, fmt } from '../api.js';

const W = 480;
const H = 200;
const PAD = { left: 56, right: 12, top: 12, bottom: 28 };

// A scatter of `points` ([x, y]) with `lines` ([[x, y], ...], class) and horizontal `levels`
// ({ y, label }) over the range of all of them.
function Plot({ points, lines = [], levels = [], xLabel, yLabel, xTime, testid }) {
  const xs = [...points.map((p) => p[0]), ...lines.flatMap((l) => l.points.map((p) => p[0]))];
  const ys = [
    ...points.map((p) => p[1]),
    ...lines.flatMap((l) => l.points.map((p) => p[1])),
    ...levels.map((l) => l.y),
  ].filter(Number.isFinite);
  if (xs.length === 0 || ys.length === 0) return <p class="muted">no points</p>;
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys) * 1.05 || 1];
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0 || 1)) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0 || 1)) * (H - PAD.top - PAD.bottom);
  const xText = (x) => (xTime ? `${Math.round(x - Date.now() / 1000)} s` : fmt.rate(x));
  return (
    <svg class="plot" viewBox={`0 0 ${W} ${H}`} width={W} height={H} data-testid={testid}>
      <line class="axis" x1={PAD.left} y1={H - PAD.bottom} x2={W - PAD.right} y2={H - PAD.bottom} />
      <line class="axis" x1={PAD.left} y1={PAD.top} x2={PAD.left} y2={H - PAD.bottom} />
      <text class="tick" x={PAD.left} y={H - 8}>{xText(x0)}</text>
      <text class="tick" x={W - PAD.right} y={H - 8} text-anchor="end">{xText(x1)}</text>
      <text class="tick" x={PAD.left - 4} y={sy(y1) + 4} text-anchor="end">{y1.toPrecision(3)}</text>
      <text class="tick" x={PAD.left - 4} y={sy(y0)} text-anchor="end">{y0.toPrecision(3)}</text>
      <text class="label" x={(W + PAD.left) / 2} y={H - 8} text-anchor="middle">{xLabel}</text>
      <text class="label" x={4} y={PAD.top + 8}>{yLabel}</text>
      {levels.map((l) => (
        <g>
          <line class="limit" x1={PAD.left} x2={W - PAD.right} y1={sy(l.y)} y2={sy(l.y)} />
          <text class="tick" x={W - PAD.right} y={sy(l.y) - 3} text-anchor="end">{l.label}</text>
        </g>
      ))}
      {points.map(([x, y]) => (
        <circle class="point" cx={sx(x)} cy={sy(y)} r="2" />
      ))}
      {lines.map((l) => (
        <polyline class={l.class} points={l.points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(' ')} />
      ))}
    </svg>
  );
}

// The queueing model: the rate with its trend run on to the breach rate, and mean latency
// against the rate with the fitted curve up to the objective's mean limit.
function QueueingPlots({ p }) {
  const f = p.evidence.fit;
  const now = f.evaluated_at;
  const rates = p.evidence.series;
  const start = rates.length ? rates[0][0] : now;
  const forecast = [
    [start, f.rate_level_per_s + f.rate_slope_per_s2 * (start - now)],
    [p.breach_at, f.breach_rate_per_s],
  ];
  const curve = [];
  const top = Math.min(f.breach_rate_per_s * 1.02, f.capacity_per_s * 0.995);
  for (let i = 0; i <= 40; i++) {
    const rate = (top * i) / 40;
    curve.push([rate, f.base_latency_s / (1 - Math.pow(rate / f.capacity_per_s, f.exponent))]);
  }
  return (
    <div class="plots">
      <Plot
        testid="forecast-plot"
        points={rates}
        lines={[{ points: forecast, class: 'forecast' }]}
        levels={[{ y: f.breach_rate_per_s, label: `breach ${f.breach_rate_per_s.toFixed(0)}/s` }]}
        xLabel="time (s from now)"
        yLabel="requests/s"
        xTime
      />
      <Plot
        testid="fit-plot"
        points={p.evidence.pairs}
        lines={[{ points: curve, class: 'fit' }]}
        levels={[{ y: f.mean_limit_s, label: 'mean limit' }]}
        xLabel="requests/s"
        yLabel="mean latency (s)"
      />
    </div>
  );
}

// The trend model: the series, its Theil–Sen line, and the line run on to the limit.
function TrendPlot({ p }) {
  const f = p.evidence.fit;
  const now = f.evaluated_at;
  const series = p.evidence.series;
  const start = series.length ? series[0][0] : now;
  const at = (t) => f.level_now + f.slope_per_s * (t - now);
  return (
    <div class="plots">
      <Plot
        testid="forecast-plot"
        points={series}
        lines={[
          { points: [[start, at(start)], [now, at(now)]], class: 'fit' },
          { points: [[now, at(now)], [p.breach_at, p.limit]], class: 'forecast' },
        ]}
        levels={[{ y: p.limit, label: 'limit' }]}
        xLabel="time (s from now)"
        yLabel={p.signal}
        xTime
      />
    </div>
  );
}

function Evidence({ p }) {
  if (p.model === 'queueing') return <QueueingPlots p={p} />;
  if (p.model === 'trend') return <TrendPlot p={p} />;
  return (
    <div class="plots">
      <Plot points={p.evidence.series} xLabel="time (s from now)" yLabel="bad requests" xTime testid="forecast-plot" />
    </div>
  );
}

export function Predictions() {
  const answer = usePoll('/v1/predictions?scope=cluster', 3000);
  const data = answer.data;
  const active = (data && data.active) || [];
  const events = ((data && data.events) || []).slice(-20).reverse();
  return (
    <section>
      <h1>Predictions</h1>
      {answer.error && <p class="error">{answer.error}</p>}
      {data && (
        <p class="muted" data-testid="predictions-members">
          {data.answered.length} members answered
          {data.missing.length > 0 && `; missing: ${data.missing.map((m) => `${m.node} (${m.error})`).join(', ')}`}
        </p>
      )}
      {data && active.length === 0 && (
        <p class="muted" data-testid="predictions-empty">no service is forecast to break its objective</p>
      )}
      {active.map((p) => (
        <article class="prediction" data-prediction={p.id} data-testid="prediction">
          <h2>
            {p.service} · {p.signal} · {p.model} on {p.node}:{' '}
            {p.seconds_to_breach <= 0 ? 'breaking now' : `breach in ${fmt.seconds(p.seconds_to_breach)}`}
            {' '}(confidence {p.confidence.toFixed(2)})
          </h2>
          <p>{p.why}</p>
          <p class="muted">{p.action}</p>
          <Evidence p={p} />
        </article>
      ))}
      <h2>Latest events</h2>
      <table data-testid="prediction-events">
        <thead>
          <tr><th>When</th><th>Node</th><th>Event</th><th>Prediction</th><th>Breach in</th></tr>
        </thead>
        <tbody>
          {events.map((e) => (
            <tr>
              <td>{new Date(e.at * 1000).toLocaleTimeString()}</td>
              <td>{e.node}</td>
              <td>{e.kind}</td>
              <td>{e.prediction.id}</td>
              <td>{fmt.seconds(e.prediction.seconds_to_breach)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
