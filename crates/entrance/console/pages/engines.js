// Engines: the caller's (`linkisManager/listUserEngines`) or, for admins,
// every one (`listAllEngines`); kill (`killEngineConn`) and the engine's log.
import { get, post } from '../api.js';
import { act, badge, clear, errorBox, flash, fmtBytes, fmtResource, fmtTime, h, labels, table } from '../ui.js';

export async function render(main, { admin }) {
  const list = h('div', { id: 'engines-list' });
  const logBox = h('div', { id: 'engine-log' });
  main.append(h('div', { class: 'row' }, h('h1', {}, admin ? 'All engines' : 'My engines'),
    h('button', { type: 'button', class: 'secondary', onclick: () => load() }, 'Refresh')), list, logBox);
  await load();

  async function kill(e, button) {
    await act(button, async () => {
      await post('linkisManager/killEngineConn', e.instance ? { instance: e.instance } : { ticketId: e.ticketId });
      flash(`Engine ${e.instance || e.ticketId} is being stopped.`);
      setTimeout(load, 1000);
    });
  }

  async function showLog(e, logType) {
    clear(logBox, h('p', { class: 'muted' }, 'Loading…'));
    try {
      const data = await get('linkisManager/openEngineLog', { ticketId: e.ticketId, logType, fromLine: 1, pageSize: 500 });
      clear(logBox, h('div', { class: 'card' }, h('h2', {}, `${logType} of ${e.instance || e.ticketId}`),
        h('p', { class: 'muted' }, `${data.logPath} · ${data.rows} lines`),
        h('pre', { class: 'log' }, (data.logs || []).join('\n') || '(empty)')));
    } catch (err) {
      clear(logBox, errorBox(err));
    }
  }

  async function load() {
    let engines;
    try {
      engines = (await get(admin ? 'linkisManager/listAllEngines' : 'linkisManager/listUserEngines')).engines || [];
    } catch (e) {
      clear(list, errorBox(e));
      return;
    }
    clear(list, table([
      { title: 'Instance', cell: (e) => e.instance || '(starting)' },
      { title: 'Engine type', cell: (e) => e.engineType || e.applicationName },
      { title: 'Owner', cell: (e) => e.owner },
      { title: 'Status', cell: (e) => badge(e.nodeStatus) },
      { title: 'Health', cell: (e) => h('span', { title: e.unhealthyReason || '' }, badge(e.nodeHealthy)) },
      { title: 'ECM', cell: (e) => e.emInstance },
      { title: 'Resource', cell: (e) => fmtResource(e.resource) },
      { title: 'RSS', class: 'num', cell: (e) => fmtBytes((e.rssKB || 0) * 1024) },
      { title: 'Tasks', class: 'num', cell: (e) => e.runningTasks },
      { title: 'Labels', cell: (e) => labels(e.labels) },
      { title: 'Started', cell: (e) => fmtTime(e.startTime) },
      {
        title: '', cell: (e) => h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'secondary', onclick: () => showLog(e, 'stdout') }, 'stdout'),
          h('button', { type: 'button', class: 'secondary', onclick: () => showLog(e, 'stderr') }, 'stderr'),
          h('button', { type: 'button', class: 'danger', 'data-action': 'kill-engine', onclick: (ev) => kill(e, ev.currentTarget) }, 'Kill')),
      },
    ], engines, { empty: 'No engines running.', rowAttrs: (e) => ({ 'data-ticket': e.ticketId, 'data-instance': e.instance || '', 'data-engine-type': e.engineType || e.applicationName || '', 'data-status': e.nodeStatus || '' }) }));
  }
}
