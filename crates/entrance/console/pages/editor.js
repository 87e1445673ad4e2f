// Run code: an editor with engine type, run type and creator pickers; the
// job is then shown below as on its own page.
import { post } from '../api.js';
import { clear, errorBox, h } from '../ui.js';
import { mountJob } from './job.js';

const ENGINES = {
  'python-python3': { runTypes: ['python'], sample: "print('hello from Python')\nshow_table([[1, 'a'], [2, 'b']], columns=['id', 'name'])" },
  'shell-1': { runTypes: ['shell', 'sh'], sample: 'echo "hello from $(hostname)"\ndate' },
  'jdbc-4': { runTypes: ['jdbc', 'sql', 'psql'], sample: 'SELECT 1 AS one, now() AS at' },
  'datafusion-1': { runTypes: ['sql'], sample: 'SELECT 1 AS one, 2 AS two' },
  spark: { runTypes: ['sql', 'py', 'pyspark', 'python'], sample: 'SELECT 1 AS one' },
};
const CREATORS = ['IDE', 'nodeexecution', 'Visualis', 'LINKISCLI'];
// Kept while the console is open.
const draft = { engine: 'shell-1', sparkVersion: '3.2.1', runType: '', creator: 'IDE', code: '' };

export function render(main, { session }) {
  let stop = null;
  const engine = h('select', { name: 'engineType', id: 'editor-engine' }, Object.keys(ENGINES).map((e) => h('option', { value: e }, e === 'spark' ? 'spark-<version>' : e)));
  const sparkVersion = h('input', { name: 'sparkVersion', id: 'editor-spark-version', value: draft.sparkVersion, size: 8 });
  const sparkLabel = h('label', {}, 'Spark version', sparkVersion);
  const runType = h('select', { name: 'runType', id: 'editor-runtype' });
  const creator = h('input', { name: 'creator', id: 'editor-creator', value: draft.creator, list: 'creators', size: 12 });
  const code = h('textarea', { name: 'code', id: 'editor-code', spellcheck: 'false' });
  const submit = h('button', { type: 'submit', id: 'editor-submit' }, 'Run');
  const out = h('div', { id: 'editor-job' });
  engine.value = draft.engine;

  function engineChanged(keepCode) {
    const spec = ENGINES[engine.value];
    clear(runType, spec.runTypes.map((r) => h('option', { value: r }, r)));
    runType.value = spec.runTypes.includes(draft.runType) ? draft.runType : spec.runTypes[0];
    sparkLabel.hidden = engine.value !== 'spark';
    if (!keepCode || !code.value) code.value = spec.sample;
  }
  engine.addEventListener('change', () => { draft.engine = engine.value; engineChanged(false); });
  code.value = draft.code;
  engineChanged(true);

  async function run(ev) {
    ev.preventDefault();
    Object.assign(draft, { code: code.value, runType: runType.value, creator: creator.value.trim() || 'IDE', sparkVersion: sparkVersion.value.trim() });
    const engineType = engine.value === 'spark' ? `spark-${draft.sparkVersion}` : engine.value;
    submit.disabled = true;
    if (stop) stop();
    stop = null;
    try {
      const data = await post('entrance/submit', {
        executionContent: { code: code.value, runType: runType.value },
        labels: { engineType, userCreator: `${session.user}-${draft.creator}` },
        params: {},
      });
      clear(out, h('p', {}, 'Submitted as ', h('a', { href: `#/job/${data.taskID}`, id: 'editor-task' }, `job ${data.taskID}`)));
      const box = h('div');
      out.append(box);
      stop = await mountJob(box, data.taskID);
    } catch (e) {
      clear(out, errorBox(e));
    } finally {
      submit.disabled = false;
    }
  }
  code.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) run(ev);
  });

  main.append(h('h1', {}, 'Run code'),
    h('form', { class: 'card', id: 'editor-form', onsubmit: run },
      h('div', { class: 'row' },
        h('label', {}, 'Engine type', engine), sparkLabel, h('label', {}, 'Run type', runType),
        h('label', {}, 'Creator', creator), h('datalist', { id: 'creators' }, CREATORS.map((c) => h('option', { value: c }))),
        submit, h('span', { class: 'muted' }, 'Ctrl+Enter runs')),
      code),
    out);
  return () => {
    draft.code = code.value;
    if (stop) stop();
  };
}
