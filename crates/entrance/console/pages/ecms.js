// EngineConnManagers (admins): health, capacity, labels, and each one's engines.
import { get, post } from '../api.js';
import { badge, clear, errorBox, fmtResource, fmtTime, h, labels, resourceBars, table } from '../ui.js';

export async function render(main) {
  const list = h('div', { id: 'ecms-list' });
  const engines = h('div', { id: 'ecm-engines' });
  main.append(h('h1', {}, 'EngineConnManagers'), list, engines);

  async function showEngines(ecm) {
    clear(engines, h('p', { class: 'muted' }, 'Loading…'));
    try {
      const rows = (await post('linkisManager/listEMEngines', { em: { serviceInstance: { instance: ecm.instance } } })).engines || [];
      clear(engines, h('div', { class: 'card' }, h('h2', {}, `Engines on ${ecm.instance}`), table([
        { title: 'Instance', cell: (e) => e.instance || '(starting)' },
        { title: 'Engine type', cell: (e) => e.engineType || e.applicationName },
        { title: 'Owner', cell: (e) => e.owner },
        { title: 'Status', cell: (e) => badge(e.nodeStatus) },
        { title: 'Resource', cell: (e) => fmtResource(e.resource) },
        { title: 'Started', cell: (e) => fmtTime(e.startTime) },
      ], rows, { empty: 'No engines on this ECM.' })));
    } catch (e) {
      clear(engines, errorBox(e));
    }
  }

  try {
    const ecms = (await get('linkisManager/listAllEMs')).EMs || [];
    clear(list, table([
      { title: 'Instance', cell: (e) => e.instance },
      { title: 'Status', cell: (e) => badge(e.nodeStatus) },
      { title: 'Health', cell: (e) => badge(e.nodeHealthy) },
      { title: 'Capacity (used / locked / max)', cell: (e) => resourceBars(e.usedResource, e.lockedResource, e.maxResource) },
      { title: 'Left', cell: (e) => fmtResource(e.leftResource) },
      { title: 'Engines', class: 'num', cell: (e) => e.engineCount },
      { title: 'Labels', cell: (e) => labels(e.labels) },
      { title: '', cell: (e) => h('button', { type: 'button', class: 'secondary', 'data-action': 'ecm-engines', onclick: () => showEngines(e) }, 'Engines') },
    ], ecms, { empty: 'No ECM registered.' }));
  } catch (e) {
    clear(list, errorBox(e));
  }
}
