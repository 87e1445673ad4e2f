// Parameter configuration (admins), as Linkis's console: categories from
// `configuration/getCategory`, a creator's and engine's settings from
// `configuration/getFullTreesByAppName` (each with its value at this scope,
// the default that applies without one, its unit and allowed range), saved
// with `configuration/saveFullTree`; the server's refusal (it names the key
// and the range) is shown beside the form and marks that setting.
// A server without these APIs (404) gets a clear notice instead.
import { get, post } from '../api.js';
import { clear, errorBox, flash, h, table } from '../ui.js';

const GLOBAL = 'GlobalSettings';
const FALLBACK = { [GLOBAL]: [], IDE: ['spark-3.2.1', 'python-python3', 'shell-1', 'jdbc-4', 'datafusion-1'] };

function unavailable(what) {
  return h('div', { class: 'notice', id: 'config-unavailable' },
    h('strong', {}, 'Parameter configuration is not available on this server. '),
    `It has no ${what} API (404); this page works once the server offers configuration/getFullTreesByAppName and saveFullTree.`);
}

function allowed(s) {
  const range = s.validateType && s.validateType !== 'None' ? `${s.validateType} ${s.validateRange || ''}` : '';
  return h('span', { class: 'muted', title: range }, s.specialLimit || range || 'any');
}

export async function render(main) {
  const creator = h('select', { name: 'creator', id: 'config-creator' });
  const engine = h('select', { name: 'engine', id: 'config-engine' });
  const tree = h('div', { id: 'config-tree' });
  main.append(h('h1', {}, 'Parameter configuration'),
    h('div', { class: 'card row' }, h('label', {}, 'Application (creator)', creator), h('label', {}, 'Engine', engine)), tree);

  let categories = FALLBACK;
  try {
    const data = await get('configuration/getCategory');
    const list = data.Category || data.category || [];
    if (list.length) {
      categories = {};
      for (const c of list) {
        const name = c.categoryName === '全局设置' ? GLOBAL : c.categoryName;
        categories[name] = (c.childCategory || []).map((x) => x.categoryName);
      }
    }
  } catch (e) {
    if (!e.missing) flash(e.message, true);
  }
  clear(creator, Object.keys(categories).map((c) => h('option', { value: c }, c === GLOBAL ? 'Global settings' : c)));

  function creatorChanged() {
    const engines = categories[creator.value] || [];
    clear(engine, engines.length ? engines.map((e) => h('option', { value: e }, e)) : h('option', { value: '' }, '(all engines)'));
    load();
  }
  creator.addEventListener('change', creatorChanged);
  engine.addEventListener('change', () => load());

  function scope() {
    const global = creator.value === GLOBAL;
    const [type, ...rest] = (engine.value || '').split('-');
    return global
      ? { query: { creator: GLOBAL }, creator: GLOBAL, engineType: null }
      : { query: { creator: creator.value, engineType: type, version: rest.join('-') }, creator: creator.value, engineType: engine.value || null };
  }

  async function load(keepMessage) {
    const sc = scope();
    if (!keepMessage) clear(tree, h('p', { class: 'muted' }, 'Loading…'));
    let data;
    try {
      data = await get('configuration/getFullTreesByAppName', sc.query);
    } catch (e) {
      clear(tree, e.missing ? unavailable('configuration/getFullTreesByAppName') : errorBox(e));
      return;
    }
    const full = data.fullTree || [];
    const inputs = new Map();
    const message = h('div', { id: 'config-message', role: 'status', 'aria-live': 'polite' });
    const groups = full.map((g) => h('div', { class: 'card' }, h('h2', {}, g.name),
      g.description && g.description !== g.name ? h('p', { class: 'muted' }, g.description) : null,
      table([
        { title: 'Setting', cell: (s) => h('span', { title: s.description || '' }, h('strong', {}, s.name || s.key), h('br'), h('code', {}, s.key)) },
        {
          title: 'Value', cell: (s) => {
            const input = h('input', { name: s.key, value: s.configValue ?? '', placeholder: s.defaultValue || '(server default)', 'data-key': s.key, 'aria-label': s.key });
            input.addEventListener('input', () => input.classList.remove('invalid'));
            inputs.set(s.key, input);
            return input;
          },
        },
        { title: 'Default', cell: (s) => h('span', { class: 'setting-default' }, s.defaultValue || '—') },
        { title: 'Unit', cell: (s) => s.unit || '' },
        { title: 'Allowed', cell: allowed },
      ], (g.settings || []).filter((s) => !s.isHidden), { rowAttrs: (s) => ({ 'data-key': s.key }) })));

    async function save(button) {
      button.disabled = true;
      for (const i of inputs.values()) i.classList.remove('invalid');
      clear(message);
      const fullTree = full.map((g) => ({
        name: g.name,
        settings: (g.settings || []).filter((s) => inputs.has(s.key)).map((s) => ({ key: s.key, configValue: inputs.get(s.key).value.trim() })),
      }));
      try {
        const r = await post('configuration/saveFullTree', { fullTree, creator: sc.creator, engineType: sc.engineType });
        const saved = (r && r.saved) || [];
        await load(true);
        clear(document.getElementById('config-message') || message,
          h('p', { class: 'ok' }, saved.length ? `Saved ${saved.join(', ')}.` : 'Saved: every setting is at its default.'));
      } catch (e) {
        if (e.missing) {
          clear(tree, unavailable('configuration/saveFullTree'));
          return;
        }
        clear(message, h('p', { class: 'error', id: 'config-error' }, e.message));
        const key = [...inputs.keys()].sort((a, b) => b.length - a.length).find((k) => e.message.includes(k));
        if (key) {
          inputs.get(key).classList.add('invalid');
          inputs.get(key).focus();
        }
      } finally {
        button.disabled = false;
      }
    }
    const actions = h('div', { class: 'row config-actions' },
      h('button', { type: 'button', id: 'config-save', onclick: (ev) => save(ev.currentTarget) }, 'Save'),
      h('button', { type: 'button', class: 'secondary', onclick: () => load() }, 'Reset'), message);
    clear(tree, groups.length ? [actions, groups] : h('p', { class: 'muted' }, 'No settings.'));
  }
  creatorChanged();
}
