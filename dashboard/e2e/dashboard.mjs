// End-to-end test of the dashboard in headless Chromium (Debian's, driven by playwright-core):
// loads every page on node A, changes a setting through the form on A and sees it on node B's
// page, reverts it from B, and keeps a screenshot of each step. Run by node/tests/dashboard_ui.rs,
// which starts the nodes and passes A_URL, B_URL, TOKEN (admin), READ_TOKEN, SHOTS and CHROMIUM.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const { A_URL, B_URL, TOKEN, READ_TOKEN, SHOTS, CHROMIUM, HAS_PROBES } = process.env;
for (const [name, value] of Object.entries({ A_URL, B_URL, TOKEN, READ_TOKEN, SHOTS, CHROMIUM })) {
  if (!value) throw new Error(`${name} is not set: run this through node/tests/dashboard_ui.rs`);
}
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'apiary-chromium-')), {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const page = browser.pages()[0] || (await browser.newPage());
const errors = [];
page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
page.on('console', (m) => {
  // Failed requests are reported with their address by the response handler below.
  if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(`console: ${m.text()}`);
});
// The refusals a step provokes on purpose (401 before a token is given, 403 for a write with a
// read token) are expected; any other error status fails the test.
let expectedStatus = null;
page.on('response', (r) => {
  if (r.status() >= 400 && r.status() !== expectedStatus) errors.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
});

async function step(name, fn) {
  process.stdout.write(`- ${name} … `);
  try {
    await fn();
    await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
    console.log('ok');
  } catch (e) {
    await page.screenshot({ path: join(SHOTS, `${name}-FAILED.png`), fullPage: true }).catch(() => {});
    console.log('FAILED');
    throw new Error(`${name}: ${e.message}`);
  }
}

const text = (selector) => page.locator(selector).first().innerText();
const waitText = (selector, pattern, timeout = 15000) =>
  page.waitForFunction(
    ([s, p]) => [...document.querySelectorAll(s)].some((e) => new RegExp(p).test(e.innerText)),
    [selector, pattern],
    { timeout },
  );

await step('00-reads-need-a-token', async () => {
  expectedStatus = 401;
  await page.goto(`${A_URL}/#/cluster`);
  await waitText('p.error', 'needs an API token');
  await page.fill('input[name=token]', READ_TOKEN);
  await page.click('form.token button');
  // Once the pages read with the token, a 401 is an error again.
  await waitText('[data-testid=cluster-summary]', 'leader \\S+');
  await page.waitForTimeout(2500);
  expectedStatus = null;
});

await step('01-cluster', async () => {
  await page.goto(`${A_URL}/#/cluster`);
  await waitText('[data-testid=cluster-summary]', 'leader \\S+');
  await waitText('[data-testid=members] tbody', 'reachable');
  const rows = await page.locator('[data-testid=members] tbody tr').count();
  if (rows !== 2) throw new Error(`expected 2 members, saw ${rows}`);
  await waitText('[data-testid=intensity] tbody', '\\d');
});

await step('02-services', async () => {
  await page.goto(`${A_URL}/#/services`);
  await page.waitForSelector('.chart canvas', { timeout: 10000 });
  if (HAS_PROBES === '1') {
    // The browser's own requests to the node are HTTP on loopback: the probes count them.
    await waitText('main table tbody', '/v1/', 20000);
  }
});

await step('03-spans', async () => {
  await page.goto(`${A_URL}/#/spans`);
  if (HAS_PROBES === '1') {
    await waitText('[data-testid=stream-status]', '^live');
    await page.evaluate(() => fetch('/healthz?from-the-spans-test'));
    await waitText('[data-testid=spans] tbody', 'healthz', 20000);
    await page.fill('input[name=filter]', 'no-such-service-xyz');
    const shown = await page.locator('[data-testid=spans] tbody tr').count();
    if (shown !== 0) throw new Error(`the filter left ${shown} rows`);
    await page.fill('input[name=filter]', '');
  } else {
    await page.waitForSelector('[data-testid=spans]');
  }
});

await step('04-probes', async () => {
  await page.goto(`${A_URL}/#/probes`);
  await waitText('[data-testid=probes] tbody', 'mysql');
  const rows = await page.locator('[data-testid=probes] tbody tr').count();
  // http, tls, tcp, process, redis, postgres, mysql, http2
  if (rows !== 8) throw new Error(`expected 8 probes, saw ${rows}`);
});

let versionBefore = 0;
await step('05-config-write-with-a-read-token-is-refused', async () => {
  expectedStatus = 403;
  await page.goto(`${A_URL}/#/config`);
  await waitText('[data-testid=config-version]', '^\\d+$');
  versionBefore = Number(await text('[data-testid=config-version]'));
  await page.fill('input[name=key]', 'probe.http.sample_rate');
  await page.fill('input[name=value]', '0.5');
  await page.click('[data-testid=config-form] button[type=submit]');
  await waitText('[data-testid=config-result]', 'needs a `write` token');
  expectedStatus = null;
});

await step('06-config-set-on-a', async () => {
  await page.fill('input[name=token]', TOKEN);
  await page.click('form.token button');
  await page.fill('input[name=comment]', 'halve HTTP sampling from the dashboard test');
  await page.click('[data-testid=config-form] button[type=submit]');
  await waitText('[data-testid=config-result]', `committed as version ${versionBefore + 1}`);
  await waitText('[data-testid=config-current] tr[data-key="probe.http.sample_rate"]', '0\\.5');
});

await step('07-config-seen-on-b', async () => {
  // B is another origin (port), so it keeps its own token.
  expectedStatus = 401;
  await page.goto(`${B_URL}/#/config`);
  await page.fill('input[name=token]', TOKEN);
  await page.click('form.token button');
  await waitText('[data-testid=config-current] tr[data-key="probe.http.sample_rate"]', '0\\.5');
  await waitText(`.event[data-version="${versionBefore + 1}"]`, 'probe\\.http\\.sample_rate');
  await waitText(`.event[data-version="${versionBefore + 1}"] .diff`, '1(\\.0)?\\s*→\\s*0\\.5');
  await page.waitForTimeout(2500);
  expectedStatus = null;
});

await step('08-revert-on-b-seen-on-a', async () => {
  await page.click(`.event[data-version="${versionBefore + 1}"] button.revert`);
  await waitText('[data-testid=config-result]', `as version ${versionBefore + 2}`);
  await page.goto(`${A_URL}/#/config`);
  await waitText('[data-testid=config-version]', `^${versionBefore + 2}$`);
  await waitText('[data-testid=config-current] tr[data-key="probe.http.sample_rate"]', '^\\S+\\s+1(\\.0)?$');
});

await step('09-profiles-apply-on-a', async () => {
  await page.goto(`${A_URL}/#/profiles`);
  await waitText('[data-testid=profiles]', 'nginx-frontend');
  const shown = await page.locator('[data-testid=profiles] .profile').count();
  if (shown !== 8) throw new Error(`expected the 8 catalogue profiles, saw ${shown}`);
  const nginx = '.profile[data-profile="nginx-frontend"]';
  await waitText(nginx, 'signed by key');
  await waitText(`${nginx} .diff`, 'include_ports');
  await page.click(`${nginx} button[type=submit]`);
  await waitText('[data-testid=profile-result]', `committed as version ${versionBefore + 3}`);
  // Applied, the profile changes nothing more.
  await waitText(`${nginx} button[type=submit]`, 'Already applied');
});

await step('10-profile-undone-seen-on-b', async () => {
  await page.click('[data-testid=profile-result] button.undo');
  await waitText('[data-testid=profile-result]', `as version ${versionBefore + 4}`);
  await page.goto(`${B_URL}/#/config`);
  await waitText(`.event[data-version="${versionBefore + 3}"]`, 'profile nginx-frontend v1 \\(signed by key');
  await waitText(`.event[data-version="${versionBefore + 3}"] .diff`, 'include_ports');
  await waitText('[data-testid=config-version]', `^${versionBefore + 4}$`);
  await waitText('[data-testid=config-current] tr[data-key="probe.http.sample_rate"]', '^\\S+\\s+1(\\.0)?$');
});

await step('11-export', async () => {
  await page.goto(`${A_URL}/#/export`);
  const row = '[data-testid=export] tr[data-destination="main"]';
  await waitText(row, 'running');
  await waitText(row, 'refuse');
  // The collector takes what comes: the backlog shows as bytes of the cap, disk free as MiB.
  await waitText(row, 'of 256\\.0 MiB');
  await waitText(row, '\\d+\\.\\d [MG]iB');
});

await step('12-predictions', async () => {
  await page.goto(`${A_URL}/#/predictions`);
  // Gathered from both members over the mesh.
  await waitText('[data-testid=predictions-members]', '^2 members answered');
  if (HAS_PROBES === '1') {
    // node/tests/dashboard_ui.rs holds the nodes' own API to a p99 objective no request
    // meets: the burn rate is raised, and its evidence drawn.
    await waitText('[data-testid=prediction] h2', 'apiary · p99 · burn_rate', 30000);
    await page.waitForSelector('[data-testid=prediction] svg[data-testid=forecast-plot] circle', { timeout: 10000 });
    await waitText('[data-testid=prediction-events] tbody', 'raised');
  }
});

await browser.close();
if (errors.length) throw new Error(`the pages logged errors:\n${errors.join('\n')}`);
console.log(`dashboard e2e passed; screenshots in ${SHOTS}`);
