// Browser tests of keyward's console, in real headless Chromium against a real keyward
// (started by scripts/console-tests.sh, which sets KEYWARD_URL and KEYWARD_KEY).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.KEYWARD_URL;
const ADMIN_KEY = process.env.KEYWARD_KEY;
const SHOTS = process.env.CONSOLE_SCREENSHOTS; // a directory, or unset
assert.ok(BASE && ADMIN_KEY, 'run through scripts/console-tests.sh');
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const TIMEOUT = 30_000;

let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    // launch() gives the browser a new empty profile directory of its own, removed at close.
  });
});

after(async () => {
  await browser?.close();
});

/** A fresh tab that records every request it makes and every CSP violation. */
async function open(viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const requests = [];
  page.on('request', (request) => requests.push(request.url()));
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  return { context, page, requests };
}

/** The API as curl sees it (Node's fetch, with a user agent of its own). */
async function api(method, route, key, body, userAgent = 'console-tests') {
  const headers = { 'x-api-key': key, 'user-agent': userAgent };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${BASE}${route}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** Polls `check` until it returns a truthy value (metering is written every 250 ms). */
async function eventually(check, what) {
  const deadline = Date.now() + TIMEOUT;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** Applies the history filters and waits for their answer (the table's aria-busy). */
async function applyFilters(page) {
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.locator('[data-testid=history][aria-busy=false]').waitFor();
}

async function signIn(page, key) {
  await page.goto(`${BASE}/console`);
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function keysTableRows(page) {
  await page.getByTestId('keys').waitFor();
  return page.$$eval('[data-testid=keys] tbody tr', (rows) => rows.map((row) => ({
    key_id: row.dataset.keyId,
    cells: [...row.querySelectorAll('td')].slice(0, 4).map((td) => td.textContent.trim()),
  })));
}

async function screenshot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.evaluate(() => window.scrollTo(0, 0));
  // The visible part of the page, with any secret masked (it is a throwaway key's, but
  // a picture of a secret is still a secret in the repository).
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), mask: [page.getByTestId('secret')] });
}

async function newKey(scopes, name) {
  const created = await api('POST', '/v1/api-keys', ADMIN_KEY, { name, scopes });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return created.body;
}

test('signing in with a bad key shows the reason and stays on sign-in', async () => {
  const { context, page } = await open();
  await page.goto(`${BASE}/console`);
  await screenshot(page, 'sign-in');
  await page.getByLabel('API key').fill('kw_not-a-key');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'INVALID_API_KEY' }).waitFor();
  assert.match(await page.getByRole('alert').textContent(), /malformed/);

  // Well-formed but unknown: validate answers valid: false with its reason.
  const unknown = `kw_${'A'.repeat(32)}`;
  await page.getByLabel('API key').fill(`${unknown}000000`);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: /Sign-in failed/ }).waitFor();
  assert.equal(await page.getByRole('navigation').count(), 0, 'no pages offered');
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await context.close();
});

test('after sign-in the keys table equals GET /v1/api-keys', async () => {
  await newKey(['read'], 'table check');
  const { context, page } = await open();
  await signIn(page, ADMIN_KEY);
  const rows = await keysTableRows(page);
  const { body } = await api('GET', '/v1/api-keys', ADMIN_KEY);
  assert.deepEqual(rows, body.api_keys.map((k) => ({
    key_id: k.key_id,
    cells: [k.name ?? '—', k.key_id, k.scopes.join(', '), k.status],
  })));
  await screenshot(page, 'keys');

  // Sorting by name, then back: the same rows in another order.
  await page.getByRole('button', { name: 'Name' }).click();
  await page.locator('th[aria-sort=ascending]', { hasText: 'Name' }).waitFor();
  const byName = await keysTableRows(page);
  assert.deepEqual(new Set(byName.map((r) => r.key_id)), new Set(rows.map((r) => r.key_id)));
  const names = byName.map((r) => JSON.stringify(r.cells[0] === '—' ? '' : r.cells[0]));
  assert.deepEqual(names, [...names].sort());
  await context.close();
});

test('a created key shows its secret once, works, and is listed', async () => {
  const { context, page } = await open();
  await signIn(page, ADMIN_KEY);
  await page.getByRole('button', { name: 'Create key' }).click();
  await page.getByLabel('Name').fill('browser made');
  await page.getByLabel('Scopes').fill('read, write');
  await page.getByLabel('Metadata (JSON object)').fill('{"team": "qa"}');
  await screenshot(page, 'create');
  await page.getByRole('button', { name: 'Create', exact: true }).click();
  const secret = (await page.getByTestId('secret').textContent()).trim();
  assert.match(secret, /^kw_[A-Za-z0-9]{38}$/);
  assert.match(await page.getByRole('dialog').textContent(), /only time the secret is shown/);
  await screenshot(page, 'secret');
  await page.getByRole('button', { name: 'I have stored it' }).click();

  const row = page.locator('[data-testid=keys] tbody tr', { hasText: 'browser made' });
  await row.waitFor();
  // The dialog leaves on its `close` event, a task after the click: wait for it (or time out).
  await page.getByTestId('secret').waitFor({ state: 'detached' });
  assert.equal(await page.getByTestId('secret').count(), 0);
  assert.ok(!(await page.content()).includes(secret), 'the secret is gone from the page');
  const check = await api('POST', '/v1/api-keys/validate', secret);
  assert.equal(check.body.valid, true);
  const listed = await api('GET', `/v1/api-keys/${check.body.key_id}`, ADMIN_KEY);
  assert.deepEqual(listed.body.scopes, ['read', 'write']);
  assert.deepEqual(listed.body.metadata, { team: 'qa' });
  assert.equal(await row.getAttribute('data-key-id'), check.body.key_id);

  // A bad field shows the API's error in the form and creates nothing.
  const before = (await api('GET', '/v1/api-keys', ADMIN_KEY)).body.api_keys.length;
  await page.getByRole('button', { name: 'Create key' }).click();
  await page.getByLabel('Scopes').fill('Not A Scope');
  await page.getByRole('button', { name: 'Create', exact: true }).click();
  await page.getByRole('alert').filter({ hasText: 'VALIDATION_ERROR' }).waitFor();
  assert.match(await page.getByRole('alert').textContent(), /scopes/);
  assert.equal((await api('GET', '/v1/api-keys', ADMIN_KEY)).body.api_keys.length, before);
  await context.close();
});

test('rotating shows the new secret once and the old one stops working', async () => {
  const key = await newKey(['read'], 'to rotate');
  const { context, page } = await open();
  await signIn(page, ADMIN_KEY);
  await page.getByRole('button', { name: 'Rotate to rotate' }).click();
  await page.getByLabel('Grace period (seconds)').fill('0');
  await page.getByRole('button', { name: 'Rotate', exact: true }).click();
  const secret = (await page.getByTestId('secret').textContent()).trim();
  assert.notEqual(secret, key.api_key);
  await page.getByRole('button', { name: 'I have stored it' }).click();
  assert.equal((await api('POST', '/v1/api-keys/validate', secret)).body.valid, true);
  assert.equal((await api('POST', '/v1/api-keys/validate', key.api_key)).body.valid, false);
  await context.close();
});

test('editing changes the name and metadata through PATCH', async () => {
  const key = await newKey(['read'], 'to edit');
  const { context, page } = await open();
  await signIn(page, ADMIN_KEY);
  await page.getByRole('button', { name: 'Edit to edit' }).click();
  await page.getByLabel('Name').fill('edited');
  await page.getByLabel('Metadata (JSON object)').fill('{"tier": 2}');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.locator(`tr[data-key-id="${key.key_id}"]`, { hasText: 'edited' }).waitFor();
  const stored = (await api('GET', `/v1/api-keys/${key.key_id}`, ADMIN_KEY)).body;
  assert.equal(stored.name, 'edited');
  assert.deepEqual(stored.metadata, { tier: 2 });

  // Metadata that is not JSON is refused in the form and changes nothing.
  await page.getByRole('button', { name: 'Edit edited' }).click();
  await page.getByLabel('Metadata (JSON object)').fill('{not json');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.getByRole('alert').filter({ hasText: 'metadata must be a JSON object' }).waitFor();
  assert.deepEqual((await api('GET', `/v1/api-keys/${key.key_id}`, ADMIN_KEY)).body.metadata, { tier: 2 });
  await context.close();
});

test('disabling, enabling and revoking act on the key, revoking after a confirmation', async () => {
  const key = await newKey(['read'], 'to revoke');
  const { context, page } = await open();
  await signIn(page, ADMIN_KEY);
  const row = page.locator(`tr[data-key-id="${key.key_id}"]`);
  await page.getByRole('button', { name: 'Disable to revoke' }).click();
  await row.filter({ hasText: 'inactive' }).waitFor();
  assert.equal((await api('GET', `/v1/api-keys/${key.key_id}`, ADMIN_KEY)).body.status, 'inactive');
  await page.getByRole('button', { name: 'Enable to revoke' }).click();
  await row.filter({ hasText: 'active' }).filter({ hasNotText: 'inactive' }).waitFor();

  // Cancel keeps the key; confirming revokes it.
  await page.getByRole('button', { name: 'Revoke to revoke' }).click();
  await page.getByRole('button', { name: 'Cancel' }).click();
  assert.equal((await api('GET', `/v1/api-keys/${key.key_id}`, ADMIN_KEY)).status, 200);
  await page.getByRole('button', { name: 'Revoke to revoke' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
  await row.waitFor({ state: 'detached' });
  assert.equal((await api('GET', `/v1/api-keys/${key.key_id}`, ADMIN_KEY)).status, 404);
  // The signed-in key offers no revoke or disable of itself.
  const self = (await api('POST', '/v1/api-keys/validate', ADMIN_KEY)).body.key_id;
  const own = page.locator(`tr[data-key-id="${self}"]`);
  assert.equal(await own.getByRole('button', { name: /^(Revoke|Disable)/ }).count(), 0);
  await context.close();
});

test('requests made with curl appear in the endpoint history with their user agent', async () => {
  const agent = `curl-console-test/${Date.now()}`;
  execFileSync('curl', ['-sS', '-o', '/dev/null', '-A', agent, '-H', `x-api-key: ${ADMIN_KEY}`,
    `${BASE}/v1/api-keys?limit=1`]);
  execFileSync('curl', ['-sS', '-o', '/dev/null', '-A', agent, '-H', `x-api-key: ${ADMIN_KEY}`,
    `${BASE}/v1/api-keys/key_00000000000000000000000000`]);
  const { context, page } = await open();
  await signIn(page, ADMIN_KEY);
  await page.getByRole('link', { name: 'Endpoints', exact: true }).click();
  await page.getByRole('link', { name: 'GET /v1/api-keys', exact: true }).click();
  const history = page.getByTestId('history');
  await eventually(async () => {
    await applyFilters(page);
    return (await history.locator('tr', { hasText: agent }).count()) > 0;
  }, 'the curl request in the history');
  const cells = await history.locator('tr', { hasText: agent }).first().locator('td').allTextContents();
  assert.equal(cells[1], '200');
  assert.equal(cells[2], agent);
  await screenshot(page, 'endpoint');

  // The status filter: the 404 of the other template, found by its own page.
  await page.goto(`${BASE}/console#/endpoint/${encodeURIComponent('GET /v1/api-keys/{key_id}')}`);
  await page.getByRole('heading', { level: 1, name: 'GET /v1/api-keys/{key_id}' }).waitFor();
  await page.getByLabel('Status').fill('404');
  await eventually(async () => {
    await applyFilters(page);
    return (await history.locator('tr', { hasText: agent }).count()) > 0;
  }, 'the 404 in the history');
  const statuses = await history.locator('tbody tr td:nth-child(2)').allTextContents();
  assert.ok(statuses.every((s) => s === '404'), statuses.join());
  await context.close();
});

test('the key filter and "load more" page through an endpoint\'s history by cursor', async () => {
  const key = await newKey(['read'], 'busy');
  for (let i = 0; i < 55; i += 1) await api('GET', `/v1/api-keys/${key.key_id}`, key.api_key);
  await eventually(async () => (await api('GET', '/v1/usage', ADMIN_KEY)).body.by_key[key.key_id] >= 55,
    'the 55 requests metered');
  const { context, page } = await open();
  await signIn(page, ADMIN_KEY);
  const template = 'GET /v1/api-keys/{key_id}';
  await page.goto(`${BASE}/console#/endpoint/${encodeURIComponent(template)}`);
  await page.getByRole('heading', { level: 1, name: template }).waitFor();
  await page.getByLabel('Key').selectOption(key.key_id);
  await applyFilters(page);
  const rows = page.getByTestId('history').locator('tbody tr');
  assert.equal(await rows.count(), 50);
  await page.getByRole('button', { name: 'Load more' }).click();
  await page.locator('[data-testid=history][aria-busy=false]').waitFor();
  await page.getByRole('button', { name: 'Load more' }).waitFor({ state: 'hidden' });
  assert.equal(await rows.count(), 55);
  const keys = await page.getByTestId('history').locator('tbody tr td:nth-child(4)').allTextContents();
  assert.ok(keys.every((k) => k === key.key_id));
  await context.close();
});

test('the monthly count on an endpoint page and the usage page equal GET /v1/usage', async () => {
  const template = 'GET /v1/api-keys/{key_id}';
  const key = await newKey(['read'], 'counted');
  for (let i = 0; i < 3; i += 1) await api('GET', `/v1/api-keys/${key.key_id}`, key.api_key);
  // Only this test's key calls this template now; wait until all three are counted.
  const usage = await eventually(async () => {
    const u = (await api('GET', '/v1/usage', ADMIN_KEY)).body;
    return u.by_key[key.key_id] >= 3 ? u : null;
  }, 'the three requests in /v1/usage');
  const { context, page } = await open();
  await signIn(page, ADMIN_KEY);
  await page.goto(`${BASE}/console#/endpoint/${encodeURIComponent(template)}`);
  await page.getByRole('heading', { level: 1, name: template }).waitFor();
  const shown = await page.getByTestId('month-count').textContent();
  assert.equal(shown, `${usage.by_endpoint[template]} Requests This Month`);

  await page.getByRole('link', { name: 'Usage', exact: true }).click();
  await page.getByTestId('usage-total').waitFor();
  const byKey = page.getByRole('table', { name: 'By key' });
  assert.equal(await byKey.locator('tr', { hasText: key.key_id }).locator('td').nth(1).textContent(), '3');
  assert.equal(await byKey.locator('tr', { hasText: key.key_id }).locator('meter').getAttribute('value'), '3');
  const byDay = page.getByRole('table', { name: 'By day' });
  const today = new Date().toISOString().slice(0, 10);
  const now = (await api('GET', '/v1/usage', ADMIN_KEY)).body;
  const dayShown = Number(await byDay.locator('tr', { hasText: today }).locator('td').nth(1).textContent());
  assert.ok(dayShown >= usage.by_day[today] && dayShown <= now.by_day[today], `${dayShown}`);
  assert.equal(await page.getByTestId('quota').textContent(), 'This account has no monthly quota.');
  assert.equal(await page.locator('svg.chart rect.bar').count(), Number(new Date(Date.UTC(
    new Date().getUTCFullYear(), new Date().getUTCMonth() + 1, 0)).getUTCDate()));
  await screenshot(page, 'usage');
  await context.close();
});

test('a read-only key sees no create, edit, rotate, revoke or audit log', async () => {
  const reader = await newKey(['read'], 'reader');
  const { context, page } = await open();
  await signIn(page, reader.api_key);
  await page.getByTestId('keys').waitFor();
  for (const name of [/^Create key/, /^Edit/, /^Rotate/, /^Revoke/, /^Disable/, /^Enable/]) {
    assert.equal(await page.getByRole('button', { name }).count(), 0, String(name));
  }
  assert.equal(await page.getByRole('link', { name: 'Audit log' }).count(), 0);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('API key').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await context.close();
});

test('a key revoked while signed in returns the console to sign-in with the reason', async () => {
  const key = await newKey(['read'], 'short-lived');
  const { context, page } = await open();
  await signIn(page, key.api_key);
  await page.getByTestId('keys').waitFor();
  assert.equal((await api('DELETE', `/v1/api-keys/${key.key_id}`, ADMIN_KEY)).status, 204);
  await page.getByRole('link', { name: 'Usage', exact: true }).click();
  await page.getByRole('alert').filter({ hasText: 'INVALID_API_KEY' }).waitFor();
  await page.getByLabel('API key').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await context.close();
});

test('the CSP header holds and every page loads only from keyward, with no violation', async () => {
  const { context, page, requests } = await open();
  const response = await page.goto(`${BASE}/console`);
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.match(csp, /object-src 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
  await signIn(page, ADMIN_KEY);
  for (const link of ['Keys', 'Endpoints', 'Usage', 'Audit log']) {
    await page.getByRole('link', { name: link, exact: true }).click();
    await page.getByRole('heading', { level: 1, name: link }).waitFor();
  }
  await page.getByRole('table').first().waitFor();
  await screenshot(page, 'audit-log');
  assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
  const outside = requests.filter((url) => new URL(url).origin !== new URL(BASE).origin);
  assert.deepEqual(outside, []);
  // Inline script is refused by the policy, as it would be for injected markup.
  const ran = await page.evaluate(() => {
    window.__inline = false;
    const s = document.createElement('script');
    s.textContent = 'window.__inline = true';
    document.body.append(s);
    return window.__inline;
  });
  assert.equal(ran, false);
  await context.close();
});

test('every page passes axe with no serious or critical violation', async () => {
  const { context, page } = await open();
  await signIn(page, ADMIN_KEY);
  const pages = [['Keys', 'Keys'], ['Endpoints', 'Endpoints'], ['Usage', 'Usage'], ['Audit log', 'Audit log']];
  const found = [];
  const audit = async (name) => {
    await page.evaluate(AXE);
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
    for (const v of result.violations) {
      if (v.impact === 'serious' || v.impact === 'critical') found.push(`${name}: ${v.id} ${v.nodes.map((n) => n.target).join(' ')}`);
    }
  };
  for (const [link, heading] of pages) {
    await page.getByRole('link', { name: link, exact: true }).click();
    await page.getByRole('heading', { level: 1, name: heading }).waitFor();
    await audit(link);
  }
  await page.getByRole('link', { name: 'Keys', exact: true }).click();
  await page.getByRole('button', { name: 'Create key' }).click();
  await audit('create dialog');
  await page.goto(`${BASE}/console#/endpoint/${encodeURIComponent('GET /v1/api-keys')}`);
  await page.getByRole('heading', { level: 1, name: 'GET /v1/api-keys', exact: true }).waitFor();
  await page.getByTestId('history').waitFor();
  await audit('endpoint');
  assert.deepEqual(found, []);
  await context.close();
});

test('the console works from the keyboard and fits a 320 px wide screen', async () => {
  const { context, page } = await open({ width: 320, height: 640 });
  await page.goto(`${BASE}/console`);
  // Each page puts the focus on its content, so the first Tab reaches the key's field.
  await page.getByLabel('API key').waitFor();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.name), 'api_key');
  await page.keyboard.type(ADMIN_KEY);
  await page.keyboard.press('Enter');
  await page.getByTestId('keys').waitFor();
  await screenshot(page, 'narrow-keys');
  for (const link of ['Keys', 'Endpoints', 'Usage', 'Audit log']) {
    await page.getByRole('link', { name: link, exact: true }).click();
    await page.getByRole('heading', { level: 1, name: link }).waitFor();
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 320, `${link} is ${width} px wide`);
  }
  // The nav links are reachable by Tab and open their page with Enter.
  await page.getByRole('link', { name: 'Keys' }).focus();
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { level: 1, name: 'Keys' }).waitFor();
  await context.close();
});

test('page weight: the first load of /console', async () => {
  const { context, page } = await open();
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  let bytes = 0;
  cdp.on('Network.loadingFinished', (e) => { bytes += e.encodedDataLength; });
  await page.goto(`${BASE}/console`, { waitUntil: 'networkidle' });
  assert.ok(bytes > 0);
  console.log(`console first load: ${bytes} bytes transferred`);
  await context.close();
});
