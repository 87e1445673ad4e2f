// EngineConnManagers (admins): health, capacity, labels, and each one's engines;
// an ECM's labels, health and description edited through `modifyEMInfo`.
import { call, get, post } from '../api.js';
import { badge, clear, errorBox, flash, fmtResource, fmtTime, h, labels, resourceBars, table } from '../ui.js';

const HEALTH = ['Healthy', 'UnHealthy', 'WARN', 'StockAvailable', 'StockUnavailable'];
const labelText = (list) => (list || []).map((l) => `${l.labelKey}=${l.stringValue}`).join('\n');

export async function render(main) {
  const list = h('div', { id: 'ecms-list' });
  const engines = h('div', { id: 'ecm-engines' });
  const edit = h('div', { id: 'ecm-edit' });
  main.append(h('h1', {}, 'EngineConnManagers'), list, edit, engines);

  let states = HEALTH;
  get('linkisManager/listAllECMHealthyStatus', { onlyEditable: true })
    .then((d) => { if ((d.nodeHealthy || []).length) states = d.nodeHealthy; })
    .catch(() => {});

  function showEdit(ecm) {
    const health = h('select', { name: 'emStatus', id: 'ecm-edit-health' },
      states.map((s) => h('option', { value: s, selected: s === ecm.nodeHealthy }, s)));
    const lbls = h('textarea', { name: 'labels', id: 'ecm-edit-labels', rows: 4, cols: 50 });
    lbls.value = labelText(ecm.labels);
    const desc = h('input', { name: 'description', id: 'ecm-edit-description', value: ecm.description || '', size: 50 });
    const message = h('div', { id: 'ecm-edit-message' });
    async function save(ev) {
      ev.preventDefault();
      const button = ev.submitter;
      if (button) button.disabled = true;
      clear(message);
      const body = { applicationName: ecm.applicationName || undefined, instance: ecm.instance, emStatus: health.value, description: desc.value };
      if (lbls.value.trim() !== labelText(ecm.labels).trim()) {
        const pairs = lbls.value.split('\n').map((l) => l.trim()).filter(Boolean);
        const bad = pairs.find((p) => !/^[^=\s]+=.+$/.test(p));
        if (bad) {
          clear(message, h('p', { class: 'error' }, `'${bad}' is not key=value`));
          if (button) button.disabled = false;
          return;
        }
        body.labels = pairs.map((p) => { const i = p.indexOf('='); return { labelKey: p.slice(0, i), stringValue: p.slice(i + 1) }; });
      }
      try {
        await call('PUT', 'linkisManager/modifyEMInfo', { body });
        flash(`ECM ${ecm.instance} changed.`);
        clear(edit);
        await load();
      } catch (e) {
        clear(message, errorBox(e));
      } finally {
        if (button) button.disabled = false;
      }
    }
    clear(edit, h('form', { class: 'card', id: 'ecm-edit-form', onsubmit: save },
      h('h2', {}, `Edit ${ecm.instance}`),
      h('div', { class: 'row' }, h('label', {}, 'Health', health), h('label', {}, 'Description', desc)),
      h('label', {}, 'Labels (key=value, one a line; asks are matched against them)', lbls),
      h('div', { class: 'row' }, h('button', { type: 'submit', id: 'ecm-edit-save' }, 'Save'),
        h('button', { type: 'button', class: 'secondary', onclick: () => clear(edit) }, 'Cancel'), message)));
  }

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

  async function load() {
    try {
      const ecms = (await get('linkisManager/listAllEMs')).EMs || [];
      clear(list, table([
        { title: 'Instance', cell: (e) => e.instance },
        { title: 'Status', cell: (e) => badge(e.nodeStatus) },
        { title: 'Health', cell: (e) => h('span', { class: 'ecm-health' }, badge(e.nodeHealthy)) },
        { title: 'Capacity (used / locked / max)', cell: (e) => resourceBars(e.usedResource, e.lockedResource, e.maxResource) },
        { title: 'Left', cell: (e) => fmtResource(e.leftResource) },
        { title: 'Engines', class: 'num', cell: (e) => e.engineCount },
        { title: 'Labels', cell: (e) => labels(e.labels) },
        { title: 'Description', cell: (e) => h('span', { class: 'ecm-description' }, e.description || '') },
        {
          title: '', cell: (e) => h('div', { class: 'actions' },
            h('button', { type: 'button', class: 'secondary', 'data-action': 'ecm-engines', onclick: () => showEngines(e) }, 'Engines'),
            h('button', { type: 'button', class: 'secondary', 'data-action': 'ecm-edit', onclick: () => showEdit(e) }, 'Edit')),
        },
      ], ecms, { empty: 'No ECM registered.', rowAttrs: (e) => ({ 'data-instance': e.instance }) }));
    } catch (e) {
      clear(list, errorBox(e));
    }
  }
  await load();
}
