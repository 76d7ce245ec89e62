import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { token, usePoll } from './api.js';
import { Cluster } from './pages/Cluster.jsx';
import { Services } from './pages/Services.jsx';
import { Spans } from './pages/Spans.jsx';
import { Config } from './pages/Config.jsx';
import { Probes } from './pages/Probes.jsx';
import { Profiles } from './pages/Profiles.jsx';
import { Export } from './pages/Export.jsx';
import { Predictions } from './pages/Predictions.jsx';
import './style.css';

const PAGES = {
  cluster: ['Cluster', Cluster],
  services: ['Services', Services],
  spans: ['Live spans', Spans],
  config: ['Config', Config],
  probes: ['Probes', Probes],
  profiles: ['Profiles', Profiles],
  export: ['Export', Export],
  predictions: ['Predictions', Predictions],
};

function currentPage() {
  const name = location.hash.replace(/^#\/?/, '');
  return PAGES[name] ? name : 'cluster';
}

function TokenField() {
  const [value, setValue] = useState(token.get());
  const [saved, setSaved] = useState(!!token.get());
  return (
    <form
      class="token"
      onSubmit={(e) => {
        e.preventDefault();
        token.set(value);
        setSaved(!!value.trim());
      }}
    >
      <input
        type="password"
        name="token"
        placeholder="API token"
        value={value}
        onInput={(e) => {
          setValue(e.currentTarget.value);
          setSaved(false);
        }}
      />
      <button type="submit">{saved ? 'Token saved' : 'Save token'}</button>
    </form>
  );
}

function App() {
  const [page, setPage] = useState(currentPage());
  useEffect(() => {
    const onHash = () => setPage(currentPage());
    addEventListener('hashchange', onHash);
    return () => removeEventListener('hashchange', onHash);
  }, []);
  const health = usePoll('/healthz', 3000);
  const [, Page] = PAGES[page];
  return (
    <>
      <header>
        <strong class="brand">Apiary</strong>
        <span class="node" data-testid="node-name">
          {health.data ? `node ${health.data.node}` : health.error ? 'node unreachable' : '…'}
        </span>
        <nav>
          {Object.entries(PAGES).map(([name, [label]]) => (
            <a href={`#/${name}`} class={name === page ? 'active' : ''}>
              {label}
            </a>
          ))}
        </nav>
        <TokenField />
      </header>
      <main>
        <Page />
      </main>
    </>
  );
}

render(<App />, document.getElementById('app'));
