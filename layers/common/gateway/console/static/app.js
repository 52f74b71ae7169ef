/* Multi-LLM console: a small hand-written app, no framework, no build step.
 *
 * Sign-in: OAuth 2.0 Authorization Code + PKCE (S256) against the configured identity provider
 * (Cognito's hosted UI, or the local one under `make dev`). The ID token is kept in this tab's
 * sessionStorage and sent as `Authorization: Bearer` to the API on the same origin; no cookie
 * carries authority. DOM is built with createElement/textContent only (the CSP enforces Trusted
 * Types, so an HTML string could not be assigned anyway). Money arrives as exact decimal strings
 * and is formatted as strings; numbers are used only to scale charts.
 */
(() => {
  'use strict';

  const CONFIG = JSON.parse(document.querySelector('meta[name="mlp:config"]').content);
  const BASE = CONFIG.base_path;
  const ORIGIN = window.location.origin;
  const CALLBACK = ORIGIN + BASE + '/callback';
  const STORE = window.sessionStorage;
  const PLAYGROUND_KEY_NAME = 'Console playground';
  const main = document.getElementById('main');
  const statusEl = document.getElementById('status');
  const nav = document.getElementById('nav');
  const account = document.getElementById('account');
  const cache = {};

  // ------------------------------------------------------------------ DOM helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    append(el, children);
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
  }
  function append(el, ...children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function field(label, input, hint) {
    const id = input.id || ('f-' + Math.random().toString(36).slice(2, 9));
    input.id = id;
    return h('div', null, h('label', { for: id }, label, hint ? h('span', { class: 'hint' }, ' ' + hint) : null), input);
  }

  // ------------------------------------------------------------------ formatting
  /** "24.99999100" -> "$24.999991"; exact (string based), 2 to 8 decimals, thousands separated. */
  function usd(value, minDecimals = 2) {
    if (value === null || value === undefined || value === '') return '—';
    let str = String(value);
    const negative = str.startsWith('-');
    if (negative) str = str.slice(1);
    let [int, frac = ''] = str.split('.');
    frac = frac.replace(/0+$/, '');
    while (frac.length < minDecimals) frac += '0';
    int = int.replace(/^0+(?=\d)/, '').replace(/\B(?=(\d{3})+(?!\d))/g, ',');
    return (negative ? '−$' : '$') + int + (frac ? '.' + frac : '');
  }
  /** Exact sums of money strings: 1e-8 USD units as BigInt (the API's 8 decimals). */
  function units(value) {
    const [i, f = ''] = String(value || '0').replace('-', '').split('.');
    const u = BigInt(i || '0') * 100000000n + BigInt((f + '00000000').slice(0, 8));
    return String(value).startsWith('-') ? -u : u;
  }
  function fromUnits(u) {
    const neg = u < 0n;
    const a = neg ? -u : u;
    return (neg ? '-' : '') + (a / 100000000n).toString() + '.' + (a % 100000000n).toString().padStart(8, '0');
  }
  const sumMoney = (values) => fromUnits(values.reduce((acc, v) => acc + units(v), 0n));
  /** Price per token (string) -> "$x.xx / M tokens" (display only). */
  function perMillion(perToken) {
    if (perToken === undefined || perToken === null) return '—';
    const n = Number(perToken) * 1e6;
    if (n === 0) return 'free';
    return '$' + (n >= 100 ? n.toFixed(0) : n >= 1 ? n.toFixed(2) : n.toPrecision(3));
  }
  const int = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));
  function when(iso) {
    if (!iso) return 'never';
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  }
  const day = (iso) => (iso ? new Date(iso).toLocaleDateString(undefined, { dateStyle: 'medium' }) : '—');
  const isoDate = (d) => d.toISOString().slice(0, 10);
  function b64url(bytes) {
    let bin = '';
    for (const b of new Uint8Array(bytes)) bin += String.fromCharCode(b);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  const randomToken = (n) => b64url(crypto.getRandomValues(new Uint8Array(n)));

  // ------------------------------------------------------------------ status line (progress and errors in words)
  let statusTimer = null;
  function announce(message, kind = 'info', sticky = false) {
    clearTimeout(statusTimer);
    statusEl.className = 'status ' + kind;
    statusEl.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    statusEl.textContent = message;
    if (!sticky && kind !== 'error' && message) statusTimer = setTimeout(() => { statusEl.textContent = ''; }, 6000);
  }
  /** Runs `fn` with `button` disabled and a progress message; errors are shown in words. */
  async function busy(button, progress, fn) {
    if (button) { button.disabled = true; button.setAttribute('aria-busy', 'true'); }
    announce(progress + '…', 'info', true);
    try {
      const result = await fn();
      if (statusEl.textContent === progress + '…') announce('');
      return result;
    } catch (err) {
      announce(describe(err), 'error');
      return undefined;
    } finally {
      if (button) { button.disabled = false; button.removeAttribute('aria-busy'); }
    }
  }
  function describe(err) {
    if (err instanceof ApiError) return err.message + (err.status ? ` (HTTP ${err.status})` : '');
    if (err && err.name === 'AbortError') return 'Stopped.';
    return 'Something went wrong: ' + (err && err.message ? err.message : String(err));
  }

  // ------------------------------------------------------------------ session (OIDC code + PKCE)
  function decodeJwt(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))));
    } catch (e) { return null; }
  }
  function session() {
    const token = STORE.getItem('mlp.id_token');
    const claims = token && decodeJwt(token);
    if (!claims || !claims.exp || claims.exp * 1000 < Date.now() + 30000) return null;
    return { token, claims };
  }
  async function signIn(kind = 'login', returnTo) {
    const auth = CONFIG.auth;
    if (!auth.client_id || !auth.authorize_url) {
      announce('Sign-in is not configured on this deployment (console_client_id / console_authorize_url).', 'error');
      return;
    }
    const verifier = randomToken(32);
    const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
    const state = randomToken(16);
    const nonce = randomToken(16);
    STORE.setItem('mlp.pkce', JSON.stringify({ verifier, state, nonce,
      returnTo: returnTo || (location.pathname + location.search) }));
    const params = new URLSearchParams({ response_type: 'code', client_id: auth.client_id, redirect_uri: CALLBACK,
      scope: auth.scope, state, nonce, code_challenge: challenge, code_challenge_method: 'S256' });
    announce(kind === 'signup' ? 'Opening sign-up…' : 'Opening sign-in…', 'info', true);
    location.assign((kind === 'signup' ? auth.signup_url : auth.authorize_url) + '?' + params);
  }
  async function completeSignIn() {
    const params = new URLSearchParams(location.search);
    const pending = JSON.parse(STORE.getItem('mlp.pkce') || 'null');
    STORE.removeItem('mlp.pkce');
    if (params.get('error')) throw new ApiError('Sign-in failed: ' + (params.get('error_description') || params.get('error')));
    if (!pending || !params.get('code') || params.get('state') !== pending.state) {
      throw new ApiError('This sign-in link is stale or was not started here. Sign in again.');
    }
    const body = new URLSearchParams({ grant_type: 'authorization_code', client_id: CONFIG.auth.client_id,
      code: params.get('code'), redirect_uri: CALLBACK, code_verifier: pending.verifier });
    let response;
    try {
      response = await fetch(CONFIG.auth.token_url, { method: 'POST', body,
        headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    } catch (e) { throw new ApiError('Could not reach the sign-in service: ' + e.message); }
    const tokens = await response.json().catch(() => ({}));
    if (!response.ok || !tokens.id_token) {
      throw new ApiError('Sign-in failed: ' + (tokens.error_description || tokens.error || response.status));
    }
    const claims = decodeJwt(tokens.id_token);
    if (!claims || claims.nonce !== pending.nonce || claims.aud !== CONFIG.auth.client_id) {
      throw new ApiError('Sign-in failed: the identity token does not belong to this sign-in.');
    }
    // Only the ID token is kept (it carries the verified email the account is provisioned with);
    // the refresh token is not stored: an expired session signs in again through the provider.
    STORE.setItem('mlp.id_token', tokens.id_token);
    return pending.returnTo && !pending.returnTo.startsWith(BASE + '/callback') ? pending.returnTo : BASE;
  }
  async function signOut() {
    announce('Signing out…', 'info', true);
    const pk = playgroundKey();
    if (pk && session()) await api('DELETE', '/v1/keys/' + pk.id).catch(() => null);
    STORE.clear();
    if (CONFIG.auth.logout_url) {
      const params = new URLSearchParams({ client_id: CONFIG.auth.client_id, logout_uri: ORIGIN + BASE + '/signed-out' });
      location.assign(CONFIG.auth.logout_url + '?' + params);
    } else {
      go(BASE + '/signed-out');
    }
  }

  // ------------------------------------------------------------------ API (same origin, Bearer ID token)
  class ApiError extends Error {
    constructor(message, status, code, body) { super(message); this.status = status; this.code = code; this.body = body; }
  }
  async function api(method, path, body, options = {}) {
    const sess = session();
    if (!sess && !options.anonymous) { await signIn('login'); throw new ApiError('Your session has ended; signing in again.'); }
    const headers = Object.assign({ accept: 'application/json' }, options.headers || {});
    if (!options.anonymous) headers.authorization = 'Bearer ' + (options.bearer || sess.token);
    if (body !== undefined) headers['content-type'] = 'application/json';
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError('Could not reach the server (' + e.message + '). Check your connection and try again.');
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const err = (data && data.error) || {};
      if (response.status === 401 && !options.bearer) {
        STORE.removeItem('mlp.id_token');
        setTimeout(() => signIn('login'), 1500);
        throw new ApiError('Your session has expired; taking you to sign-in.', 401, err.code);
      }
      throw new ApiError(err.message || ('The server answered ' + response.status + '.'), response.status, err.code, data);
    }
    return data;
  }
  const qs = (params) => {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') p.set(k, v);
    const str = p.toString();
    return str ? '?' + str : '';
  };
  async function loadModels(tier) {
    const key = 'models:' + tier;
    if (!cache[key]) {
      cache[key] = api('GET', '/v1/models' + qs({ tier }), undefined, { anonymous: true })
        .then((r) => r.data.slice().sort((a, b) => a.id.localeCompare(b.id)))
        .catch((e) => { delete cache[key]; throw e; });
    }
    return cache[key];
  }

  // ------------------------------------------------------------------ router
  const PAGES = {
    '': { title: 'Overview', render: overviewPage },
    welcome: { title: 'Welcome', render: welcomePage },
    usage: { title: 'Usage', render: usagePage },
    keys: { title: 'API keys', render: keysPage },
    'provider-keys': { title: 'Provider keys', render: providerKeysPage },
    billing: { title: 'Billing', render: billingPage },
    models: { title: 'Models', render: modelsPage },
    playground: { title: 'Playground', render: playgroundPage },
  };
  function pageName() {
    const rest = location.pathname.slice(BASE.length).replace(/^\/+|\/+$/g, '');
    return rest;
  }
  function go(path, replace = false) {
    if (replace) history.replaceState(null, '', path); else history.pushState(null, '', path);
    render();
  }
  document.addEventListener('click', (ev) => {
    const a = ev.target.closest && ev.target.closest('a[href]');
    if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== ORIGIN || !(url.pathname === BASE || url.pathname.startsWith(BASE + '/'))) return;
    if (url.pathname.startsWith(BASE + '/assets/')) return;
    ev.preventDefault();
    go(url.pathname + url.search);
  });
  window.addEventListener('popstate', render);
  document.getElementById('sign-out').addEventListener('click', signOut);

  let renderId = 0;
  async function render() {
    const id = ++renderId;
    const name = pageName();
    if (name === 'callback') {
      landing('Signing you in…');
      try {
        const next = await completeSignIn();
        const keys = await api('GET', '/v1/keys');
        go(keys.data.length === 0 ? BASE + '/welcome' : next, true);
      } catch (err) {
        landing(describe(err));
      }
      return;
    }
    const sess = session();
    if (name === 'signed-out' || !sess) {
      STORE.removeItem('mlp.id_token');
      nav.hidden = true; account.hidden = true;
      if (name !== 'signed-out' && name !== '' && PAGES[name] === undefined) return notFound();
      landing(name === 'signed-out' ? 'You are signed out.' : null);
      return;
    }
    const page = PAGES[name];
    if (!page) return notFound();
    nav.hidden = false; account.hidden = false;
    document.getElementById('account-email').textContent = sess.claims.email || '';
    for (const a of nav.querySelectorAll('a')) {
      if (new URL(a.href).pathname === location.pathname) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = page.title + ' · Multi-LLM console';
    clear(main);
    const heading = h('h1', { tabindex: '-1' }, page.title);
    const container = h('div');
    append(main, [heading, container]);
    if (renderCount++ > 0) heading.focus();  // after a navigation, start reading at the new page's title
    try {
      await page.render(container, () => id === renderId);
    } catch (err) {
      if (id === renderId) append(container, h('p', { class: 'banner error', role: 'alert' }, describe(err)));
    }
  }
  let renderCount = 0;
  function notFound() {
    clear(main);
    append(main, h('h1', null, 'Page not found'), h('p', null, h('a', { href: BASE }, 'Go to the overview')));
  }
  function landing(message) {
    clear(main);
    const signInBtn = h('button', { type: 'button', onclick: () => signIn('login', BASE) }, 'Sign in');
    const signUpBtn = h('button', { type: 'button', class: 'ghost', onclick: () => signIn('signup', BASE) }, 'Create an account');
    append(main, h('div', { class: 'landing' },
      h('h1', null, 'Multi-LLM console'),
      message ? h('p', { role: 'status' }, message) : null,
      h('p', null, 'One API key for OpenAI, Anthropic, Google Gemini and hundreds of open models. ',
        'Pay as you go from prepaid credit; see every request and its cost.'),
      h('div', { class: 'actions' }, signInBtn, signUpBtn)));
  }

  // ------------------------------------------------------------------ shared widgets
  function card(label, value, extra) {
    return h('div', { class: 'card' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), extra || null);
  }
  function meter(used, limit, label) {
    if (limit === null || limit === undefined) return h('p', { class: 'small muted' }, 'Unlimited requests this month');
    const pct = limit > 0 ? Math.min(100, Math.round((used / limit) * 100)) : 100;
    const bar = h('span');
    bar.style.setProperty('width', pct + '%');
    return h('div', { class: 'meter' + (pct >= 90 ? ' high' : ''), role: 'meter', 'aria-label': label,
      'aria-valuemin': '0', 'aria-valuemax': String(limit), 'aria-valuenow': String(used),
      'aria-valuetext': `${used} of ${limit} requests used (${pct}%)` }, bar);
  }
  function table(headers, rows, caption) {
    return h('div', { class: 'table-wrap' }, h('table', null,
      caption ? h('caption', { class: 'muted small' }, caption) : null,
      h('thead', null, h('tr', null, headers.map((x) => h('th', { scope: 'col', class: x.num ? 'num' : null }, x.label || x)))),
      h('tbody', null, rows)));
  }
  async function copy(text, what) {
    try {
      await navigator.clipboard.writeText(text);
      announce(what + ' copied to the clipboard.', 'ok');
    } catch (e) {
      announce('Could not copy automatically; select the text and copy it.', 'error');
    }
  }
  function lowBalanceBanner(balance) {
    if (Number(balance.balance) >= Number(CONFIG.low_balance)) return null;
    return h('div', { class: 'banner', role: 'alert' },
      Number(balance.balance) <= 0 ? 'You have no credit left: requests are refused until you top up. '
        : `Low balance: ${usd(balance.balance)} left. Requests are refused when it runs out. `,
      h('a', { href: BASE + '/billing' }, 'Buy credits'));
  }
  const tierName = (t) => (t ? t.charAt(0).toUpperCase() + t.slice(1) : '—');

  // ------------------------------------------------------------------ overview
  async function overviewPage(el, current) {
    const monthStart = new Date(); monthStart.setUTCDate(1);
    const [balance, sub, spend] = await Promise.all([
      api('GET', '/v1/balance'), api('GET', '/v1/subscription'),
      api('GET', '/v1/usage/summary' + qs({ group_by: 'day', from: isoDate(monthStart) }))]);
    if (!current()) return;
    const q = balance.quota;
    append(el, [
      lowBalanceBanner(balance),
      sub.payment_failed_at ? h('div', { class: 'banner error', role: 'alert' },
        'Your last subscription payment failed. ', h('a', { href: BASE + '/billing' }, 'Update your payment method')) : null,
      h('div', { class: 'cards' },
        card('Available credit', usd(balance.balance), h('div', { class: 'small muted' }, 'Total ', usd(balance.total))),
        card('Reserved', usd(balance.reserved), h('div', { class: 'small muted' }, 'held by requests in flight')),
        card('Plan', tierName(balance.tier), h('div', { class: 'small muted' },
          `${balance.rate_limit.requests_per_minute} requests/min · ` + (sub.status === 'none' ? 'no subscription' : 'subscription ' + sub.status))),
        card('Spend this month', usd(spend.total.charge), h('div', { class: 'small muted' },
          `${int(spend.total.requests)} requests · ${int(spend.total.total_tokens)} tokens`))),
      h('section', { class: 'panel', 'aria-labelledby': 'quota-h' },
        h('h2', { id: 'quota-h' }, 'Monthly requests'),
        h('p', null, q.requests_limit === null ? `${int(q.requests_used)} used (no limit on ${tierName(balance.tier)})`
          : `${int(q.requests_used)} of ${int(q.requests_limit)} used · resets ${day(q.resets_at)}`),
        meter(q.requests_used, q.requests_limit, 'Monthly request quota')),
      h('section', { class: 'panel' }, h('h2', null, 'Next steps'), h('div', { class: 'actions' },
        h('a', { class: 'button', href: BASE + '/keys' }, 'Create an API key'),
        h('a', { class: 'button ghost', href: BASE + '/billing' }, 'Buy credits'),
        h('a', { class: 'button ghost', href: BASE + '/playground' }, 'Try the playground'),
        h('a', { class: 'button ghost', href: BASE + '/usage' }, 'See usage'))),
    ]);
  }

  // ------------------------------------------------------------------ onboarding
  async function welcomePage(el, current) {
    const balance = await api('GET', '/v1/balance');
    if (!current()) return;
    const credit = Number(balance.balance) > 0;
    const slot = h('div');
    append(el, [
      h('section', { class: 'panel' },
        h('h2', null, 'Welcome to Multi-LLM'),
        credit ? h('p', { class: 'banner ok' }, 'Your account has ', h('strong', null, usd(balance.balance)),
          ' of welcome credit to try the models of the ', tierName(balance.tier), ' plan.')
          : h('p', { class: 'banner' }, 'Your account has no credit yet. ', h('a', { href: BASE + '/billing' }, 'Buy credits'),
            ' to start sending requests.'),
        h('p', null, 'Step 1: create your first API key. Step 2: call the API with it from your code.')),
      keyCreateForm(slot, { name: 'my first key', compact: true }),
      slot,
      h('p', null, h('a', { href: BASE }, 'Skip for now and go to the overview')),
    ]);
  }

  // ------------------------------------------------------------------ API keys
  function snippets(secret) {
    const base = ORIGIN;
    return {
      curl: `curl ${base}/v1/chat/completions \\\n  -H "Authorization: Bearer ${secret}" \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}'`,
      openai: `from openai import OpenAI\n\nclient = OpenAI(base_url="${base}/v1", api_key="${secret}")\nreply = client.chat.completions.create(\n    model="openai/gpt-4o-mini",\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(reply.choices[0].message.content)`,
      anthropic: `import anthropic\n\nclient = anthropic.Anthropic(base_url="${base}", api_key="${secret}")\nmessage = client.messages.create(\n    model="anthropic/claude-sonnet-4",\n    max_tokens=256,\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(message.content[0].text)`,
    };
  }
  function secretPanel(created, onDone) {
    const input = h('input', { id: 'new-key-secret', readonly: true, value: created.key, 'aria-label': 'Your new API key' });
    const code = h('code', { id: 'snippet-code' });
    const pre = h('pre', { tabindex: '0', 'aria-label': 'Example' }, code);
    const all = snippets(created.key);
    const tabs = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Examples' });
    let selected = 'curl';
    const select = (name) => {
      selected = name;
      code.textContent = all[name];
      for (const b of tabs.children) b.setAttribute('aria-selected', String(b.dataset.name === name));
    };
    for (const name of Object.keys(all)) {
      const b = h('button', { type: 'button', role: 'tab', onclick: () => select(name) }, name);
      b.dataset.name = name;
      tabs.appendChild(b);
    }
    select('curl');
    const panel = h('section', { class: 'panel secret', 'aria-labelledby': 'secret-h' },
      h('h2', { id: 'secret-h' }, `Key “${created.name}” created`),
      h('p', null, h('strong', null, 'Copy it now: it is shown only once.'), ' We store only a hash and cannot show it again.'),
      h('div', { class: 'key-line' }, input,
        h('button', { type: 'button', onclick: () => copy(created.key, 'API key') }, 'Copy key')),
      tabs, pre,
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'ghost', onclick: () => copy(all[selected], 'Example') }, 'Copy example'),
        h('button', { type: 'button', onclick: () => { panel.remove(); if (onDone) onDone(); } }, 'Done, I saved it')));
    setTimeout(() => { input.focus(); input.select(); }, 0);
    return panel;
  }
  function keyCreateForm(slot, opts = {}) {
    const name = h('input', { name: 'name', required: true, maxlength: '100', value: opts.name || '' });
    const rpm = h('input', { name: 'rpm', type: 'number', min: '1', max: '100000', inputmode: 'numeric' });
    const cap = h('input', { name: 'spend_cap', type: 'number', min: '0', step: '0.01', inputmode: 'decimal' });
    const scope = h('select', { name: 'scope' }, h('option', { value: 'full' }, 'full — inference and account'),
      h('option', { value: 'inference' }, 'inference only'));
    const submit = h('button', { type: 'submit' }, opts.compact ? 'Create my first key' : 'Create key');
    const form = h('form', { class: 'grid', 'aria-label': 'Create an API key' },
      field('Name', name),
      opts.compact ? null : field('Requests per minute', rpm, '(optional)'),
      opts.compact ? null : field('Spend cap, USD', cap, '(optional, lifetime)'),
      opts.compact || !opts.scopes ? null : field('Scope', scope),
      h('div', null, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { name: name.value.trim() };
      if (rpm.value) body.rpm = Number(rpm.value);
      if (cap.value) body.spend_cap = cap.value;
      if (opts.scopes && !opts.compact && scope.value !== 'full') body.scope = scope.value;
      const created = await busy(submit, 'Creating the key', () => api('POST', '/v1/keys', body));
      if (!created) return;
      announce(`Key “${created.name}” created. Copy it now.`, 'ok');
      clear(slot);
      slot.appendChild(secretPanel(created, opts.onDone));
      form.reset();
      if (opts.onCreated) opts.onCreated(created);
    });
    return h('section', { class: 'panel', 'aria-labelledby': 'create-h' }, h('h2', { id: 'create-h' }, 'Create an API key'), form);
  }
  async function keysPage(el, current) {
    const list = h('div');
    const slot = h('div');
    async function refresh() {
      const keys = await api('GET', '/v1/keys');
      if (!current()) return keys;
      const scoped = keys.data.some((k) => 'scope' in k);
      clear(list);
      const rows = keys.data.map((k) => {
        const revoke = k.status === 'active' ? h('button', { type: 'button', class: 'danger',
          'aria-label': `Revoke key ${k.name}`, onclick: async () => {
            if (!window.confirm(`Revoke the key “${k.name}” (${k.prefix}…)? Requests using it stop within seconds.`)) return;
            const done = await busy(revoke, `Revoking “${k.name}”`, () => api('DELETE', '/v1/keys/' + k.id));
            if (done) { announce(`Key “${k.name}” revoked.`, 'ok'); await refresh(); }
          } }, 'Revoke') : null;
        const limits = [k.rpm ? `${k.rpm}/min` : null,
          k.spend_cap !== null ? `${usd(k.spent)} of ${usd(k.spend_cap)}` : null].filter(Boolean).join(' · ') || 'none';
        return h('tr', { 'data-key-id': k.id },
          h('td', null, k.name), h('td', null, h('code', null, k.prefix + '…')),
          scoped ? h('td', null, k.scope || 'full') : null,
          h('td', null, h('span', { class: 'tag ' + k.status }, k.status)),
          h('td', null, limits), h('td', null, when(k.created_at)), h('td', { class: 'last-used' }, when(k.last_used_at)),
          h('td', null, revoke));
      });
      const headers = ['Name', 'Key', scoped ? 'Scope' : null, 'Status', 'Limits', 'Created', 'Last used', 'Action'].filter(Boolean);
      append(list, keys.data.length ? table(headers, rows) : h('p', { class: 'muted' }, 'No keys yet.'));
      return keys;
    }
    const keys = await refresh();
    if (!current()) return;
    append(el, [
      keyCreateForm(slot, { scopes: keys.data.some((k) => 'scope' in k), onCreated: refresh }),
      slot,
      h('section', { class: 'panel', 'aria-labelledby': 'keys-h' }, h('h2', { id: 'keys-h' }, 'Your keys'), list),
    ]);
  }

  // ------------------------------------------------------------------ provider keys (BYOK)
  async function providerKeysPage(el, current) {
    const body = h('div');
    async function refresh() {
      const res = await api('GET', '/v1/provider-keys');
      if (!current()) return;
      const stored = Object.fromEntries(res.data.map((k) => [k.provider, k]));
      clear(body);
      for (const provider of res.providers) {
        const k = stored[provider];
        const input = h('input', { type: 'password', autocomplete: 'off', required: true, minlength: '8',
          'aria-label': `${provider} API key` });
        const save = h('button', { type: 'submit' }, k ? 'Rotate' : 'Add');
        const form = h('form', { class: 'grid' }, field(k ? 'New key' : 'API key', input), h('div', null, save));
        form.addEventListener('submit', async (ev) => {
          ev.preventDefault();
          const done = await busy(save, `Saving the ${provider} key`, () =>
            api('PUT', '/v1/provider-keys/' + provider, { api_key: input.value }));
          if (done) { announce(`${provider} key saved (ending ${done.last4}).`, 'ok'); await refresh(); }
        });
        const remove = k ? h('button', { type: 'button', class: 'danger', onclick: async () => {
          if (!window.confirm(`Remove your ${provider} key? Requests go back to the platform's key at full price.`)) return;
          const done = await busy(remove, `Removing the ${provider} key`, () => api('DELETE', '/v1/provider-keys/' + provider));
          if (done) { announce(`${provider} key removed.`, 'ok'); await refresh(); }
        } }, 'Remove') : null;
        append(body, h('section', { class: 'panel', 'data-provider': provider },
          h('h2', null, provider),
          h('p', null, k ? ['Stored key ending ', h('code', null, '••••' + k.last4), ` · updated ${when(k.updated_at || k.created_at)}`]
            : h('span', { class: 'muted' }, 'No key stored: requests use the platform key.')),
          form, remove ? h('div', { class: 'actions' }, remove) : null));
      }
    }
    append(el, [h('p', { class: 'muted' }, 'Bring your own provider keys: requests routed to that provider use your key ',
      'and are charged only the platform fee. Keys are encrypted at rest; only the last 4 characters are ever shown.'), body]);
    await refresh();
  }

  // ------------------------------------------------------------------ billing
  async function billingPage(el, current) {
    const params = new URLSearchParams(location.search);
    const [balance, sub] = await Promise.all([api('GET', '/v1/balance'), api('GET', '/v1/subscription')]);
    if (!current()) return;
    const balanceValue = h('strong', { id: 'billing-balance' }, usd(balance.balance));
    const notice = h('div');
    if (params.get('checkout') === 'success') {
      append(notice, h('p', { class: 'banner ok', role: 'status' },
        'Payment received. Your balance and plan update as soon as Stripe confirms the payment.'));
      pollBalance(balance, balanceValue, current);
    } else if (params.get('checkout') === 'cancelled') {
      append(notice, h('p', { class: 'banner', role: 'status' }, 'Checkout cancelled: nothing was charged.'));
    }
    const idem = randomToken(16);
    const amount = h('input', { type: 'number', name: 'credits', min: CONFIG.credit_min, max: CONFIG.credit_max,
      step: '0.01', required: true, value: '25', inputmode: 'decimal' });
    const buy = h('button', { type: 'submit' }, 'Buy credits');
    const buyForm = h('form', { class: 'grid', 'aria-label': 'Buy credits' },
      field('Amount in USD', amount, `(${usd(CONFIG.credit_min)}–${usd(CONFIG.credit_max)})`), h('div', null, buy));
    buyForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const credits = Number(amount.value).toFixed(2);
      const session = await busy(buy, `Starting a checkout for ${usd(credits)}`, () =>
        api('POST', '/v1/billing/checkout', { credits }, { headers: { 'idempotency-key': idem + ':' + credits } }));
      if (session) { announce('Redirecting to Stripe Checkout…', 'info', true); location.assign(session.url); }
    });
    const live = ['active', 'trialing', 'past_due', 'unpaid', 'paused'].includes(sub.status);
    const portalBtn = h('button', { type: 'button', class: 'ghost' }, live ? 'Change plan or payment method' : 'Payment methods and invoices');
    portalBtn.addEventListener('click', async () => {
      const session = await busy(portalBtn, 'Opening the billing portal', () => api('POST', '/v1/billing/portal', {}));
      if (session) { announce('Redirecting to the Stripe billing portal…', 'info', true); location.assign(session.url); }
    });
    const planRows = CONFIG.plans.map((p) => {
      let action = null;
      if (p.name === sub.tier) action = h('span', { class: 'tag active' }, 'current plan');
      else if (p.purchasable && !live) {
        const btn = h('button', { type: 'button', 'aria-label': `Subscribe to ${p.name}` }, 'Subscribe');
        btn.addEventListener('click', async () => {
          const session = await busy(btn, `Starting a ${p.name} subscription`, () =>
            api('POST', '/v1/billing/checkout', { plan: p.name }, { headers: { 'idempotency-key': idem + ':' + p.name } }));
          if (session) { announce('Redirecting to Stripe Checkout…', 'info', true); location.assign(session.url); }
        });
        action = btn;
      } else if (p.purchasable) action = h('span', { class: 'small muted' }, 'switch in the portal');
      return h('tr', { 'data-plan': p.name }, h('td', null, tierName(p.name)), h('td', { class: 'num' }, int(p.rpm)),
        h('td', { class: 'num' }, p.monthly_quota === null ? 'unlimited' : int(p.monthly_quota)),
        h('td', { class: 'num' }, usd(p.included_credit)), h('td', null, action));
    });
    append(el, [notice,
      h('section', { class: 'panel', 'aria-labelledby': 'credit-h' }, h('h2', { id: 'credit-h' }, 'Prepaid credit'),
        h('p', null, 'Available: ', balanceValue, h('span', { class: 'muted' }, ` · reserved ${usd(balance.reserved)}`)),
        buyForm, h('p', { class: 'small muted' }, 'You pay on Stripe’s secure page; the credit appears when Stripe confirms the payment.')),
      h('section', { class: 'panel', 'aria-labelledby': 'plan-h' }, h('h2', { id: 'plan-h' }, 'Plan'),
        h('p', { id: 'plan-summary' }, 'Current plan: ', h('strong', null, tierName(sub.tier)),
          sub.status !== 'none' ? ` · subscription ${sub.status}` : ' · no subscription',
          sub.current_period_end ? (sub.cancel_at_period_end ? ` · ends ${day(sub.current_period_end)}` : ` · renews ${day(sub.current_period_end)}`) : ''),
        sub.payment_failed_at ? h('p', { class: 'banner error' }, `A payment failed on ${when(sub.payment_failed_at)}. Update your card in the portal.`) : null,
        table(['Plan', { label: 'Requests/min', num: true }, { label: 'Requests/month', num: true }, { label: 'Included credit/month', num: true }, ''], planRows),
        h('div', { class: 'actions' }, portalBtn)),
    ]);
  }
  function pollBalance(before, target, current) {
    let tries = 0;
    const tick = async () => {
      if (!current() || tries++ > 20) return;
      const now = await api('GET', '/v1/balance').catch(() => null);
      if (now && (now.total !== before.total || now.tier !== before.tier)) {
        target.textContent = usd(now.balance);
        announce(`Payment confirmed: your available credit is ${usd(now.balance)}.`, 'ok');
        return;
      }
      setTimeout(tick, 1000);
    };
    setTimeout(tick, 300);
  }

  // ------------------------------------------------------------------ usage (chart, table, CSV)
  const COLORS = ['#3341b8', '#e67e22', '#16a085', '#c0392b', '#8e44ad', '#2c3e50', '#d4ac0d', '#7f8c8d'];
  async function usagePage(el, current) {
    const today = new Date();
    const from = h('input', { type: 'date', name: 'from', value: isoDate(new Date(today.getTime() - 29 * 864e5)) });
    const to = h('input', { type: 'date', name: 'to', value: isoDate(today) });
    const group = h('select', { name: 'group' }, h('option', { value: 'model' }, 'by model'), h('option', { value: 'key' }, 'by API key'));
    const metric = h('select', { name: 'metric' }, h('option', { value: 'charge' }, 'spend (USD)'), h('option', { value: 'tokens' }, 'tokens'));
    const model = h('select', { name: 'model' }, h('option', { value: '' }, 'all models'));
    const key = h('select', { name: 'key' }, h('option', { value: '' }, 'all keys'));
    const apply = h('button', { type: 'submit' }, 'Apply');
    const form = h('form', { class: 'grid', 'aria-label': 'Usage filters' },
      field('From', from), field('To', to), field('Chart', group), field('Show', metric), field('Model', model), field('API key', key),
      h('div', null, apply));
    const chartBox = h('div');
    const totals = h('p', { class: 'muted', id: 'usage-totals' });
    const tableBox = h('div');
    const more = h('button', { type: 'button', class: 'ghost', hidden: true }, 'Load more');
    const exportBtn = h('button', { type: 'button', class: 'ghost' }, 'Export CSV');
    let keyNames = {};
    let cursor = null;
    let breakdown = null;
    const filters = () => ({ from: from.value, to: to.value, model: model.value, api_key_id: key.value });
    const keyLabel = (id) => (id ? (keyNames[id] || id.slice(0, 8)) : 'console / sign-in');

    function drawChart() {
      clear(chartBox);
      const rows = breakdown.data.filter((r) => (!model.value || r.model === model.value) && (!key.value || r.api_key_id === key.value));
      const value = (r) => (metric.value === 'charge' ? Number(r.charge) : r.total_tokens);
      const seriesOf = (r) => (group.value === 'model' ? r.model : keyLabel(r.api_key_id));
      const days = [];
      for (let d = new Date(from.value + 'T00:00:00Z'); isoDate(d) <= to.value; d = new Date(d.getTime() + 864e5)) days.push(isoDate(d));
      const totalsBySeries = {};
      for (const r of rows) totalsBySeries[seriesOf(r)] = (totalsBySeries[seriesOf(r)] || 0) + value(r);
      let series = Object.keys(totalsBySeries).sort((a, b) => totalsBySeries[b] - totalsBySeries[a]);
      if (series.length > COLORS.length) series = series.slice(0, COLORS.length - 1).concat(['other']);
      const stack = {};
      for (const r of rows) {
        let name = seriesOf(r);
        if (!series.includes(name)) name = 'other';
        stack[r.day] = stack[r.day] || {};
        stack[r.day][name] = (stack[r.day][name] || 0) + value(r);
      }
      const max = Math.max(0, ...days.map((d) => Object.values(stack[d] || {}).reduce((a, b) => a + b, 0)));
      const W = 760, H = 240, L = 78, B = 28, T = 10;
      const bw = (W - L - 8) / Math.max(days.length, 1);
      const fmt = (v) => (metric.value === 'charge' ? '$' + (v >= 1 ? v.toFixed(2) : v.toPrecision(2)) : Math.round(v).toLocaleString('en-US'));
      const total = rows.reduce((a, r) => a + value(r), 0);
      const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', id: 'usage-chart',
        'aria-label': `${metric.value === 'charge' ? 'Spend' : 'Tokens'} per day ${group.value === 'model' ? 'by model' : 'by API key'}, ${days[0]} to ${days[days.length - 1]}: total ${fmt(total)}` });
      for (let i = 0; i <= 4; i++) {
        const y = T + (H - B - T) * (1 - i / 4);
        svg.appendChild(s('line', { x1: L, x2: W - 4, y1: y, y2: y, stroke: '#e2e5eb' }));
        svg.appendChild(s('text', { x: L - 6, y: y + 4, 'text-anchor': 'end' }, i === 0 ? '0' : max ? fmt((max * i) / 4) : ''));
      }
      days.forEach((d, i) => {
        let y = H - B;
        const x = L + i * bw + bw * 0.15;
        series.forEach((name, si) => {
          const v = (stack[d] || {})[name] || 0;
          if (!v || !max) return;
          const hgt = ((H - B - T) * v) / max;
          y -= hgt;
          svg.appendChild(s('rect', { x: x.toFixed(1), y: y.toFixed(1), width: (bw * 0.7).toFixed(1), height: Math.max(hgt, 1).toFixed(1),
            fill: COLORS[si % COLORS.length], 'data-day': d, 'data-series': name }, s('title', null, `${d} · ${name}: ${fmt(v)}`)));
        });
        if (days.length <= 14 || i % Math.ceil(days.length / 10) === 0) {
          svg.appendChild(s('text', { x: (x + bw * 0.35).toFixed(1), y: H - 10, 'text-anchor': 'middle' }, d.slice(5)));
        }
      });
      const legend = h('ul', { class: 'legend', 'aria-label': 'Legend' },
        series.map((name, si) => { const sw = h('i'); sw.style.setProperty('background', COLORS[si % COLORS.length]);
          return h('li', null, sw, `${name}: ${fmt(totalsBySeries[name] || 0)}`); }));
      append(chartBox, rows.length ? [svg, legend] : h('p', { class: 'muted' }, 'No usage in this window yet.'));
      const req = rows.reduce((a, r) => a + r.requests, 0);
      const tok = rows.reduce((a, r) => a + r.total_tokens, 0);
      totals.textContent = `${int(req)} requests · ${int(tok)} tokens · ${usd(sumMoney(rows.map((r) => r.charge)))} in this window`;
    }
    function recordRow(r) {
      return h('tr', { 'data-request-id': r.id }, h('td', null, when(r.created_at)), h('td', null, r.model_served || r.model),
        h('td', null, keyLabel(r.api_key_id)), h('td', null, h('span', { class: 'tag ' + (r.status === 'ok' ? 'ok' : 'failed') }, r.status)),
        h('td', { class: 'num' }, int(r.prompt_tokens)), h('td', { class: 'num' }, int(r.completion_tokens)),
        h('td', { class: 'num' }, usd(r.charge)), h('td', { class: 'num' }, r.latency_ms === null ? '—' : r.latency_ms + ' ms'));
    }
    let tbody = null;
    async function loadRecords(reset) {
      const page = await api('GET', '/v1/usage' + qs({ ...filters(), limit: 50, cursor: reset ? null : cursor }));
      if (!current()) return;
      if (reset) {
        clear(tableBox);
        tbody = h('tbody');
        append(tableBox, h('div', { class: 'table-wrap' }, h('table', { id: 'usage-table' },
          h('caption', { class: 'small muted' }, 'Requests, newest first'),
          h('thead', null, h('tr', null, ['Time', 'Model', 'Key', 'Status'].map((x) => h('th', { scope: 'col' }, x)),
            ['Prompt tokens', 'Completion tokens', 'Charge', 'Latency'].map((x) => h('th', { scope: 'col', class: 'num' }, x)))),
          tbody)));
      }
      append(tbody, page.data.map(recordRow));
      if (reset && !page.data.length) append(tbody, h('tr', null, h('td', { colspan: '8', class: 'muted' }, 'No requests match.')));
      cursor = page.next_cursor;
      more.hidden = !page.has_more;
    }
    async function refresh() {
      const [keys, data] = await Promise.all([api('GET', '/v1/keys'), api('GET', '/console/api/usage/breakdown' + qs({ from: from.value, to: to.value }))]);
      if (!current()) return;
      keyNames = Object.fromEntries(keys.data.map((k) => [k.id, k.name]));
      breakdown = data;
      const keepModel = model.value, keepKey = key.value;
      while (model.options.length > 1) model.remove(1);
      while (key.options.length > 1) key.remove(1);
      for (const m of [...new Set(data.data.map((r) => r.model))].sort()) model.appendChild(h('option', { value: m }, m));
      for (const k of keys.data) key.appendChild(h('option', { value: k.id }, `${k.name} (${k.prefix}…)`));
      model.value = keepModel; key.value = keepKey;
      drawChart();
      await loadRecords(true);
    }
    form.addEventListener('submit', (ev) => { ev.preventDefault(); busy(apply, 'Loading usage', refresh); });
    group.addEventListener('change', () => breakdown && drawChart());
    metric.addEventListener('change', () => breakdown && drawChart());
    more.addEventListener('click', () => busy(more, 'Loading more requests', () => loadRecords(false)));
    exportBtn.addEventListener('click', () => busy(exportBtn, 'Exporting', async () => {
      const lines = [['time', 'request_id', 'model', 'model_served', 'api_key', 'status', 'prompt_tokens', 'completion_tokens',
        'cached_tokens', 'charge_usd', 'latency_ms', 'byok']];
      let next = null;
      for (let i = 0; i < 100; i++) {
        const page = await api('GET', '/v1/usage' + qs({ ...filters(), limit: 100, cursor: next }));
        for (const r of page.data) lines.push([r.created_at, r.id, r.model, r.model_served, keyLabel(r.api_key_id), r.status,
          r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.charge, r.latency_ms, r.byok]);
        announce(`Exporting… ${lines.length - 1} rows`, 'info', true);
        if (!page.has_more) break;
        next = page.next_cursor;
      }
      const cell = (v) => { const t = v === null || v === undefined ? '' : String(v); return /[",\n]/.test(t) ? '"' + t.replace(/"/g, '""') + '"' : t; };
      const blob = new Blob([lines.map((l) => l.map(cell).join(',')).join('\r\n') + '\r\n'], { type: 'text/csv' });
      const a = h('a', { href: URL.createObjectURL(blob), download: `usage-${from.value}-to-${to.value}.csv` });
      document.body.appendChild(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      announce(`Exported ${lines.length - 1} requests to CSV.`, 'ok');
    }));
    append(el, [
      h('section', { class: 'panel' }, form),
      h('section', { class: 'panel', 'aria-labelledby': 'chart-h' }, h('h2', { id: 'chart-h' }, 'Per day'), totals, chartBox),
      h('section', { class: 'panel', 'aria-labelledby': 'req-h' }, h('div', { class: 'actions spread' }, h('h2', { id: 'req-h' }, 'Requests'), exportBtn),
        tableBox, more),
    ]);
    await refresh();
  }

  // ------------------------------------------------------------------ models
  async function modelsPage(el, current) {
    const balance = await api('GET', '/v1/balance');
    const models = await loadModels(balance.tier);
    if (!current()) return;
    const search = h('input', { type: 'search', placeholder: 'e.g. claude, gpt-4o, llama', 'aria-controls': 'models-table' });
    const providers = [...new Set(models.map((m) => m.id.split('/')[0]))].sort();
    const provider = h('select', null, h('option', { value: '' }, 'all providers'), providers.map((p) => h('option', { value: p }, p)));
    const count = h('p', { class: 'muted', role: 'status' });
    const tbody = h('tbody');
    function draw() {
      const q = search.value.trim().toLowerCase();
      const shown = models.filter((m) => (!provider.value || m.id.startsWith(provider.value + '/')) &&
        (!q || m.id.toLowerCase().includes(q) || (m.name || '').toLowerCase().includes(q)));
      clear(tbody);
      append(tbody, shown.slice(0, 400).map((m) => h('tr', { 'data-model': m.id },
        h('td', null, h('code', null, m.id), h('div', { class: 'small muted' }, m.name || '')),
        h('td', { class: 'num' }, int(m.context_length)),
        h('td', { class: 'num' }, perMillion(m.pricing.prompt)), h('td', { class: 'num' }, perMillion(m.pricing.completion)),
        h('td', { class: 'num' }, perMillion(m.pricing.input_cache_read)))));
      count.textContent = `${shown.length} of ${models.length} models`;
    }
    search.addEventListener('input', draw);
    provider.addEventListener('change', draw);
    append(el, [
      h('p', { class: 'muted' }, `Models on your plan (${tierName(balance.tier)}) and their prices in USD per million tokens, our fee included.`,
        balance.tier === 'free' ? [' Paid plans unlock every model: ', h('a', { href: BASE + '/billing' }, 'see plans'), '.'] : null),
      h('section', { class: 'panel' }, h('form', { class: 'grid', role: 'search', onsubmit: (e) => e.preventDefault() },
        field('Search models', search), field('Provider', provider)), count,
      h('div', { class: 'table-wrap' }, h('table', { id: 'models-table' },
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Model'), ['Context (tokens)', 'Input $/M', 'Output $/M', 'Cached input $/M']
          .map((x) => h('th', { scope: 'col', class: 'num' }, x)))), tbody))),
    ]);
    draw();
  }

  // ------------------------------------------------------------------ playground
  function playgroundKey() { return JSON.parse(STORE.getItem('mlp.playground_key') || 'null'); }
  async function ensurePlaygroundKey() {
    const existing = playgroundKey();
    if (existing) return existing;
    const keys = await api('GET', '/v1/keys');
    const created = await api('POST', '/v1/keys', { name: PLAYGROUND_KEY_NAME, rpm: 20, spend_cap: '2' });
    const pk = { id: created.id, key: created.key };
    STORE.setItem('mlp.playground_key', JSON.stringify(pk));
    for (const k of keys.data) {  // at most one playground key stays active
      if (k.name === PLAYGROUND_KEY_NAME && k.status === 'active') await api('DELETE', '/v1/keys/' + k.id).catch(() => null);
    }
    return pk;
  }
  async function playgroundPage(el, current) {
    const balance = await api('GET', '/v1/balance');
    // chat models only: embedding models answer POST /v1/embeddings, not chat
    const models = (await loadModels(balance.tier)).filter(
      (m) => !((m.architecture && m.architecture.output_modalities) || []).includes('embeddings'));
    if (!current()) return;
    const modelSel = h('select', { name: 'model' }, models.map((m) => h('option', { value: m.id }, m.id)));
    const preferred = ['openai/gpt-4o-mini', 'google/gemini-2.5-flash'].find((id) => models.some((m) => m.id === id));
    if (preferred) modelSel.value = preferred;
    const system = h('textarea', { name: 'system', rows: '2', placeholder: 'You are a helpful assistant.' });
    const prompt = h('textarea', { name: 'prompt', required: true, rows: '4', placeholder: 'Ask anything… (Ctrl+Enter sends)' });
    const maxTokens = h('input', { type: 'number', name: 'max_tokens', min: '1', max: '32000', value: '256' });
    const temperature = h('input', { type: 'number', name: 'temperature', min: '0', max: '2', step: '0.1', value: '0.7' });
    const send = h('button', { type: 'submit' }, 'Send');
    const stop = h('button', { type: 'button', class: 'ghost', disabled: true }, 'Stop');
    const output = h('div', { class: 'output', id: 'playground-output', 'aria-live': 'polite', 'aria-label': 'Response' });
    const meta = h('p', { class: 'muted', id: 'playground-meta', role: 'status' });
    let controller = null;
    const form = h('form', { 'aria-label': 'Playground' },
      h('div', { class: 'grid' }, field('Model', modelSel), field('Max tokens', maxTokens), field('Temperature', temperature)),
      field('System prompt', system, '(optional)'), field('Message', prompt), h('div', { class: 'actions' }, send, stop));
    prompt.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); form.requestSubmit(); } });
    stop.addEventListener('click', () => controller && controller.abort());
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!prompt.value.trim()) { announce('Type a message first.', 'error'); prompt.focus(); return; }
      output.textContent = ''; meta.textContent = '';
      controller = new AbortController();
      stop.disabled = false;
      const started = performance.now();
      await busy(send, 'Streaming the answer', async () => {
        const pk = await ensurePlaygroundKey();
        const messages = (system.value.trim() ? [{ role: 'system', content: system.value.trim() }] : [])
          .concat([{ role: 'user', content: prompt.value }]);
        const body = { model: modelSel.value, messages, stream: true, stream_options: { include_usage: true },
          max_tokens: Number(maxTokens.value) || 256, temperature: Number(temperature.value) };
        const result = await streamChat(pk, body, controller.signal, (text) => { output.textContent += text; });
        const ms = Math.round(performance.now() - started);
        const usage = result.usage;
        meta.textContent = (usage ? `${int(usage.prompt_tokens)} prompt + ${int(usage.completion_tokens)} completion tokens · ` : '') +
          `${ms} ms · cost: looking up…`;
        const record = await findUsage(pk, result.requestId);
        meta.textContent = (usage ? `${int(usage.prompt_tokens)} prompt + ${int(usage.completion_tokens)} completion tokens · ` : '') +
          `${ms} ms · ` + (record ? `cost ${usd(record.charge)}` + (record.estimated ? ' (estimated)' : '') : 'cost not recorded yet; see Usage');
        announce('Done.', 'ok');
      });
      stop.disabled = true;
      controller = null;
    });
    append(el, [
      h('p', { class: 'muted' }, 'Chat with any model on your plan through the gateway. The playground uses its own API key (“',
        PLAYGROUND_KEY_NAME, '”, 20 requests/min, $2 cap) that is revoked when you sign out; calls are charged to your credit.'),
      lowBalanceBanner(balance),
      h('section', { class: 'panel' }, form),
      h('section', { class: 'panel', 'aria-labelledby': 'out-h' }, h('h2', { id: 'out-h' }, 'Response'), output, meta),
    ]);
  }
  async function streamChat(pk, body, signal, onText) {
    const base = CONFIG.stream_url || '';
    let response;
    try {
      response = await fetch(base + '/v1/chat/completions', { method: 'POST', signal,
        headers: { authorization: 'Bearer ' + pk.key, 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify(body) });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError('Could not reach the API (' + e.message + ').');
    }
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      if (response.status === 401) STORE.removeItem('mlp.playground_key');
      const err = (data && data.error) || {};
      throw new ApiError(err.message || 'The request failed.', response.status, err.code);
    }
    const requestId = response.headers.get('x-request-id');
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let usage = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split('\n')) {
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new ApiError('The stream ended with an error: ' + (chunk.error.message || chunk.error.code));
          if (chunk.usage) usage = chunk.usage;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) onText(delta.content);
        }
      }
    }
    return { requestId, usage };
  }
  async function findUsage(pk, requestId) {
    if (!requestId) return null;
    for (let i = 0; i < 10; i++) {
      const page = await api('GET', '/v1/usage' + qs({ api_key_id: pk.id, limit: 10 })).catch(() => null);
      const hit = page && page.data.find((r) => r.id === requestId);
      if (hit) return hit;
      await new Promise((r) => setTimeout(r, 400));
    }
    return null;
  }

  render();
})();
