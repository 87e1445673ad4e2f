// Small DOM and formatting helpers shared by the pages.

/** h('div', {class: 'x', onclick: f}, child, 'text', [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let flashTimer;
export function flash(message, isError = false) {
  const el = document.getElementById('flash');
  if (!el) return;
  el.textContent = message;
  el.className = isError ? 'error' : '';
  el.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { el.hidden = true; }, isError ? 8000 : 3000);
}

export const COMPLETED = ['Succeed', 'Failed', 'Cancelled', 'Timeout'];
export const JOB_STATUSES = ['Inited', 'WaitForRetry', 'Scheduled', 'Running', 'Succeed', 'Failed', 'Cancelled', 'Timeout'];

export function badge(status) {
  return h('span', { class: `status ${status || ''}`, 'data-status': status || '' }, status || '—');
}

export function fmtTime(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function fmtDuration(ms) {
  if (ms === undefined || ms === null || ms < 0) return '—';
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function progressBar(fraction) {
  const pct = Math.max(0, Math.min(100, Math.round((Number(fraction) || 0) * 100)));
  const fill = h('div', { class: 'fill' });
  fill.style.width = `${pct}%`;
  return h('div', { class: 'progress', role: 'progressbar', 'aria-valuenow': pct, 'aria-valuemin': 0, 'aria-valuemax': 100 },
    fill, h('span', { class: 'label' }, `${pct}%`));
}

const UNITS = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4, PB: 1024 ** 5 };
/** "1.5 GB" → bytes. */
export function parseMemory(s) {
  if (typeof s === 'number') return s;
  const m = /^\s*([\d.]+)\s*([KMGTP]?B)?\s*$/i.exec(String(s || ''));
  if (!m) return 0;
  return Number(m[1]) * (UNITS[(m[2] || 'B').toUpperCase()] || 1);
}

export function fmtBytes(n) {
  if (!n) return '0 B';
  const units = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

/** A bar of used + locked out of max, with the numbers beside it. */
export function usageBar(used, locked, max, fmt = String) {
  const u = h('div', { class: 'used' });
  const l = h('div', { class: 'locked' });
  const share = (x) => (max > 0 ? `${Math.min(100, (x / max) * 100)}%` : '0%');
  u.style.width = share(used);
  l.style.width = share(locked);
  const title = `used ${fmt(used)}, locked ${fmt(locked)}, max ${fmt(max)}`;
  return h('div', { class: 'usage', title },
    h('div', { class: 'bar' }, u, l),
    h('div', { class: 'legend' }, `${fmt(used)} used · ${fmt(locked)} locked · ${fmt(max)} max`));
}

/** Bars for memory, cores and instances of Linkis resources ({memory, cpu, instance}). */
export function resourceBars(used, locked, max) {
  used = used || {}; locked = locked || {}; max = max || {};
  return h('div', { class: 'bars' },
    h('div', {}, h('span', { class: 'muted' }, 'memory'), usageBar(parseMemory(used.memory), parseMemory(locked.memory), parseMemory(max.memory), fmtBytes)),
    h('div', {}, h('span', { class: 'muted' }, 'cores'), usageBar(used.cpu || 0, locked.cpu || 0, max.cpu || 0)),
    h('div', {}, h('span', { class: 'muted' }, 'instances'), usageBar(used.instance || 0, locked.instance || 0, max.instance || 0)));
}

export function fmtResource(r) {
  if (!r) return '—';
  return `${r.memory}, ${r.cpu} cores, ${r.instance} inst.`;
}

export function labels(list) {
  return h('div', { class: 'labels' }, (list || []).map((l) => h('span', {}, `${l.labelKey}=${l.stringValue}`)));
}

export function kv(name, value) {
  return h('div', { class: 'kv' }, h('span', {}, name), h('span', {}, value ?? '—'));
}

/**
 * A table: columns [{title, cell(row) → node|text, class}], rows.
 */
export function table(columns, rows, { empty = 'Nothing to show.', rowAttrs } = {}) {
  if (!rows || rows.length === 0) return h('p', { class: 'muted empty' }, empty);
  return h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.class }, c.title)))),
    h('tbody', {}, rows.map((r) => h('tr', rowAttrs ? rowAttrs(r) : {}, columns.map((c) => h('td', { class: c.class }, c.cell(r))))))));
}

export function pager(page, pages, go) {
  return h('div', { class: 'pager' },
    h('button', { class: 'secondary', type: 'button', disabled: page <= 1, onclick: () => go(page - 1), 'data-action': 'prev' }, '‹ Prev'),
    h('span', { class: 'page-info' }, `page ${page} of ${Math.max(pages, 1)}`),
    h('button', { class: 'secondary', type: 'button', disabled: page >= pages, onclick: () => go(page + 1), 'data-action': 'next' }, 'Next ›'));
}

export function csvText(header, rows) {
  const cell = (v) => {
    const s = v === null || v === undefined ? '' : String(v);
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [header, ...rows].map((r) => r.map(cell).join(',')).join('\r\n') + '\r\n';
}

export function download(name, text, type = 'text/csv;charset=utf-8') {
  const blobUrl = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: blobUrl, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(blobUrl), 10000);
}

/** Run an action from a button: disable it meanwhile, show the error. */
export async function act(button, f) {
  if (button) button.disabled = true;
  try {
    return await f();
  } catch (e) {
    flash(e.message, true);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

export function errorBox(e) {
  return h('p', { class: 'error' }, e.message || String(e));
}
