// One job: code, status, live progress, live log (level tabs) and output
// from the `entrance/{execID}/events` stream, result sets with paging and
// CSV download, running-info metrics, its engine, and a kill button.
import { BASE, get, post } from '../api.js';
import {
  COMPLETED, act, badge, clear, csvText, download, errorBox, flash, fmtDuration, fmtResource, fmtTime, h, kv, pager, progressBar, table,
} from '../ui.js';

const RESULT_PAGE = 50;
const LEVELS = ['ALL', 'ERROR', 'WARN', 'INFO', 'OUTPUT'];
const LEVEL_RE = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (?:SYSTEM-)?(ERROR|WARN|INFO|DEBUG)\b/;

/** The engine type with its version, from the `engineType:` label. */
function engineType(task) {
  const l = (task.labels || []).find((x) => x.startsWith('engineType:'));
  return l ? l.slice('engineType:'.length) : task.executeApplicationName;
}

/** A metric's value as text: times as dates, durations in units. */
function metric(k, v) {
  if (v !== null && typeof v === 'object') return JSON.stringify(v);
  if (typeof v === 'number' && /Time$/.test(k) && v > 1e12) return fmtTime(v);
  if (typeof v === 'number' && /(TimeMills|TimeMs|ECTime)$/.test(k)) return fmtDuration(v);
  if (typeof v === 'number' && /^rssKb$/i.test(k)) return `${(v / 1024).toFixed(1)} MB`;
  return String(v);
}

function levelOf(line) {
  const m = LEVEL_RE.exec(line);
  return m ? m[1] : 'INFO';
}

export async function render(main, { taskID }) {
  main.append(h('p', {}, h('a', { href: '#/history' }, '‹ Job history')));
  const box = h('div');
  main.append(box);
  return mountJob(box, taskID);
}

/** Show job `taskID` in `box`; returns a function that stops following it. */
export async function mountJob(box, taskID) {
  let task;
  try {
    task = (await get(`jobhistory/${taskID}/get`)).task;
  } catch (e) {
    clear(box, errorBox(e));
    return () => {};
  }
  const state = { log: [], output: [], level: 'ALL', progress: task.progress || 0, progressInfo: [], metrics: null, resource: null, closed: false };
  let source = null;
  let poll = null;

  const statusEl = h('span', { id: 'job-status' }, badge(task.status));
  const killBtn = h('button', {
    class: 'danger', type: 'button', id: 'job-kill',
    onclick: (ev) => act(ev.currentTarget, async () => {
      await post(`entrance/${encodeURIComponent(task.execId)}/kill`);
      flash(`Job ${taskID} is being killed.`);
    }),
  }, 'Kill');
  const info = h('div', { class: 'grid', id: 'job-info' });
  const progressEl = h('div', { id: 'job-progress' });
  const stepsEl = h('div', { id: 'job-steps' });
  const metricsEl = h('div', { id: 'job-metrics' });
  const tabs = h('div', { class: 'tabs', id: 'log-tabs' });
  const logEl = h('pre', { class: 'log', id: 'job-log' });
  const liveEl = h('p', { class: 'muted', id: 'job-live' });
  const resultsEl = h('div', { id: 'job-results' });

  clear(box,
    h('div', { class: 'card' },
      h('div', { class: 'row' }, h('h1', {}, `Job ${taskID}`), statusEl, killBtn),
      info,
      h('h2', {}, 'Progress'), progressEl, stepsEl),
    h('div', { class: 'card' }, h('h2', {}, 'Code'), h('pre', { class: 'code', id: 'job-code' }, task.executionCode || '')),
    h('div', { class: 'card' }, h('h2', {}, 'Running info'), metricsEl),
    h('div', { class: 'card' }, h('h2', {}, 'Log'), tabs, logEl, liveEl),
    h('div', { class: 'card' }, h('h2', {}, 'Results'), resultsEl));

  function showInfo() {
    const engineLink = task.engineInstance
      ? h('a', { href: '#/engines', title: 'your engines' }, task.engineInstance) : '—';
    clear(info,
      kv('execID', task.execId), kv('User', task.executeUser), kv('Creator', task.requestApplicationName),
      kv('Engine type', engineType(task)), kv('Run type', task.runType),
      kv('Engine', engineLink), kv('Engine reused', task.isReuse === null || task.isReuse === undefined ? '—' : String(task.isReuse)),
      kv('ECM', task.ecmInstance), kv('Entrance', task.instance),
      kv('Created', fmtTime(task.createdTime)), kv('Cost', fmtDuration(task.costTime)),
      task.errDesc ? kv('Reason', h('span', { class: 'error', id: 'job-error' }, task.errDesc)) : null);
    clear(statusEl, badge(task.status));
    killBtn.hidden = COMPLETED.includes(task.status);
  }

  function showProgress() {
    const done = task.status === 'Succeed';
    clear(progressEl, progressBar(done ? 1 : state.progress));
    clear(stepsEl, state.progressInfo.length ? table([
      { title: 'Step', cell: (r) => r.id },
      { title: 'Total', class: 'num', cell: (r) => r.totalTasks },
      { title: 'Running', class: 'num', cell: (r) => r.runningTasks },
      { title: 'Succeeded', class: 'num', cell: (r) => r.succeedTasks },
      { title: 'Failed', class: 'num', cell: (r) => r.failedTasks },
    ], state.progressInfo) : null);
  }

  function showMetrics() {
    const m = task.metrics || {};
    const engineMetrics = state.metrics || m.engineMetrics || {};
    const resource = state.resource || m.resource;
    const rows = Object.entries(engineMetrics);
    const other = Object.entries(m).filter(([k]) => k !== 'engineMetrics' && k !== 'resource');
    clear(metricsEl,
      h('div', { class: 'grid' }, kv('Resource', fmtResource(resource)),
        other.map(([k, v]) => kv(k, metric(k, v)))),
      rows.length ? h('div', {}, h('h2', {}, 'Engine metrics'), h('div', { class: 'grid' }, rows.map(([k, v]) => kv(k, metric(k, v))))) : null);
  }

  let logQueued = false;
  function showLog() {
    if (logQueued) return;
    logQueued = true;
    requestAnimationFrame(() => {
      logQueued = false;
      clear(tabs, LEVELS.map((l) => h('button', {
        type: 'button', class: l === state.level ? 'active' : '', 'data-level': l,
        onclick: () => { state.level = l; showLog(); },
      }, l === 'OUTPUT' ? `Output (${state.output.filter(Boolean).length})` : l)));
      const stick = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 4;
      let lines;
      if (state.level === 'OUTPUT') {
        lines = state.output.filter(Boolean).map((o) => h('span', { class: o.stream === 'stderr' ? 'err' : 'out' }, `${o.line}\n`));
      } else {
        lines = state.log.filter((l) => l !== undefined)
          .map((l) => [l, levelOf(l)])
          .filter(([, lv]) => state.level === 'ALL' || lv === state.level)
          .map(([l, lv]) => h('span', { class: lv }, `${l}\n`));
      }
      clear(logEl, lines.length ? lines : h('span', { class: 'muted' }, '(nothing yet)'));
      if (stick) logEl.scrollTop = logEl.scrollHeight;
    });
  }

  async function loadLog() {
    // Pages of up to 10000 lines, from where we are.
    for (let i = 0; i < 20; i++) {
      const from = state.log.length;
      let data;
      try {
        data = await get(`entrance/${encodeURIComponent(task.execId)}/log`, { fromLine: from, size: -1, distinctLevel: false });
      } catch (e) {
        liveEl.textContent = `log: ${e.message}`;
        return;
      }
      const lines = Array.isArray(data.log) ? data.log : String(data.log || '').split('\n');
      lines.forEach((l, j) => { state.log[from + j] = l.replace(/\n$/, ''); });
      if (lines.length < 10000) break;
    }
    showLog();
  }

  async function refresh() {
    try {
      task = (await get(`jobhistory/${taskID}/get`)).task;
    } catch (e) {
      flash(e.message, true);
    }
    showInfo();
    showProgress();
    showMetrics();
  }

  async function ended() {
    if (state.closed) return;
    state.closed = true;
    if (source) source.close();
    if (poll) clearInterval(poll);
    liveEl.textContent = '';
    await refresh();
    await loadLog();
    await loadResults(resultsEl, task);
  }

  function follow() {
    source = new EventSource(`${BASE}entrance/${encodeURIComponent(task.execId)}/events`);
    liveEl.textContent = 'following the job live…';
    const on = (name, f) => source.addEventListener(name, (ev) => {
      let v;
      try { v = JSON.parse(ev.data); } catch { return; }
      f(v);
    });
    on('status', (v) => { task.status = v.status; showInfo(); });
    on('log', (v) => { (v.lines || []).forEach((l, j) => { state.log[v.fromLine + j] = l; }); showLog(); });
    on('output', (v) => { (v.lines || []).forEach((l, j) => { state.output[v.fromLine + j] = l; }); showLog(); });
    on('progress', (v) => {
      state.progress = v.progress;
      state.progressInfo = v.progressInfo || [];
      state.metrics = v.engineMetrics || state.metrics;
      state.resource = v.resource || state.resource;
      showProgress();
      showMetrics();
    });
    on('resultSet', (v) => {
      resultsEl.append(h('p', { class: 'muted' }, `result set _${v.alias}: ${v.rows} rows${v.cut ? ` (cut, ${v.totalRows} in all)` : ''}`));
    });
    on('lagged', () => { liveEl.textContent = 'some live lines were skipped; the whole log is read when the job ends'; });
    on('end', (v) => { task.status = v.status; ended(); });
    source.onerror = () => {
      if (state.closed || source.readyState !== EventSource.CLOSED) return;
      // The stream was refused: poll the job instead.
      liveEl.textContent = 'live events unavailable: polling';
      poll = setInterval(async () => {
        await refresh();
        if (COMPLETED.includes(task.status)) ended();
      }, 2000);
    };
  }

  showInfo();
  showProgress();
  showMetrics();
  showLog();
  if (COMPLETED.includes(task.status)) {
    state.closed = true;
    await loadLog();
    await loadResults(resultsEl, task);
  } else {
    follow();
    await loadLog();
  }
  return () => {
    state.closed = true;
    if (source) source.close();
    if (poll) clearInterval(poll);
  };
}

function resultIndex(name) {
  const m = /_(\d+)\.dolphin$/.exec(name || '');
  return m ? Number(m[1]) : 0;
}

/** The job's result sets (`filesystem/getDirFileTrees` then `openFile` per page). */
export async function loadResults(el, task) {
  clear(el);
  if (!task.resultLocation) {
    el.append(h('p', { class: 'muted' }, 'No result sets.'));
    return;
  }
  let files;
  try {
    const tree = (await get('filesystem/getDirFileTrees', { path: task.resultLocation })).dirFileTrees;
    files = (tree && tree.children ? tree.children : []).filter((c) => /\.dolphin$/.test(c.name))
      .sort((a, b) => resultIndex(a.name) - resultIndex(b.name));
  } catch (e) {
    el.append(task.status === 'Succeed' ? errorBox(e) : h('p', { class: 'muted' }, 'No result sets.'));
    return;
  }
  if (!files.length) {
    el.append(h('p', { class: 'muted' }, 'No result sets.'));
    return;
  }
  for (const f of files) el.append(resultSet(f, task));
}

function resultSet(file, task) {
  const pages = new Map(); // page → {header, rows}
  const body = h('div', { class: 'result-body' });
  const csvBtn = h('button', { type: 'button', class: 'secondary', 'data-action': 'csv' }, 'Download CSV');
  const wrap = h('div', { class: 'result-set', 'data-name': file.name },
    h('div', { class: 'row' }, h('strong', {}, file.name), csvBtn), body);
  let kind = null;
  let header = [];

  csvBtn.addEventListener('click', () => {
    // What was fetched, in page order (client-side: no extra call).
    const rows = [...pages.keys()].sort((a, b) => a - b).flatMap((p) => pages.get(p));
    const base = `job-${task.taskID}-${file.name.replace(/\.dolphin$/, '')}`;
    download(`${base}.csv`, csvText(kind === 'table' ? header : ['output'], rows));
  });

  async function show(page) {
    let data;
    try {
      data = await get('filesystem/openFile', { path: file.path, page, pageSize: RESULT_PAGE });
    } catch (e) {
      clear(body, errorBox(e));
      return;
    }
    const rows = data.fileContent || [];
    pages.set(page, rows);
    const isTable = Array.isArray(data.metadata);
    kind = isTable ? 'table' : 'text';
    const total = data.totalPage || 1;
    if (isTable) {
      header = data.metadata.map((c) => c.columnName);
      const cols = data.metadata.map((c, i) => ({
        title: h('span', { title: c.dataType }, c.columnName),
        cell: (r) => (r[i] === null || r[i] === undefined || r[i] === 'NULL' ? h('span', { class: 'muted' }, 'NULL') : r[i]),
      }));
      clear(body, h('p', { class: 'muted' }, `${data.totalLine} rows`), table(cols, rows, { empty: 'No rows.' }),
        total > 1 ? pager(page, total, show) : null);
    } else {
      clear(body, h('pre', { class: 'code result-text' }, rows.map((r) => r.join('\t')).join('\n')),
        total > 1 ? pager(page, total, show) : null);
    }
  }
  show(1);
  return wrap;
}
