// Sluice console: a small single-page app over the /v1 API, in plain JavaScript.
// The key lives in sessionStorage (this tab only) and goes out in the Authorization
// header of same-origin requests. Everything shown comes from the API, which decides what
// the key may see; nothing here is a security boundary. Text from the API is always set
// with textContent, never parsed as HTML.

const KEY_SLOT = 'sluice.key';
const TIERS = ['critical', 'high', 'normal', 'low'];
const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired'];
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'expired']);
const BATCH_LIVE = new Set(['validating', 'in_progress', 'finalizing', 'cancelling']);
const SVG = 'http://www.w3.org/2000/svg';

let me = null;        // GET /v1/me
let page = null;      // { timers: [], aborts: [] } of the page on screen

// ---------- small DOM helpers ----------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// Replaces a node's children; null, undefined and false children are left out.
function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

function bar(parts, cls = '') {
  // parts: [[fraction 0..1, class], ...]
  const b = el('div', { class: `bar ${parts.length > 1 ? 'stacked' : ''} ${cls}` });
  for (const [f, c] of parts) {
    const s = el('span', { class: c || '' });
    s.style.width = `${Math.max(0, Math.min(1, f || 0)) * 100}%`;
    b.append(s);
  }
  return b;
}

function pill(status) {
  return el('span', { class: `pill ${status}`, 'data-status': status }, status);
}

function when(unix) {
  if (!unix) return '—';
  return new Date(unix * 1000).toISOString().replace('T', ' ').slice(0, 19);
}

function usd(value) {
  if (value === null || value === undefined) return '—';
  // Some amounts arrive as decimal strings (exact money); show them as numbers.
  const n = Number(value);
  if (n === 0) return '$0';
  return n >= 1 ? `$${n.toFixed(2)}` : `$${n.toPrecision(3)}`;
}

function num(n) {
  return n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US');
}

function ms(n) {
  if (n === null || n === undefined) return '—';
  return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${Math.round(n)} ms`;
}

function duration(secs) {
  if (!isFinite(secs) || secs < 0) return '—';
  if (secs < 60) return `${Math.round(secs)} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ${Math.round(secs % 60)} s`;
  return `${Math.floor(secs / 3600)} h ${Math.round((secs % 3600) / 60)} min`;
}

function chunks(n) {
  return n === 1 ? '1 chunk' : `${n} chunks`;
}

function card(title, ...children) {
  return el('section', { class: 'card' }, title ? el('h2', {}, title) : null, ...children);
}

function table(head, rows, attrs = {}) {
  return el('table', attrs,
    el('thead', {}, el('tr', {}, head.map((h) => {
      const [text, cls] = Array.isArray(h) ? h : [h, ''];
      return el('th', { class: cls }, text);
    }))),
    el('tbody', {}, rows));
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function authHeaders(key) {
  return { Authorization: `Bearer ${key || sessionStorage.getItem(KEY_SLOT) || ''}` };
}

async function api(path, { method = 'GET', body, key } = {}) {
  const headers = authHeaders(key);
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const message = data?.error?.message || `${resp.status} ${resp.statusText}`;
    if (resp.status === 401 && !key) signOut(message);
    throw new ApiError(resp.status, message);
  }
  return data;
}

// Reads a Server-Sent Events response with fetch (EventSource cannot send a header).
async function readEvents(path, onEvent, signal) {
  const resp = await fetch(path, { headers: authHeaders(), signal });
  if (!resp.ok) throw new ApiError(resp.status, `events: ${resp.status}`);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n/g, '\n');
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let kind = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) kind = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) onEvent(kind, data.join('\n'));
    }
  }
}

async function download(fileId, name) {
  const resp = await fetch(`/v1/files/${encodeURIComponent(fileId)}/content`, { headers: authHeaders() });
  if (!resp.ok) throw new ApiError(resp.status, `download failed: ${resp.status}`);
  const url = URL.createObjectURL(await resp.blob());
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------- pages and navigation ----------

function leavePage() {
  if (!page) return;
  page.timers.forEach(clearInterval);
  page.aborts.forEach((a) => a.abort());
  page = null;
}

// Runs `fn` now and every `every` ms while the page is on screen; errors show in `slot`.
function live(fn, every, slot) {
  const mine = page;
  let busy = false;
  const tick = async () => {
    if (busy || page !== mine) return;
    busy = true;
    try {
      await fn();
      if (slot) slot.textContent = '';
    } catch (e) {
      if (slot) slot.textContent = e.message;
    } finally { busy = false; }
  };
  mine.timers.push(setInterval(tick, every));
  return tick();
}

const PAGES = {
  overview: { render: overviewPage, master: true },
  jobs: { render: jobsPage },
  job: { render: jobPage },
  batches: { render: batchesPage },
  spend: { render: spendPage },
  keys: { render: keysPage, master: true },
};

async function route() {
  leavePage();
  const main = document.getElementById('main');
  main.replaceChildren();
  if (!me) return;
  const [path] = location.hash.replace(/^#\/?/, '').split('?');
  const parts = path.split('/').filter(Boolean);
  let name = parts[0] || (me.master ? 'overview' : 'jobs');
  if (name === 'jobs' && parts[1]) name = 'job';
  const def = PAGES[name];
  document.querySelectorAll('#nav a').forEach((a) => {
    a.classList.toggle('active', a.dataset.page === (name === 'job' ? 'jobs' : name));
  });
  if (!def || (def.master && !me.master)) {
    main.append(card(null, el('p', { class: 'error' }, 'This page needs the master key.')));
    return;
  }
  page = { timers: [], aborts: [] };
  main.setAttribute('data-page', name);
  try {
    await def.render(main, parts.slice(1).map(decodeURIComponent));
  } catch (e) {
    main.append(card(null, el('p', { class: 'error' }, e.message)));
  }
}

// ---------- overview ----------

async function overviewPage(main) {
  const stats = el('div', { class: 'stats' });
  const tiers = el('div');
  const workers = el('div');
  const deferrals = el('div');
  const cooling = el('div');
  const deps = el('div');
  const keys = el('div');
  const err = el('p', { class: 'error' });
  main.append(
    el('h1', {}, 'Overview'), err,
    card(null, stats),
    el('div', { class: 'grid two' },
      card('Queue depth by tier', tiers),
      card('Workers', workers),
      card('Deferrals by reason', deferrals),
      card('Deployments cooling down', cooling)),
    card('Deployments: used in the last minute against each limit', deps),
    card('Virtual keys: used in the last minute against each limit', keys),
  );
  await live(async () => {
    const [ov, lim] = await Promise.all([api('/v1/overview'), api('/v1/limits')]);
    const depth = ov.tiers.reduce((s, t) => s + t.depth, 0);
    const running = ov.workers.reduce((s, w) => s + w.in_flight, 0);
    const capacity = ov.workers.reduce((s, w) => s + w.capacity, 0);
    stats.replaceChildren(
      stat('Queued', num(depth), 'total-depth'),
      stat('Running', `${num(running)} / ${num(capacity)}`, 'running'),
      stat('Workers', num(ov.workers.length), 'worker-count'),
      stat('Jobs/s', ov.jobs_per_second.toFixed(2), 'jobs-per-second'),
      stat('Finished', num(ov.finished), 'finished'),
    );
    const most = Math.max(1, ...ov.tiers.map((t) => t.depth));
    const byTier = new Map(ov.tiers.map((t) => [t.tier, t]));
    tiers.replaceChildren(table(
      ['Tier', ['Depth', 'num'], '', ['Waiting', 'num'], ['Delivered', 'num'], ['Oldest', 'num']],
      TIERS.map((name) => {
        const t = byTier.get(name) || { depth: 0, pending: 0, ack_pending: 0 };
        return el('tr', { 'data-tier': name },
          el('td', {}, name),
          el('td', { class: 'num', id: `depth-${name}` }, String(t.depth)),
          el('td', {}, bar([[t.depth / most]])),
          el('td', { class: 'num' }, num(t.pending)),
          el('td', { class: 'num' }, num(t.ack_pending)),
          el('td', { class: 'num' }, t.oldest_age_seconds == null ? '—' : duration(t.oldest_age_seconds)));
      })));
    workers.replaceChildren(ov.workers.length === 0
      ? el('p', { class: 'empty' }, 'No worker heard from in the last 15 s.')
      : table(['Worker', ['Jobs', 'num'], '', 'State'], ov.workers.map((w) => el('tr', {},
        el('td', { class: 'mono' }, w.worker),
        el('td', { class: 'num' }, `${w.in_flight} / ${w.capacity}`),
        el('td', {}, bar([[w.in_flight / Math.max(1, w.capacity)]])),
        el('td', {}, w.draining ? pill('draining') : pill('running'))))));
    const reasons = Object.entries(ov.deferrals);
    deferrals.replaceChildren(reasons.length === 0
      ? el('p', { class: 'empty' }, 'No job has had to wait for a limit.')
      : table(['Reason', ['Deferrals', 'num']], reasons.map(([r, n]) => el('tr', { 'data-reason': r },
        el('td', {}, r), el('td', { class: 'num' }, num(n))))),
    el('p', { class: 'muted' }, 'Counted since the live workers started.'));
    const cool = lim.deployments.filter((d) => d.cooldown_ms > 0);
    cooling.replaceChildren(cool.length === 0
      ? el('p', { class: 'empty' }, 'None: every deployment takes calls.')
      : table(['Deployment', 'Group', ['Back in', 'num']], cool.map((d) => el('tr', { 'data-cooling': d.id },
        el('td', { class: 'mono' }, d.id), el('td', {}, d.model_group),
        el('td', { class: 'num' }, duration(d.cooldown_ms / 1000))))));
    deps.replaceChildren(table(
      ['Deployment', 'Group', 'Provider', ['Requests/min', 'num'], '', ['Tokens/min', 'num'], '', ['In flight', 'num']],
      lim.deployments.map((d) => el('tr', { 'data-deployment': d.id },
        el('td', { class: 'mono' }, d.id), el('td', {}, d.model_group), el('td', {}, d.provider),
        ...usedCells(d.rpm), ...usedCells(d.tpm),
        el('td', { class: 'num' }, used(d.in_flight))))));
    keys.replaceChildren(lim.keys.length === 0
      ? el('p', { class: 'empty' }, 'No virtual keys.')
      : table(['Key', 'Name', ['Requests/min', 'num'], '', ['Tokens/min', 'num'], '', 'Budget'],
        lim.keys.map((k) => el('tr', {},
          el('td', { class: 'mono' }, k.id), el('td', {}, k.name || ''),
          ...usedCells(k.rpm), ...usedCells(k.tpm),
          el('td', {}, budgetText(k.budget))))));
  }, 2000, err);
}

function stat(label, value, id) {
  return el('div', { class: 'stat' },
    el('div', { class: 'value', id: `stat-${id}` }, value),
    el('div', { class: 'label' }, label));
}

function used(u) {
  return u.limit == null ? `${num(u.used)} (no limit)` : `${num(u.used)} / ${num(u.limit)}`;
}

function usedCells(u) {
  const f = u.limit ? u.used / u.limit : 0;
  return [el('td', { class: 'num' }, used(u)),
    el('td', {}, u.limit ? bar([[f, f > 0.9 ? 'hot' : '']]) : '')];
}

function budgetText(b) {
  if (b.limit == null) return `${usd(b.spent)} (no budget)`;
  return `${usd(b.spent)} of ${usd(b.limit)}${b.period ? ` per ${b.period}` : ''}`;
}

// ---------- jobs ----------

async function jobsPage(main) {
  const filters = readFilters();
  const models = await api('/v1/models').catch(() => ({ data: [] }));
  const form = el('form', { class: 'filters', id: 'job-filters' },
    select('Status', 'status', STATUSES, filters.status),
    select('Model', 'model', models.data.map((m) => m.id), filters.model),
    me.master ? el('label', {}, 'Key', el('input', { name: 'key', value: filters.key || '', placeholder: 'master or key id', size: 22 })) : null,
    select('Priority', 'priority', TIERS, filters.priority),
    el('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    location.hash = `#/jobs${q.toString() ? `?${q}` : ''}`;
  });
  const err = el('p', { class: 'error' });
  const body = el('tbody', { id: 'job-rows' });
  const more = el('button', { type: 'button', id: 'older', class: 'more', hidden: true }, 'Older jobs');
  main.append(el('h1', {}, me.master ? 'Jobs' : 'Your jobs'), form, err,
    card(null, el('table', { id: 'jobs' },
      el('thead', {}, el('tr', {}, ['Job', 'Status', 'Model', 'Priority', 'Key', 'Attempts', 'Cost', 'Created', 'Error', '']
        .map((h) => el('th', { class: ['Attempts', 'Cost'].includes(h) ? 'num' : '' }, h)))),
      body), more));

  // The newest `size` jobs are re-read every 2 s (at most 100, the API's page limit);
  // "Older jobs" first widens that window, then appends pages read with the cursor.
  let size = 25;
  let first = { data: [], has_more: false, last_id: null };
  let older = [];
  let olderMore = false;
  const query = (limit, after) => {
    const q = new URLSearchParams({ limit: String(limit) });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (after) q.set('after', after);
    return `/v1/jobs?${q}`;
  };
  const draw = () => {
    const rows = [...first.data, ...older];
    body.replaceChildren(...rows.map(jobRow));
    if (rows.length === 0) body.append(el('tr', {}, el('td', { colspan: 10, class: 'empty' }, 'No jobs match.')));
    more.hidden = older.length ? !olderMore : !first.has_more;
  };
  const refresh = async () => {
    first = await api(query(size, null));
    draw();
  };
  more.addEventListener('click', async () => {
    try {
      if (size < 100) {
        size += 25;
        await refresh();
        return;
      }
      const after = older.length ? older[older.length - 1].id : first.last_id;
      const next = await api(query(100, after));
      older = older.concat(next.data);
      olderMore = next.has_more;
      draw();
    } catch (x) { err.textContent = x.message; }
  });
  await live(refresh, 2000, err);
}

function readFilters() {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  return { status: q.get('status'), model: q.get('model'), key: q.get('key'), priority: q.get('priority') };
}

function select(label, name, options, value) {
  return el('label', {}, label, el('select', { name },
    el('option', { value: '' }, 'any'),
    options.map((o) => el('option', { value: o, selected: o === value }, o))));
}

function jobRow(j) {
  return el('tr', { 'data-job': j.id, 'data-status': j.status },
    el('td', { class: 'mono' }, el('a', { href: `#/jobs/${j.id}` }, j.id.slice(0, 8) + '…' + j.id.slice(-4))),
    el('td', {}, pill(j.status)),
    el('td', {}, j.model),
    el('td', {}, j.priority),
    el('td', { class: 'mono' }, j.key),
    el('td', { class: 'num' }, String(j.attempts)),
    el('td', { class: 'num' }, j.pricing_missing ? 'unpriced' : usd(j.cost)),
    el('td', {}, when(j.created_at)),
    el('td', {}, j.error_class || ''),
    el('td', {}, TERMINAL.has(j.status) ? '' : el('button', {
      type: 'button', class: 'danger', 'data-cancel': j.id,
      onclick: async (e) => { e.target.disabled = true; await cancelJob(j.id).catch((x) => alert(x.message)); },
    }, 'Cancel')));
}

async function cancelJob(id) {
  return api(`/v1/jobs/${id}/cancel`, { method: 'POST' });
}

async function jobPage(main, [id]) {
  const err = el('p', { class: 'error' });
  const head = el('div', { class: 'row' });
  const facts = el('dl', { class: 'facts' });
  const attempts = el('div');
  const output = el('pre', { class: 'output', id: 'job-output' });
  const outNote = el('p', { class: 'muted', id: 'job-output-note' });
  main.append(el('p', {}, el('a', { href: '#/jobs' }, '← Jobs')), head, err,
    el('div', { class: 'grid two' }, card('Job', facts), card('Output', output, outNote)),
    card('Attempts', attempts));

  let job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
  const drawJob = () => {
    fill(head, el('h1', { class: 'mono' }, job.id), el('span', { id: 'job-status' }, pill(job.status)),
      TERMINAL.has(job.status) ? null : el('button', {
        type: 'button', class: 'danger', id: 'job-cancel',
        onclick: async (e) => {
          e.target.disabled = true;
          try { await cancelJob(job.id); await poll(); } catch (x) { err.textContent = x.message; }
        },
      }, 'Cancel job'));
    const fact = (k, v) => [el('dt', {}, k), el('dd', {}, v)];
    facts.replaceChildren(
      ...fact('Model', job.model), ...fact('Priority', job.priority),
      ...fact('Created', when(job.created_at)), ...fact('Started', when(job.started_at)),
      ...fact('Finished', when(job.finished_at)),
      ...fact('Waited in queue', ms(job.queue_wait_ms)), ...fact('Ran for', ms(job.run_ms)),
      ...fact('Attempts', String(job.attempts)),
      ...fact('Cost', job.pricing_missing ? 'unpriced (no price configured)' : usd(job.cost)),
      ...fact('Tokens', job.usage ? `${num(job.usage.prompt_tokens)} in, ${num(job.usage.completion_tokens)} out` : '—'),
      ...(job.not_before && !TERMINAL.has(job.status) ? fact('Waiting until', when(job.not_before)) : []),
      ...(job.error ? fact('Error', el('span', { class: 'error', id: 'job-error' }, `${job.error.class}: ${job.error.message}`)) : []),
    );
    attempts.replaceChildren(job.attempt_log.length === 0
      ? el('p', { class: 'empty' }, 'No provider call yet.')
      : table(['#', 'Deployment', 'Provider', 'Status', 'Error class', ['TTFT', 'num'], ['Latency', 'num'],
        ['Tokens in/out', 'num'], ['Cost', 'num']],
      job.attempt_log.map((a) => el('tr', { 'data-attempt': a.attempt },
        el('td', {}, String(a.attempt)), el('td', { class: 'mono' }, a.deployment), el('td', {}, a.provider),
        el('td', {}, pill(a.status)),
        el('td', { class: 'error-class', title: a.error?.message || '' }, a.error ? a.error.class : ''),
        el('td', { class: 'num' }, ms(a.ttft_ms)), el('td', { class: 'num' }, ms(a.latency_ms)),
        el('td', { class: 'num' }, `${num(a.prompt_tokens)} / ${num(a.completion_tokens)}${a.usage_estimated ? ' (est.)' : ''}`),
        el('td', { class: 'num' }, a.pricing_missing ? 'unpriced' : usd(a.cost)))), { id: 'attempts' }));
  };
  drawJob();
  const finalText = () => job.result?.choices?.[0]?.message?.content ?? '';
  if (TERMINAL.has(job.status)) {
    output.textContent = finalText();
    outNote.textContent = job.status === 'succeeded' ? '' : 'The job ended without a result.';
    return;
  }
  // The row says when the job ends, and holds the attempts and the final text.
  const abort = new AbortController();
  page.aborts.push(abort);
  let received = 0;
  const poll = async () => {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    drawJob();
    if (TERMINAL.has(job.status)) {
      page.timers.forEach(clearInterval);
      abort.abort();
      if (job.status === 'succeeded') output.textContent = finalText();
      outNote.textContent = job.status === 'succeeded'
        ? `Finished: ${chunks(received)} streamed live.` : `The job is ${job.status}.`;
    }
  };
  // Tokens as they stream: the job's event stream, replayed from its start. The first
  // token also re-reads the row, so the status shows running at once.
  outNote.textContent = 'Waiting for tokens…';
  readEvents(`/v1/jobs/${encodeURIComponent(id)}/events`, (kind, data) => {
    if (data === '[DONE]') return;
    if (kind === 'retry') {
      output.textContent = '';
      outNote.textContent = 'The call is being retried; its output starts again.';
      return;
    }
    if (kind !== 'message') return;
    let piece = null;
    try { piece = JSON.parse(data).choices?.[0]?.delta?.content; } catch { piece = null; }
    if (!piece) return;
    if (received === 0) poll().catch(() => {});
    output.textContent += piece;
    received += 1;
    output.dataset.chunks = String(received);
    outNote.textContent = `Streaming… ${chunks(received)} so far`;
  }, abort.signal).catch((e) => { if (!abort.signal.aborted) err.textContent = e.message; });
  await live(poll, 1000, err);
}

// ---------- batches ----------

async function batchesPage(main) {
  const err = el('p', { class: 'error' });
  const list = el('div', { id: 'batches' });
  main.append(el('h1', {}, me.master ? 'Batches' : 'Your batches'), err, list);
  await live(async () => {
    const page1 = await api('/v1/batches?limit=50');
    list.replaceChildren(page1.data.length === 0
      ? card(null, el('p', { class: 'empty' }, 'No batches yet. Create one with `sluice batch submit` or POST /v1/batches.'))
      : card(null, table(['Batch', 'Status', 'Progress', ['Done', 'num'], 'ETA', 'Created', 'Files', ''],
        page1.data.map(batchRow))));
  }, 2000, err);
}

function batchRow(b) {
  const c = b.request_counts;
  const p = b.progress || { queued: 0, running: 0, cancelled: 0, expired: 0 };
  const total = Math.max(1, c.total);
  const done = c.completed + c.failed;
  // OpenAI counts lines that never ran (cancelled, expired) as failed; show them apart.
  const ended = p.cancelled + p.expired;
  const failed = Math.max(0, c.failed - ended);
  let eta = '—';
  if (b.status === 'in_progress' && b.in_progress_at && done > 0 && done < c.total) {
    const elapsed = Date.now() / 1000 - b.in_progress_at;
    eta = duration(((c.total - done) * elapsed) / done);
  } else if (b.status === 'completed') eta = 'done';
  const files = [];
  if (b.output_file_id) files.push(el('button', { type: 'button', class: 'link', 'data-download': 'output', onclick: () => download(b.output_file_id, `${b.id}_output.jsonl`).catch((e) => alert(e.message)) }, 'output'));
  if (b.error_file_id) files.push(el('button', { type: 'button', class: 'link', 'data-download': 'errors', onclick: () => download(b.error_file_id, `${b.id}_errors.jsonl`).catch((e) => alert(e.message)) }, 'errors'));
  const counts = [`${num(c.completed)} ok`, failed ? `${num(failed)} failed` : null,
    p.cancelled ? `${num(p.cancelled)} cancelled` : null, p.expired ? `${num(p.expired)} expired` : null,
    p.running ? `${num(p.running)} running` : null, p.queued ? `${num(p.queued)} queued` : null]
    .filter(Boolean).join(' · ');
  return el('tr', {
    'data-batch': b.id, 'data-status': b.status, 'data-completed': c.completed,
    'data-failed': failed, 'data-cancelled': p.cancelled, 'data-total': c.total,
  },
  el('td', { class: 'mono' }, b.id, el('div', { class: 'muted' }, `${b.priority || ''} · ${b.completion_window}`)),
  el('td', {}, pill(b.status)),
  el('td', { class: 'progress' },
    bar([[c.completed / total, 'ok'], [failed / total, 'bad'], [ended / total, 'off'], [p.running / total, 'run']], 'big'),
    el('div', { class: 'muted counts' }, `${counts} of ${num(c.total)}`)),
  el('td', { class: 'num done' }, `${num(done)} / ${num(c.total)}`),
  el('td', { class: 'eta' }, eta),
  el('td', {}, when(b.created_at)),
  el('td', {}, files.length ? files : '—'),
  el('td', {}, BATCH_LIVE.has(b.status) && b.status !== 'cancelling' ? el('button', {
    type: 'button', class: 'danger', 'data-cancel-batch': b.id,
    onclick: async (e) => {
      e.target.disabled = true;
      try { await api(`/v1/batches/${encodeURIComponent(b.id)}/cancel`, { method: 'POST' }); } catch (x) { alert(x.message); }
    },
  }, 'Cancel') : ''));
}

// ---------- spend ----------

async function spendPage(main) {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  const days = Number(q.get('days')) || 30;
  const err = el('p', { class: 'error' });
  const range = el('div', { class: 'row' }, 'Last',
    ...[1, 7, 30, 90].map((d) => el('a', { href: `#/spend?days=${d}`, class: d === days ? 'pill running' : 'pill' }, `${d} d`)));
  const total = el('div', { class: 'stats' });
  const charts = el('div', { class: 'grid' });
  main.append(el('h1', {}, me.master ? 'Spend' : 'Your spend'), range, err, card(null, total), charts);
  const from = new Date(Date.now() - days * 86400000).toISOString();
  const groups = ['model', 'key', 'provider', 'day'];
  const reports = await Promise.all(groups.map((g) => api(`/v1/spend?group_by=${g}&from=${encodeURIComponent(from)}`)));
  // The master key may list keys: label the by-key chart with their names.
  const keyNames = new Map();
  if (me.master) {
    const keys = await api('/v1/keys').catch(() => ({ data: [] }));
    keys.data.forEach((k) => { if (k.name) keyNames.set(k.id, k.name); });
  }
  const r0 = reports[0];
  const calls = r0.data.reduce((s, r) => s + r.calls, 0);
  const tokens = r0.data.reduce((s, r) => s + r.prompt_tokens + r.completion_tokens, 0);
  total.replaceChildren(stat('Total', usd(r0.total_cost), 'spend-total'), stat('Calls', num(calls), 'spend-calls'),
    stat('Tokens', num(tokens), 'spend-tokens'), stat('Unpriced calls', num(r0.unpriced_calls), 'spend-unpriced'));
  groups.forEach((g, i) => {
    const rows = reports[i].data;
    const chart = g === 'day' ? dayChart(rows, days) : barChart(rows, g === 'key' ? keyNames : undefined);
    charts.append(el('section', { class: 'card', 'data-spend': g }, el('h2', {}, `By ${g}`), chart,
      el('p', { class: 'muted' }, `Total ${usd(reports[i].total_cost)}`)));
  });
}

function barChart(rows, names = new Map()) {
  if (rows.length === 0) return el('p', { class: 'empty' }, 'Nothing spent in this range.');
  const sorted = [...rows].sort((a, b) => b.cost - a.cost).slice(0, 12);
  const most = Math.max(...sorted.map((r) => r.cost), 1e-12);
  const w = 400;
  const labelW = 130;
  const valueW = 80;
  const rowH = 26;
  const chart = svg('svg', { class: 'chart', viewBox: `0 0 ${w} ${sorted.length * rowH + 4}`, width: '100%', role: 'img' });
  sorted.forEach((r, i) => {
    const y = i * rowH + 4;
    const label = names.get(r.group) || r.group;
    const len = ((w - labelW - valueW) * r.cost) / most;
    chart.append(
      svg('text', { x: 0, y: y + 14 }, label.length > 17 ? `${label.slice(0, 16)}…` : label),
      svg('rect', { class: 'track', x: labelW, y: y + 3, width: w - labelW - valueW, height: 14, rx: 3 }),
      svg('rect', { class: 'val', x: labelW, y: y + 3, width: Math.max(1, len), height: 14, rx: 3 },
        svg('title', {}, `${r.group}${label !== r.group ? ` (${label})` : ''}: ${usd(r.cost)}, ${r.calls} calls, ${r.jobs} jobs`)),
      svg('text', { x: w, y: y + 14, 'text-anchor': 'end' }, usd(r.cost)));
  });
  return chart;
}

function dayChart(rows, days) {
  if (rows.length === 0) return el('p', { class: 'empty' }, 'Nothing spent in this range.');
  const byDay = new Map(rows.map((r) => [r.group, r]));
  const list = [];
  for (let i = days - 1; i >= 0; i -= 1) {
    const d = new Date(Date.now() - i * 86400000).toISOString().slice(0, 10);
    list.push([d, byDay.get(d)?.cost || 0]);
  }
  const most = Math.max(...list.map(([, c]) => c), 1e-12);
  const w = 400;
  const h = 120;
  const slot = w / list.length;
  const chart = svg('svg', { class: 'chart', viewBox: `0 0 ${w} ${h + 34}`, width: '100%', role: 'img' });
  list.forEach(([d, c], i) => {
    const bh = (h * c) / most;
    chart.append(svg('rect', { class: c ? 'val' : 'track', x: i * slot + 1, y: h - Math.max(bh, 1), width: Math.max(1, slot - 2), height: Math.max(bh, 1) },
      svg('title', {}, `${d}: ${usd(c)}`)));
  });
  chart.append(
    svg('text', { x: 0, y: h + 16, class: 'muted' }, list[0][0]),
    svg('text', { x: w, y: h + 16, 'text-anchor': 'end', class: 'muted' }, list[list.length - 1][0]),
    svg('text', { x: 0, y: h + 32, class: 'muted' }, `highest day ${usd(most)}`));
  return chart;
}

// ---------- keys ----------

async function keysPage(main) {
  const err = el('p', { class: 'error' });
  const created = el('div', { id: 'key-created' });
  const list = el('div');
  const field = (label, name, attrs = {}) => el('label', {}, label, el('input', { name, ...attrs }));
  const form = el('form', { class: 'form', id: 'key-form' },
    field('Name', 'name', { placeholder: 'team-a' }),
    field('Models (empty = all)', 'models', { placeholder: 'fast, smart' }),
    field('Requests/min', 'rpm_limit', { type: 'number', min: 0 }),
    field('Tokens/min', 'tpm_limit', { type: 'number', min: 0 }),
    field('Parallel requests', 'max_parallel_requests', { type: 'number', min: 0 }),
    field('Budget (USD)', 'max_budget', { type: 'number', min: 0, step: 'any' }),
    field('Budget period', 'budget_duration', { placeholder: '30d' }),
    el('button', { type: 'submit' }, 'Create key'));
  main.append(el('h1', {}, 'Keys'), err, card('New key', form, created), card('Keys', list));
  const draw = async () => {
    const [keys, lim] = await Promise.all([api('/v1/keys'), api('/v1/limits')]);
    const usage = new Map(lim.keys.map((k) => [k.id, k]));
    list.replaceChildren(keys.data.length === 0 ? el('p', { class: 'empty' }, 'No keys yet.')
      : table(['Id', 'Name', 'Key', 'Models', ['Requests/min', 'num'], ['Tokens/min', 'num'], ['Parallel', 'num'], 'Budget', 'Created', ''],
        keys.data.map((k) => {
          const u = usage.get(k.id);
          const b = u?.budget;
          return el('tr', { 'data-key': k.id },
            el('td', { class: 'mono' }, k.id), el('td', {}, k.name || ''), el('td', { class: 'mono' }, k.hint),
            el('td', {}, k.models.length ? k.models.join(', ') : 'all'),
            el('td', { class: 'num' }, u ? used(u.rpm) : num(k.rpm_limit)),
            el('td', { class: 'num' }, u ? used(u.tpm) : num(k.tpm_limit)),
            el('td', { class: 'num' }, u ? used(u.in_flight) : num(k.max_parallel_requests)),
            el('td', {}, b ? [budgetText(b), b.limit ? bar([[Number(b.spent) / Number(b.limit), Number(b.spent) / Number(b.limit) > 0.9 ? 'hot' : '']]) : null] : '—'),
            el('td', {}, new Date(k.created_at).toISOString().slice(0, 10)),
            el('td', {}, el('button', {
              type: 'button', class: 'danger', 'data-revoke': k.id,
              onclick: async (e) => {
                if (!confirm(`Revoke key ${k.id}${k.name ? ` (${k.name})` : ''}? Clients using it stop working.`)) return;
                e.target.disabled = true;
                try { await api(`/v1/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' }); await draw(); } catch (x) { err.textContent = x.message; }
              },
            }, 'Revoke')));
        }), { id: 'keys' }));
  };
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = {};
    for (const [k, v] of new FormData(form)) {
      if (v === '') continue;
      if (k === 'models') body.models = v.split(',').map((s) => s.trim()).filter(Boolean);
      else if (['name', 'budget_duration'].includes(k)) body[k] = v;
      else body[k] = Number(v);
    }
    try {
      const k = await api('/v1/keys', { method: 'POST', body });
      form.reset();
      created.replaceChildren(el('div', { class: 'notice' },
        el('p', {}, `Key ${k.id}${k.name ? ` (${k.name})` : ''} created. Copy it now: it is shown only once.`),
        el('div', { class: 'secret', id: 'new-key', 'data-key-id': k.id }, k.key)));
      await draw();
    } catch (x) { err.textContent = x.message; }
  });
  await live(draw, 5000, err);
}

// ---------- sign-in ----------

function signOut(message) {
  sessionStorage.removeItem(KEY_SLOT);
  me = null;
  showSignIn(message || '');
}

function showSignIn(message) {
  leavePage();
  document.getElementById('main').replaceChildren();
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('who').textContent = '';
  document.getElementById('signin').hidden = false;
  document.getElementById('signin-error').textContent = message;
  document.getElementById('key').focus();
}

function signedIn(who) {
  me = who;
  document.getElementById('signin').hidden = true;
  const nav = document.getElementById('nav');
  nav.hidden = false;
  nav.querySelectorAll('a[data-master]').forEach((a) => { a.hidden = !me.master; });
  document.getElementById('signout').hidden = false;
  document.getElementById('who').textContent = me.master
    ? 'master key'
    : `key ${me.key}${me.record?.name ? ` (${me.record.name})` : ''}`;
  route();
}

async function start() {
  document.getElementById('signin-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const input = document.getElementById('key');
    const key = input.value.trim();
    try {
      const who = await api('/v1/me', { key });
      sessionStorage.setItem(KEY_SLOT, key);
      input.value = '';
      signedIn(who);
    } catch (x) {
      document.getElementById('signin-error').textContent = x.status === 401 ? 'That key was not accepted.' : x.message;
    }
  });
  document.getElementById('signout').addEventListener('click', () => { location.hash = ''; signOut(''); });
  window.addEventListener('hashchange', route);
  if (!sessionStorage.getItem(KEY_SLOT)) return showSignIn('');
  try {
    signedIn(await api('/v1/me', { key: sessionStorage.getItem(KEY_SLOT) }));
  } catch (x) {
    signOut(x.status === 401 ? 'Your key is no longer accepted; sign in again.' : x.message);
  }
}

start();
