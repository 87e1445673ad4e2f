// Job history (`jobhistory/list`): filters, paging (`totalPage` is the row
// count, as in Linkis), kill of unfinished jobs.
import { get, post } from '../api.js';
import { COMPLETED, JOB_STATUSES, act, badge, clear, errorBox, flash, fmtDuration, fmtTime, h, pager, progressBar, table } from '../ui.js';

const PAGE_SIZE = 20;

function engineType(r) {
  const l = (r.labels || []).find((x) => x.startsWith('engineType:'));
  return l ? l.slice('engineType:'.length) : r.executeApplicationName;
}
// Kept while the console is open, so coming back from a job keeps the filters.
const filters = { status: '', creator: '', engineType: '', startDate: '', endDate: '', taskID: '', allUsers: false, page: 1 };

function dayStart(value) {
  if (!value) return undefined;
  const [y, m, d] = value.split('-').map(Number);
  return new Date(y, m - 1, d).getTime();
}

export async function render(main, { session }) {
  const input = (name, attrs = {}) => {
    const el = h('input', { name, value: filters[name], ...attrs });
    el.addEventListener('change', () => { filters[name] = el.value.trim(); });
    return el;
  };
  const status = h('select', { name: 'status' }, h('option', { value: '' }, 'all'), JOB_STATUSES.map((s) => h('option', { value: s }, s)));
  status.value = filters.status;
  status.addEventListener('change', () => { filters.status = status.value; });
  const all = h('input', { type: 'checkbox', name: 'allUsers' });
  all.checked = filters.allUsers;
  all.addEventListener('change', () => { filters.allUsers = all.checked; });
  const results = h('div', { id: 'history-results' });
  const form = h('form', {
    class: 'filters card',
    id: 'history-filters',
    onsubmit: (ev) => {
      ev.preventDefault();
      for (const el of form.querySelectorAll('input:not([type=checkbox])')) filters[el.name] = el.value.trim();
      filters.page = 1;
      load();
    },
  },
  h('label', {}, 'Task ID', input('taskID', { type: 'number', min: 1, placeholder: 'any' })),
  h('label', {}, 'Status', status),
  h('label', {}, 'Creator', input('creator', { placeholder: 'e.g. IDE' })),
  h('label', {}, 'Engine type', input('engineType', { placeholder: 'e.g. shell' })),
  h('label', {}, 'From', input('startDate', { type: 'date' })),
  h('label', {}, 'To', input('endDate', { type: 'date' })),
  session.isAdmin ? h('label', {}, 'All users', all) : null,
  h('button', { type: 'submit' }, 'Search'),
  h('button', {
    type: 'button', class: 'secondary', onclick: () => {
      Object.assign(filters, { status: '', creator: '', engineType: '', startDate: '', endDate: '', taskID: '', page: 1 });
      for (const el of form.querySelectorAll('input:not([type=checkbox])')) el.value = '';
      status.value = '';
      load();
    },
  }, 'Reset'));
  main.append(h('h1', {}, 'Job history'), form, results);

  async function kill(row, button) {
    await act(button, async () => {
      await post(`entrance/${encodeURIComponent(row.execId)}/kill`);
      flash(`Job ${row.taskID} is being killed.`);
      setTimeout(load, 800);
    });
  }

  async function load() {
    const end = dayStart(filters.endDate);
    // With a task ID the other filters are dropped, as in Linkis's console.
    const q = filters.taskID
      ? { taskID: filters.taskID }
      : {
        status: filters.status,
        creator: filters.creator,
        executeApplicationName: filters.engineType,
        startDate: dayStart(filters.startDate),
        endDate: end === undefined ? undefined : end + 86400000,
      };
    Object.assign(q, { pageNow: filters.page, pageSize: PAGE_SIZE });
    if (session.isAdmin && filters.allUsers) q.isAdminView = true;
    let data;
    try {
      data = await get('jobhistory/list', q);
    } catch (e) {
      clear(results, errorBox(e));
      return;
    }
    const total = data.totalPage || 0; // the row count
    const pages = Math.ceil(total / PAGE_SIZE);
    const rows = data.tasks || [];
    clear(results,
      h('p', { class: 'muted', id: 'history-count' }, `${total} job${total === 1 ? '' : 's'}`),
      table([
        { title: 'Task ID', cell: (r) => h('a', { href: `#/job/${r.taskID}`, class: 'task-link' }, String(r.taskID)) },
        { title: 'Status', cell: (r) => badge(r.status) },
        { title: 'Code', class: 'code', cell: (r) => h('span', { title: r.executionCode }, (r.executionCode || '').slice(0, 120)) },
        { title: 'Engine', cell: (r) => `${engineType(r)}${r.runType ? ` / ${r.runType}` : ''}` },
        { title: 'Creator', cell: (r) => r.requestApplicationName },
        { title: 'User', cell: (r) => r.executeUser },
        { title: 'Progress', cell: (r) => progressBar(r.status === 'Succeed' ? 1 : r.progress) },
        { title: 'Created', cell: (r) => fmtTime(r.createdTime) },
        { title: 'Cost', cell: (r) => fmtDuration(r.costTime) },
        { title: 'Reason', cell: (r) => (r.errDesc || '').slice(0, 100) },
        {
          title: '', cell: (r) => (COMPLETED.includes(r.status) ? ''
            : h('button', { class: 'danger', type: 'button', 'data-action': 'kill', onclick: (ev) => kill(r, ev.currentTarget) }, 'Kill')),
        },
      ], rows, { empty: 'No jobs match.', rowAttrs: (r) => ({ 'data-task': r.taskID }) }),
      pages > 1 ? pager(filters.page, pages, (p) => { filters.page = p; load(); }) : null);
  }
  await load();
}
