// keyward's web console (API.md §Console): a client of the public API only. The key
// lives in this tab's sessionStorage; every page is built from API answers.

import { ApiError, client, withQuery } from './api.js';
import { barChart } from './chart.js';

const KEY_ITEM = 'keyward.api_key';
const main = document.getElementById('main');
const nav = document.getElementById('nav');
const signOutButton = document.getElementById('sign-out');
const status = document.getElementById('status');

/** What the signed-in key may do, and what the API offers. */
const session = { api: null, keyId: null, scopes: [], doc: {}, paths: new Set(), schemas: {} };

// ---- DOM helpers -------------------------------------------------------------------

/** An element with attributes (`on…` functions become listeners) and children. */
function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      node.addEventListener(name.slice(2), value);
    } else if (value === true) {
      node.setAttribute(name, '');
    } else {
      node.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

let nextId = 0;
/** A labelled control: `<label>` tied to the control by id. */
function field(label, control, hint) {
  nextId += 1;
  control.id = control.id || `f${nextId}`;
  const parts = [h('label', { for: control.id }, label), control];
  if (hint) {
    const hintId = `${control.id}-hint`;
    control.setAttribute('aria-describedby', hintId);
    parts.push(h('small', { id: hintId }, hint));
  }
  return h('div', { class: 'field' }, parts);
}

function say(message) {
  status.textContent = message;
}

function errorText(error) {
  if (!(error instanceof ApiError)) return String(error.message || error);
  const detail = error.details.field
    ? ` (${error.details.field}${error.details.reason ? `: ${error.details.reason}` : ''})`
    : error.details.reason
      ? ` (${error.details.reason})`
      : error.details.required
        ? ` (needs ${[].concat(error.details.required).join(', ')})`
        : '';
  return `${error.code}: ${error.message}${detail}`;
}

function alertBox(message) {
  return h('p', { class: 'error', role: 'alert' }, message);
}

function can(scope) {
  return session.scopes.includes(scope);
}

function time(value) {
  return value ? h('time', { datetime: value }, value.replace('T', ' ').replace('Z', ' UTC')) : '—';
}

function monthNow() {
  return new Date().toISOString().slice(0, 7);
}

function page(title, ...children) {
  main.replaceChildren(h('h1', {}, title), ...children);
  document.title = `${title} · keyward console`;
  main.focus();
}

function openDialog(title, body, actions) {
  nextId += 1;
  const titleId = `dialog-${nextId}`;
  const dialog = h('dialog', { 'aria-labelledby': titleId },
    h('h2', { id: titleId }, title), body, h('div', { class: 'actions' }, actions));
  document.body.append(dialog);
  dialog.addEventListener('close', () => dialog.remove());
  dialog.showModal();
  return dialog;
}

/** Shows a secret once, with a copy button and a warning; it is in no other place. */
function showSecret(title, secret) {
  const value = h('code', { class: 'secret', 'data-testid': 'secret' }, secret);
  const copy = h('button', {
    type: 'button',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(secret);
        say('Copied to the clipboard.');
      } catch {
        say('Copy failed: select the key and copy it by hand.');
      }
    },
  }, 'Copy');
  const done = h('button', { type: 'button', class: 'primary' }, 'I have stored it');
  const dialog = openDialog(title, [
    h('p', { class: 'warning' }, 'This is the only time the secret is shown. Store it now: keyward keeps only a digest and cannot show it again.'),
    h('p', {}, value), copy,
  ], [done]);
  done.addEventListener('click', () => dialog.close());
}

function confirmDialog(title, text, label) {
  return new Promise((resolve) => {
    const yes = h('button', { type: 'button', class: 'danger' }, label);
    const no = h('button', { type: 'button' }, 'Cancel');
    const dialog = openDialog(title, h('p', {}, text), [no, yes]);
    let answer = false;
    yes.addEventListener('click', () => { answer = true; dialog.close(); });
    no.addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', () => resolve(answer));
  });
}

// ---- sign in -----------------------------------------------------------------------

function signInPage(reason) {
  nav.hidden = true;
  signOutButton.hidden = true;
  const input = h('input', { type: 'password', name: 'api_key', autocomplete: 'off', required: true, spellcheck: 'false' });
  const form = h('form', { class: 'card' },
    reason ? alertBox(reason) : null,
    field('API key', input, 'Kept in this tab only (sessionStorage); signing out forgets it.'),
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    try {
      await start(key);
      sessionStorage.setItem(KEY_ITEM, key);
      route();
    } catch (error) {
      signInPage(`Sign-in failed: ${errorText(error)}`);
    }
  });
  page('Sign in', form);
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_ITEM);
  session.api = null;
  session.scopes = [];
  if (location.hash) history.replaceState(null, '', location.pathname);
  signInPage(reason);
}

/** Checks the key (validate: its id and scopes) and what the API offers (its document). */
async function start(key) {
  const api = client(key, (error) => signOut(`Signed out: ${errorText(error)}`));
  const answer = await client(key).post('/v1/api-keys/validate');
  if (!answer.valid) throw new Error(`this key is ${answer.reason.replace('_', ' ')}`);
  const doc = await fetch('/openapi.json', { credentials: 'omit' }).then((r) => r.json());
  session.api = api;
  session.keyId = answer.key_id;
  session.scopes = answer.scopes;
  session.doc = doc;
  session.paths = new Set(Object.keys(doc.paths || {}));
  session.schemas = (doc.components && doc.components.schemas) || {};
  buildNav();
}

function buildNav() {
  const links = [['#/keys', 'Keys'], ['#/endpoints', 'Endpoints'], ['#/usage', 'Usage']];
  if (can('admin')) {
    links.push(['#/audit', 'Audit log']);
    if (session.paths.has('/v1/webhooks')) links.push(['#/webhooks', 'Webhooks']);
  }
  nav.replaceChildren(h('ul', {}, links.map(([href, text]) => h('li', {}, h('a', { href }, text)))));
  nav.hidden = false;
  signOutButton.hidden = false;
}

// ---- keys --------------------------------------------------------------------------

const KEY_COLUMNS = [
  ['name', 'Name'], ['key_id', 'Key ID'], ['scopes', 'Scopes'], ['status', 'Status'],
  ['last_used', 'Last used'], ['created_at', 'Created'], ['expires_at', 'Expires'],
];
const keySort = { column: 'created_at', ascending: true };

/** The key policies the create request offers (API.md §Key policies), if any. */
function offeredPolicies() {
  const create = Object.values(session.schemas).find((s) => s.properties && s.properties.scopes && s.properties.expires_in);
  const props = (create && create.properties) || {};
  return ['rate_limit', 'credits', 'allowed_ips', 'expire_after_inactive_days'].filter((p) => p in props);
}

async function keysPage() {
  page('Keys', h('p', {}, 'Loading…'));
  const { api_keys: keys } = await session.api.get('/v1/api-keys');
  const sorted = [...keys].sort((a, b) => {
    const x = JSON.stringify(a[keySort.column] ?? '');
    const y = JSON.stringify(b[keySort.column] ?? '');
    return (x < y ? -1 : x > y ? 1 : 0) * (keySort.ascending ? 1 : -1);
  });
  const head = h('tr', {}, KEY_COLUMNS.map(([column, label]) => {
    const sortState = keySort.column === column ? (keySort.ascending ? 'ascending' : 'descending') : 'none';
    return h('th', { scope: 'col', 'aria-sort': sortState },
      h('button', {
        type: 'button',
        class: 'sort',
        onclick: () => {
          keySort.ascending = keySort.column === column ? !keySort.ascending : true;
          keySort.column = column;
          keysPage().catch(show);
        },
      }, label));
  }), can('write') ? h('th', { scope: 'col' }, 'Actions') : null);
  const rows = sorted.map((key) => h('tr', { 'data-key-id': key.key_id },
    h('td', {}, key.name ?? '—'),
    h('td', {}, h('code', {}, key.key_id)),
    h('td', {}, key.scopes.join(', ')),
    h('td', {}, h('span', { class: `status ${key.status}` }, key.status)),
    h('td', {}, time(key.last_used)),
    h('td', {}, time(key.created_at)),
    h('td', {}, time(key.expires_at)),
    can('write') ? h('td', { class: 'actions' }, keyActions(key)) : null));
  const table = h('table', { 'data-testid': 'keys' },
    h('caption', {}, `${keys.length} key${keys.length === 1 ? '' : 's'} of this account`),
    h('thead', {}, head), h('tbody', {}, rows));
  page('Keys',
    can('write') ? h('button', { type: 'button', class: 'primary', onclick: () => createDialog() }, 'Create key') : null,
    h('div', { class: 'scroll' }, table));
}

function keyActions(key) {
  const own = key.key_id === session.keyId;
  const label = key.name || key.key_id;
  const buttons = [h('button', { type: 'button', onclick: () => editDialog(key), 'aria-label': `Edit ${label}` }, 'Edit')];
  if (!own && key.status !== 'expired') {
    const enable = key.status === 'inactive';
    buttons.push(h('button', {
      type: 'button',
      'aria-label': `${enable ? 'Enable' : 'Disable'} ${label}`,
      onclick: () => act(() => session.api.patch(`/v1/api-keys/${key.key_id}`, { status: enable ? 'active' : 'inactive' }), enable ? 'Key enabled.' : 'Key disabled.'),
    }, enable ? 'Enable' : 'Disable'));
  }
  buttons.push(h('button', { type: 'button', onclick: () => rotateDialog(key), 'aria-label': `Rotate ${label}` }, 'Rotate'));
  if (!own) {
    buttons.push(h('button', {
      type: 'button',
      class: 'danger',
      'aria-label': `Revoke ${label}`,
      onclick: async () => {
        if (await confirmDialog('Revoke key', `Revoke ${label}? It stops working at once and cannot be restored.`, 'Revoke')) {
          await act(() => session.api.del(`/v1/api-keys/${key.key_id}`), 'Key revoked.');
        }
      },
    }, 'Revoke'));
  }
  return buttons;
}

async function act(change, done) {
  try {
    await change();
    say(done);
    await keysPage();
  } catch (error) {
    show(error);
  }
}

function scopesInput(value) {
  return h('input', { type: 'text', name: 'scopes', value: value.join(', '), required: true, spellcheck: 'false' });
}

function parseScopes(text) {
  return text.split(',').map((s) => s.trim()).filter(Boolean);
}

function metadataInput(value) {
  const area = h('textarea', { name: 'metadata', rows: 3, spellcheck: 'false' });
  area.value = value ? JSON.stringify(value, null, 2) : '';
  return area;
}

function parseMetadata(text) {
  if (!text.trim()) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new Error('metadata must be a JSON object');
  }
}

/** A form in a dialog; `submit(form)` returns a promise, and its error shows in the form. */
function formDialog(title, fields, label, submit) {
  const error = h('div', { 'aria-live': 'assertive' });
  const cancel = h('button', { type: 'button' }, 'Cancel');
  const ok = h('button', { type: 'submit', class: 'primary' }, label);
  const form = h('form', { method: 'dialog' }, error, fields, h('div', { class: 'actions' }, cancel, ok));
  const dialog = openDialog(title, form, []);
  cancel.addEventListener('click', () => dialog.close());
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    ok.disabled = true;
    try {
      await submit(form);
      dialog.close();
    } catch (e) {
      error.replaceChildren(alertBox(errorText(e)));
      ok.disabled = false;
    }
  });
}

function createDialog() {
  const name = h('input', { type: 'text', name: 'name', maxlength: 100 });
  const scopes = scopesInput(['read']);
  const expires = h('input', { type: 'datetime-local', name: 'expires_at' });
  const metadata = metadataInput(null);
  const fields = [
    field('Name', name),
    field('Scopes', scopes, 'Comma-separated, e.g. read, write'),
    field('Expires (your local time)', expires, 'Leave empty for a key that does not expire'),
    field('Metadata (JSON object)', metadata),
  ];
  const policies = offeredPolicies();
  const policyInputs = {};
  if (policies.includes('rate_limit')) {
    policyInputs.per_minute = h('input', { type: 'number', min: 1, name: 'per_minute' });
    policyInputs.per_day = h('input', { type: 'number', min: 1, name: 'per_day' });
    fields.push(field('Rate limit per minute', policyInputs.per_minute), field('Rate limit per day', policyInputs.per_day));
  }
  if (policies.includes('credits')) {
    policyInputs.credits = h('input', { type: 'number', min: 0, name: 'credits' });
    fields.push(field('Credits', policyInputs.credits, 'Requests this key may make; empty for no credit limit'));
  }
  if (policies.includes('allowed_ips')) {
    policyInputs.allowed_ips = h('input', { type: 'text', name: 'allowed_ips' });
    fields.push(field('Allowed IPs', policyInputs.allowed_ips, 'Comma-separated addresses or CIDR ranges'));
  }
  if (policies.includes('expire_after_inactive_days')) {
    policyInputs.inactive = h('input', { type: 'number', min: 1, name: 'expire_after_inactive_days' });
    fields.push(field('Expire after days unused', policyInputs.inactive));
  }
  formDialog('Create key', fields, 'Create', async () => {
    const body = { scopes: parseScopes(scopes.value) };
    if (name.value.trim()) body.name = name.value.trim();
    if (expires.value) body.expires_at = new Date(expires.value).toISOString().replace(/\.\d+Z$/, 'Z');
    const meta = parseMetadata(metadata.value);
    if (meta !== undefined) body.metadata = meta;
    const number = (input) => (input && input.value !== '' ? Number(input.value) : null);
    if (number(policyInputs.per_minute) !== null || number(policyInputs.per_day) !== null) {
      body.rate_limit = { per_minute: number(policyInputs.per_minute), per_day: number(policyInputs.per_day) };
    }
    if (number(policyInputs.credits) !== null) body.credits = { remaining: number(policyInputs.credits), refill: null };
    if (policyInputs.allowed_ips && policyInputs.allowed_ips.value.trim()) body.allowed_ips = parseScopes(policyInputs.allowed_ips.value);
    if (number(policyInputs.inactive) !== null) body.expire_after_inactive_days = number(policyInputs.inactive);
    const created = await session.api.post('/v1/api-keys', body);
    await keysPage();
    showSecret(`Key ${created.name || created.key_id} created`, created.api_key);
  });
}

function editDialog(key) {
  const name = h('input', { type: 'text', name: 'name', maxlength: 100, value: key.name ?? '' });
  const own = key.key_id === session.keyId;
  const scopes = scopesInput(key.scopes);
  if (own) scopes.readOnly = true;
  const expires = h('input', { type: 'datetime-local', name: 'expires_at' });
  if (key.expires_at) {
    const local = new Date(key.expires_at);
    expires.value = new Date(local.getTime() - local.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }
  const metadata = metadataInput(key.metadata);
  formDialog(`Edit ${key.name || key.key_id}`, [
    field('Name', name),
    field('Scopes', scopes, own ? 'A key cannot change its own scopes' : 'Comma-separated'),
    field('Expires (your local time)', expires, 'Empty: never'),
    field('Metadata (JSON object)', metadata),
  ], 'Save', async () => {
    const full = await session.api.get(`/v1/api-keys/${key.key_id}`);
    const newMetadata = parseMetadata(metadata.value) ?? {};
    const body = {};
    const newName = name.value.trim() || null;
    if (newName !== full.name) body.name = newName;
    const newScopes = parseScopes(scopes.value);
    if (!own && newScopes.join() !== full.scopes.join()) body.scopes = newScopes;
    const newExpiry = expires.value ? new Date(expires.value).toISOString().replace(/\.\d+Z$/, 'Z') : null;
    if ((newExpiry ?? '').slice(0, 16) !== (full.expires_at ?? '').slice(0, 16)) body.expires_at = newExpiry;
    if (JSON.stringify(newMetadata) !== JSON.stringify(full.metadata ?? {})) body.metadata = newMetadata;
    if (Object.keys(body).length) await session.api.patch(`/v1/api-keys/${key.key_id}`, body);
    say('Key saved.');
    await keysPage();
  });
}

function rotateDialog(key) {
  const grace = h('input', { type: 'number', name: 'grace_period_seconds', min: 0, max: 604800, value: 0 });
  formDialog(`Rotate ${key.name || key.key_id}`, [
    h('p', {}, 'A new secret is issued for the same key. The old one keeps working for the grace period, then never again.'),
    field('Grace period (seconds)', grace, '0 to 604800 (7 days)'),
  ], 'Rotate', async () => {
    const rotated = await session.api.post(`/v1/api-keys/${key.key_id}/rotate`, { grace_period_seconds: Number(grace.value || 0) });
    await keysPage();
    showSecret(`New secret of ${rotated.name || rotated.key_id}`, rotated.api_key);
  });
}

// ---- endpoints ---------------------------------------------------------------------

async function endpointsPage() {
  const usage = await session.api.get('/v1/usage');
  const templates = new Set(Object.keys(usage.by_endpoint));
  for (const [path, item] of Object.entries(session.doc.paths || {})) {
    if (!path.startsWith('/v1/')) continue;
    for (const method of Object.keys(item)) {
      if (['get', 'post', 'patch', 'put', 'delete'].includes(method)) templates.add(`${method.toUpperCase()} ${path}`);
    }
  }
  const list = [...templates].sort((a, b) => (usage.by_endpoint[b] ?? 0) - (usage.by_endpoint[a] ?? 0) || a.localeCompare(b));
  page('Endpoints',
    h('p', {}, `Route templates of keyward and of the platform, with their requests in ${usage.month} (UTC).`),
    h('div', { class: 'scroll' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Endpoint'), h('th', { scope: 'col', class: 'num' }, 'Requests this month'))),
      h('tbody', {}, list.map((template) => h('tr', {},
        h('td', {}, h('a', { href: `#/endpoint/${encodeURIComponent(template)}` }, template)),
        h('td', { class: 'num' }, String(usage.by_endpoint[template] ?? 0))))))));
}

async function endpointPage(template) {
  const usage = await session.api.get('/v1/usage');
  const { api_keys: keys } = await session.api.get('/v1/api-keys');
  const count = usage.by_endpoint[template] ?? 0;
  const statusInput = h('input', { type: 'number', name: 'status', min: 100, max: 599, inputmode: 'numeric' });
  const keySelect = h('select', { name: 'key_id' }, h('option', { value: '' }, 'Any key'),
    keys.map((k) => h('option', { value: k.key_id }, k.name ? `${k.name} (${k.key_id})` : k.key_id)));
  const body = h('tbody', {});
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  const problem = h('div', { 'aria-live': 'assertive' });
  const table = h('table', { 'data-testid': 'history', 'aria-busy': 'true' },
    h('thead', {}, h('tr', {}, ['Time', 'Status', 'User agent', 'Key'].map((t) => h('th', { scope: 'col' }, t)))), body);
  let cursor = null;
  let latest = 0;
  async function load(reset) {
    problem.replaceChildren();
    // Only the newest load shows: an older answer arriving late is dropped. The table
    // is busy until it arrives.
    latest += 1;
    const mine = latest;
    table.setAttribute('aria-busy', 'true');
    try {
      const answer = await session.api.get(withQuery('/v1/request-history', {
        endpoint: template, status: statusInput.value, key_id: keySelect.value, limit: 50, before: reset ? null : cursor,
      }));
      if (mine !== latest) return;
      table.setAttribute('aria-busy', 'false');
      if (reset) body.replaceChildren();
      for (const r of answer.requests) {
        body.append(h('tr', {}, h('td', {}, time(r.time)), h('td', {}, String(r.status)),
          h('td', {}, r.user_agent ?? '—'), h('td', {}, h('code', {}, r.key_id))));
      }
      if (reset && !answer.requests.length) body.append(h('tr', {}, h('td', { colspan: 4 }, 'No requests.')));
      cursor = answer.next_before;
      more.hidden = !cursor;
    } catch (error) {
      if (mine === latest) table.setAttribute('aria-busy', 'false');
      problem.replaceChildren(alertBox(errorText(error)));
    }
  }
  more.addEventListener('click', () => load(false));
  const filters = h('form', { class: 'filters' }, field('Status', statusInput), field('Key', keySelect),
    h('button', { type: 'submit' }, 'Apply filters'));
  filters.addEventListener('submit', (event) => { event.preventDefault(); load(true); });
  page(template,
    h('p', { class: 'big', 'data-testid': 'month-count' }, h('strong', {}, String(count)), ' Requests This Month'),
    h('h2', {}, 'Request History'), filters, problem,
    h('div', { class: 'scroll' }, table),
    more);
  await load(true);
}

// ---- usage -------------------------------------------------------------------------

async function usagePage(month) {
  const usage = await session.api.get(withQuery('/v1/usage', { month }));
  const [year, mon] = usage.month.split('-').map(Number);
  const days = new Date(Date.UTC(year, mon, 0)).getUTCDate();
  const points = [];
  for (let d = 1; d <= days; d += 1) {
    const day = `${usage.month}-${String(d).padStart(2, '0')}`;
    points.push({ label: day, short: String(d), value: usage.by_day[day] ?? 0 });
  }
  const monthInput = h('input', { type: 'month', name: 'month', value: usage.month, required: true });
  const picker = h('form', { class: 'filters' }, field('Month', monthInput), h('button', { type: 'submit' }, 'Show'));
  picker.addEventListener('submit', (event) => {
    event.preventDefault();
    location.hash = `#/usage/${monthInput.value}`;
  });
  const quota = usage.quota
    ? h('p', { 'data-testid': 'quota' }, `Monthly quota: ${usage.quota.per_month}, of which ${usage.quota.remaining} left.`)
    : h('p', { 'data-testid': 'quota' }, 'This account has no monthly quota.');
  // Each row's share of the month, drawn by the browser's own <meter> (no inline style).
  const total = Math.max(1, usage.requests_this_month);
  const table = (title, entries, first) => h('div', { class: 'scroll' }, h('table', {},
    h('caption', {}, title),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, first), h('th', { scope: 'col', class: 'num' }, 'Requests'),
      h('th', { scope: 'col' }, 'Share of the month'))),
    h('tbody', {}, Object.entries(entries).sort((a, b) => b[1] - a[1]).map(([name, n]) =>
      h('tr', {}, h('td', {}, name), h('td', { class: 'num' }, String(n)),
        h('td', {}, h('meter', { min: 0, max: total, value: n, 'aria-label': `${name}: ${Math.round((n / total) * 100)} %` })))))));
  page('Usage', picker,
    h('p', { class: 'big', 'data-testid': 'usage-total' }, h('strong', {}, String(usage.requests_this_month)), ` requests in ${usage.month} (UTC)`),
    quota,
    h('h2', {}, 'Requests per day'),
    h('figure', {}, barChart(points, `Requests per day in ${usage.month}`),
      h('figcaption', {}, 'Days of the month, UTC.')),
    table('By day', Object.fromEntries(points.filter((p) => p.value).map((p) => [p.label, p.value])), 'Day'),
    table('By endpoint', usage.by_endpoint, 'Endpoint'),
    table('By key', usage.by_key, 'Key'));
}

// ---- audit log and webhooks --------------------------------------------------------

function actorText(event) {
  if (event.actor && typeof event.actor === 'object') return `${event.actor.type}${event.actor.id ? ` ${event.actor.id}` : ''}`;
  return event.actor_key_id ?? 'operator';
}

async function pagedTable(title, path, listName, columns) {
  const body = h('tbody', {});
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  let cursor = null;
  async function load() {
    const answer = await session.api.get(withQuery(path, { limit: 50, before: cursor }));
    for (const item of answer[listName]) body.append(h('tr', {}, columns.map(([, cell]) => h('td', {}, cell(item)))));
    if (!body.children.length) body.append(h('tr', {}, h('td', { colspan: columns.length }, 'Nothing yet.')));
    cursor = answer.next_before;
    more.hidden = !cursor;
  }
  more.addEventListener('click', () => load().catch(show));
  await load();
  page(title, h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, columns.map(([name]) => h('th', { scope: 'col' }, name)))), body)), more);
}

function auditPage() {
  return pagedTable('Audit log', '/v1/audit-log', 'events', [
    ['Time', (e) => time(e.time)],
    ['Action', (e) => e.action],
    ['Actor', actorText],
    ['Key', (e) => h('code', {}, e.key_id ?? '—')],
    ['Changes', (e) => h('code', { class: 'changes' }, JSON.stringify(e.changes))],
  ]);
}

async function webhooksPage() {
  const answer = await session.api.get('/v1/webhooks');
  const hooks = answer.webhooks || answer.data || [];
  const rows = [];
  for (const hook of hooks) {
    const id = hook.webhook_id || hook.id;
    let deliveries = [];
    const deliveriesPath = `/v1/webhooks/${id}/deliveries`;
    if (session.paths.has('/v1/webhooks/{webhook_id}/deliveries')) {
      const d = await session.api.get(deliveriesPath);
      deliveries = d.deliveries || [];
    }
    rows.push(h('section', {}, h('h2', {}, hook.url || id),
      h('p', {}, `Events: ${(hook.events || []).join(', ') || 'all'}`),
      h('div', { class: 'scroll' }, h('table', {},
        h('caption', {}, 'Deliveries'),
        h('thead', {}, h('tr', {}, ['Time', 'Event', 'Status', 'Attempts'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, deliveries.map((d) => h('tr', {}, h('td', {}, time(d.time || d.created_at)),
          h('td', {}, d.event || d.type || '—'), h('td', {}, String(d.status ?? '—')), h('td', {}, String(d.attempts ?? '—')))))))));
  }
  page('Webhooks', hooks.length ? rows : h('p', {}, 'No webhooks.'));
}

// ---- routing -----------------------------------------------------------------------

function show(error) {
  if (error instanceof ApiError && error.status === 401) return;
  main.append(alertBox(errorText(error)));
}

async function route() {
  if (!session.api) return;
  const hash = location.hash || '#/keys';
  const [, name, arg] = hash.match(/^#\/([a-z]+)\/?(.*)$/) || [];
  for (const link of nav.querySelectorAll('a')) {
    if (link.getAttribute('href') === `#/${name}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  try {
    if (name === 'endpoints') await endpointsPage();
    else if (name === 'endpoint') await endpointPage(decodeURIComponent(arg));
    else if (name === 'usage') await usagePage(arg || monthNow());
    else if (name === 'audit' && can('admin')) await auditPage();
    else if (name === 'webhooks' && can('admin')) await webhooksPage();
    else await keysPage();
  } catch (error) {
    show(error);
  }
}

signOutButton.addEventListener('click', () => signOut('Signed out.'));
window.addEventListener('hashchange', route);

const stored = sessionStorage.getItem(KEY_ITEM);
if (stored) {
  start(stored).then(route, (error) => signOut(`Signed out: ${errorText(error)}`));
} else {
  signInPage();
}
