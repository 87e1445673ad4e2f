// Engine history (`linkisManager/ecinfo/ecrHistoryList`): ended engines with
// their final status, why they ended, what they held and how long they lived.
// A user sees their own; an admin everyone's, or one user's.
import { get } from '../api.js';
import { badge, clear, errorBox, fmtBytes, fmtDuration, fmtTime, h, pager, table } from '../ui.js';

const PAGE_SIZE = 20;
const STATUSES = ['Success', 'Failed', 'ShuttingDown'];
const filters = { engineType: '', status: '', creator: '', instance: '', page: 1 };

/** A stored resource is Linkis's LoadInstance JSON (memory in bytes). */
function resource(json) {
  if (!json) return '—';
  try {
    const r = JSON.parse(json);
    return `${fmtBytes(Number(r.memory) || 0)}, ${r.cores ?? 0} cores, ${r.instance ?? 0} inst.`;
  } catch {
    return json;
  }
}

export async function render(main, { session }) {
  const field = (name, placeholder) => {
    const el = h('input', { name, value: filters[name], placeholder });
    el.addEventListener('change', () => { filters[name] = el.value.trim(); });
    return el;
  };
  const status = h('select', { name: 'status' }, h('option', { value: '' }, 'all'), STATUSES.map((s) => h('option', { value: s }, s)));
  status.value = filters.status;
  status.addEventListener('change', () => { filters.status = status.value; });
  const results = h('div', { id: 'ended-results' });
  const form = h('form', {
    class: 'filters card',
    id: 'ended-filters',
    onsubmit: (ev) => {
      ev.preventDefault();
      for (const el of form.querySelectorAll('input')) filters[el.name] = el.value.trim();
      filters.page = 1;
      load();
    },
  },
  h('label', {}, 'Engine type', field('engineType', 'e.g. shell')),
  h('label', {}, 'Status', status),
  h('label', {}, 'Instance', field('instance', 'host:port')),
  session.isAdmin ? h('label', {}, 'User', field('creator', 'any')) : null,
  h('button', { type: 'submit' }, 'Search'));
  main.append(h('h1', {}, session.isAdmin ? 'Engine history (every user)' : 'My engine history'), form, results);

  async function load() {
    let data;
    try {
      data = await get('linkisManager/ecinfo/ecrHistoryList', {
        engineType: filters.engineType, status: filters.status, instance: filters.instance,
        creator: session.isAdmin ? filters.creator : undefined, pageNow: filters.page, pageSize: PAGE_SIZE,
      });
    } catch (e) {
      clear(results, errorBox(e));
      return;
    }
    const total = data.totalPage || 0; // the record count, as in Linkis
    const rows = data.engineList || [];
    clear(results,
      h('p', { class: 'muted', id: 'ended-count' }, `${total} ended engine${total === 1 ? '' : 's'}`),
      table([
        { title: 'Ticket', cell: (r) => r.ticketId },
        { title: 'Instance', cell: (r) => r.serviceInstance || '(never started)' },
        { title: 'Engine type', cell: (r) => r.engineType },
        { title: 'User', cell: (r) => r.createUser },
        { title: 'Status', cell: (r) => badge(r.status) },
        { title: 'Why it ended', class: 'reason', cell: (r) => r.releaseReason },
        { title: 'Resource', cell: (r) => resource(r.usedResource || r.requestResource) },
        { title: 'ECM', cell: (r) => r.ecmInstance },
        { title: 'Created', cell: (r) => fmtTime(r.createTime) },
        { title: 'Lived', cell: (r) => fmtDuration(r.releaseTime && r.createTime ? r.releaseTime - r.createTime : undefined) },
      ], rows, { empty: 'No ended engines match.', rowAttrs: (r) => ({ 'data-ticket': r.ticketId, 'data-status': r.status }) }),
      total > PAGE_SIZE ? pager(filters.page, Math.ceil(total / PAGE_SIZE), (p) => { filters.page = p; load(); }) : null);
  }
  await load();
}
