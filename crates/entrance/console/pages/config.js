// Parameter configuration (admins), as Linkis's console: categories from
// `configuration/getCategory`, a creator's and engine's settings from
// `configuration/getFullTreesByAppName`, saved with `configuration/saveFullTree`.
// A server without these APIs (404) gets a clear notice instead.
import { get, post } from '../api.js';
import { act, clear, errorBox, flash, h } from '../ui.js';

const GLOBAL = 'GlobalSettings';
const FALLBACK = { [GLOBAL]: [], IDE: ['spark-3.2.1', 'python-python3', 'shell-1', 'jdbc-4', 'datafusion-1'] };

function unavailable(what) {
  return h('div', { class: 'notice', id: 'config-unavailable' },
    h('strong', {}, 'Parameter configuration is not available on this server. '),
    `It has no ${what} API (404); this page works once the server offers configuration/getFullTreesByAppName and saveFullTree.`);
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
  engine.addEventListener('change', load);

  async function load() {
    const global = creator.value === GLOBAL;
    const [type, ...rest] = (engine.value || '').split('-');
    const q = global ? { creator: '*', engineType: '*', version: '*' } : { creator: creator.value, engineType: type, version: rest.join('-') };
    clear(tree, h('p', { class: 'muted' }, 'Loading…'));
    let data;
    try {
      data = await get('configuration/getFullTreesByAppName', q);
    } catch (e) {
      clear(tree, e.missing ? unavailable('configuration/getFullTreesByAppName') : errorBox(e));
      return;
    }
    const full = data.fullTree || [];
    const inputs = [];
    const groups = full.map((g) => h('div', { class: 'card' }, h('h2', {}, g.name),
      g.description ? h('p', { class: 'muted' }, g.description) : null,
      (g.settings || []).filter((s) => !s.isHidden).map((s) => {
        const input = h('input', { name: s.key, value: s.configValue ?? '', placeholder: s.defaultValue ?? '' });
        inputs.push([s, input]);
        return h('div', { class: 'row setting-row' },
          h('label', { title: s.description || '' }, `${s.name || s.key} (${s.key})${s.unit ? ` [${s.unit}]` : ''}`, input),
          h('span', { class: 'muted' }, s.validateType && s.validateType !== 'None' ? `${s.validateType} ${s.validateRange || ''}` : ''));
      })));
    const save = h('button', {
      type: 'button', id: 'config-save',
      onclick: (ev) => act(ev.currentTarget, async () => {
        for (const [s, input] of inputs) s.configValue = input.value;
        try {
          await post('configuration/saveFullTree', { fullTree: full, creator: global ? '*' : creator.value, engineType: global ? null : engine.value || null });
          flash('Saved.');
        } catch (e) {
          if (e.missing) clear(tree, unavailable('configuration/saveFullTree'));
          else throw e;
        }
      }),
    }, 'Save');
    clear(tree, groups.length ? groups : h('p', { class: 'muted' }, 'No settings.'), groups.length ? save : null);
  }
  creatorChanged();
}
