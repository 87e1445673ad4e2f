// Drives the Hangar console in a real browser (Debian's chromium through
// playwright-core): log in, run a shell and a Python job and watch them end,
// read the result table and its CSV, kill a running job, kill an engine from
// the engines page, set the shell engine's memory on the configuration page
// (a value out of range is refused with the server's words) and see the next
// engine get it, make the next job wait by an ECM label and by marking the ECM
// UnHealthy and release it again, find a killed engine in the engine history,
// visit every page and save a screenshot of each.
//
// node console.mjs <base-url> <user> <password> <screenshot-dir>
// playwright-core is found in $HANGAR_CONSOLE_NODE (default target/console-node).
import { createRequire } from 'node:module';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const [base, user, password, shots] = process.argv.slice(2);
if (!shots) {
  console.error('usage: node console.mjs <base-url> <user> <password> <screenshot-dir>');
  process.exit(2);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const nodeDir = process.env.HANGAR_CONSOLE_NODE || path.join(here, '../../../../target/console-node');
const require = createRequire(path.join(nodeDir, 'package.json'));
const { chromium } = require('playwright-core');
mkdirSync(shots, { recursive: true });

const problems = [];
const step = (s) => console.log(`console.mjs: ${s}`);
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

const args = ['--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];
if (process.getuid && process.getuid() === 0) args.push('--no-sandbox');
const browser = await chromium.launch({ executablePath: process.env.HANGAR_CHROMIUM || '/usr/bin/chromium', headless: true, args });
const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, acceptDownloads: true });
const page = await context.newPage();
page.setDefaultTimeout(30000);
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => {
  if (m.type() === 'error' && !/status of 40[134]/.test(m.text())) problems.push(`console error: ${m.text()}`);
});
// Nothing outside the server is ever fetched.
page.on('request', (r) => {
  if (!r.url().startsWith(base) && !r.url().startsWith('blob:') && !r.url().startsWith('data:')) problems.push(`outside request: ${r.url()}`);
});

const shot = async (name) => {
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  step(`screenshot ${name}.png`);
};
const go = async (hash, ready) => {
  await page.goto(`${base}/#${hash}`);
  if (ready) await page.waitForSelector(ready);
};
const COMPLETED = ['Succeed', 'Failed', 'Cancelled', 'Timeout'];
async function waitStatus(want, timeout = 90000) {
  await page.waitForFunction((done) => {
    const s = document.querySelector('#job-status [data-status]');
    return s && done.includes(s.dataset.status);
  }, want, { timeout });
  return page.$eval('#job-status [data-status]', (s) => s.dataset.status);
}
let lastJob = 0;
async function run(engine, code) {
  await go('/editor', '#editor-form');
  await page.selectOption('#editor-engine', engine);
  await page.fill('#editor-code', code);
  await page.click('#editor-submit');
  // The previous job's link may still be on the page: wait for this one's.
  await page.waitForFunction((last) => {
    const a = document.querySelector('#editor-task');
    return a && Number(a.textContent.replace(/\D/g, '')) > last;
  }, lastJob);
  const id = Number((await page.textContent('#editor-task')).replace(/\D/g, ''));
  lastJob = id;
  await page.waitForSelector('#job-status');
  return id;
}
async function logText() {
  await page.click('#log-tabs button[data-level="ALL"]');
  return page.textContent('#job-log');
}

try {
  // Login: the console sends an unknown visitor to the login page.
  await page.goto(`${base}/`);
  await page.waitForSelector('#login-form');
  check(page.url().endsWith('#/login'), `login route, got ${page.url()}`);
  await shot('01-login');
  await page.fill('input[name=userName]', user);
  await page.fill('input[name=password]', 'wrong-password');
  await page.click('#login-form button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#login-error').textContent.length > 0);
  step(`a wrong password is refused: ${await page.textContent('#login-error')}`);
  await page.fill('input[name=password]', password);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#history-results');
  check((await page.textContent('#who')).includes(user), 'the user name is shown');
  check(await page.isVisible('a[data-page="admin-ecms"]'), 'an admin sees the admin pages');
  const cookies = await context.cookies();
  check(cookies.some((c) => c.httpOnly), 'the session cookie is HttpOnly');
  step('logged in');

  // A shell job, watched to its end.
  const shellId = await run('shell-1', 'echo hello-console\necho to-stderr >&2\necho second-line');
  let st = await waitStatus(COMPLETED);
  check(st === 'Succeed', `shell job ended ${st}: ${await logText()}`);
  await page.waitForSelector('#job-results .result-text');
  const text = await page.textContent('#job-results .result-text');
  check(text.includes('hello-console') && text.includes('second-line'), `shell result: ${text}`);
  const log = await logText();
  check(log.length > 0, 'the log is shown');
  await page.click('#log-tabs button[data-level="ERROR"]');
  await page.click('#log-tabs button[data-level="OUTPUT"]');
  step(`shell job ${shellId} succeeded`);
  await shot('02-editor-shell');

  // A Python job with a table, read through its own page; its CSV downloaded.
  const pyId = await run('python-python3',
    "import time\nprint('py-start')\nfor i in range(3):\n    time.sleep(0.3)\nshow_table([[1, 'a', None], [2, 'b,c', 1.5]], columns=['id', 'name', 'score'])");
  st = await waitStatus(COMPLETED);
  check(st === 'Succeed', `python job ended ${st}: ${await logText()}`);
  await go(`/job/${pyId}`, '#job-results table');
  const headers = await page.$$eval('#job-results table th', (ths) => ths.map((t) => t.textContent));
  check(JSON.stringify(headers) === JSON.stringify(['id', 'name', 'score']), `table headers ${headers}`);
  const cells = await page.$$eval('#job-results table tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
  check(cells.length === 2 && cells[1][1] === 'b,c' && cells[0][2] === 'NULL', `table rows ${JSON.stringify(cells)}`);
  const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#job-results .result-set:has(table) button[data-action=csv]')]);
  const csv = readFileSync(await dl.path(), 'utf8');
  check(csv.startsWith('id,name,score\r\n') && csv.includes('"b,c"'), `csv ${JSON.stringify(csv)}`);
  check(dl.suggestedFilename().endsWith('.csv'), `csv name ${dl.suggestedFilename()}`);
  step(`python job ${pyId}: table ${JSON.stringify(cells)}, csv ok`);
  await shot('03-job-python');

  // A running job killed from its page.
  const sleepId = await run('shell-1', 'echo sleeping\nsleep 60');
  await waitStatus(['Running'], 60000);
  await page.waitForSelector('#job-kill:not([hidden])');
  await shot('04-job-running');
  const t0 = Date.now();
  await page.click('#job-kill');
  st = await waitStatus(COMPLETED, 20000);
  check(st === 'Cancelled', `killed job ended ${st}`);
  step(`job ${sleepId} killed in ${Date.now() - t0} ms`);

  // Job history with filters.
  await go('/history', '#history-count');
  const rows = await page.$$eval('#history-results tbody tr', (trs) => trs.length);
  check(rows >= 3, `history shows ${rows} rows`);
  await page.selectOption('select[name=status]', 'Cancelled');
  await page.click('#history-filters button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#history-count')?.textContent.startsWith('1 job'));
  const cancelled = await page.$$eval('#history-results tbody tr', (trs) => trs.map((t) => t.dataset.task));
  check(cancelled.length === 1 && Number(cancelled[0]) === sleepId, `cancelled filter: ${cancelled}`);
  await page.selectOption('select[name=status]', '');
  await page.fill('input[name=engineType]', 'python');
  await page.click('#history-filters button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#history-count')?.textContent.startsWith('1 job'));
  await page.fill('input[name=engineType]', '');
  await page.click('#history-filters button[type=submit]');
  await page.waitForFunction(() => document.querySelectorAll('#history-results tbody tr').length >= 3);
  await shot('05-history');

  // My resources (engines are still up), then every user's.
  await go('/resources', '#resources-list table');
  await shot('06-resources');
  await go('/admin/resources', '#resources-list table');
  await shot('07-admin-resources');

  // ECMs with their engines.
  await go('/admin/ecms', '#ecms-list table');
  await page.click('button[data-action=ecm-engines]');
  await page.waitForSelector('#ecm-engines table');
  // An ECM's description edited (modifyEMInfo) and listed.
  const note = `console note ${Date.now()}`;
  await page.click('button[data-action=ecm-edit]');
  await page.waitForSelector('#ecm-edit-form');
  check(await page.$('#ecm-edit-labels'), 'the ECM\'s labels can be edited');
  await page.fill('#ecm-edit-description', note);
  await page.click('#ecm-edit-save');
  await page.waitForFunction((n) => [...document.querySelectorAll('#ecms-list .ecm-description')].some((d) => d.textContent === n), note);
  step(`ECM description set to '${note}'`);
  await page.click('button[data-action=ecm-edit]');
  await page.waitForSelector('#ecm-edit-form');
  check((await page.$eval('#ecm-edit-description', (i) => i.value)) === note, 'the edit form reads the new description');
  await shot('08-admin-ecms');
  await go('/admin/engines', '#engines-list table');
  await shot('09-admin-engines');

  // Parameter configuration: the shell engine's memory for the admin's IDE
  // jobs. An out-of-range value is refused with the server's words beside
  // the form; 300m is saved and the next shell engine is started with it.
  const MEMORY_KEY = 'wds.linkis.engineconn.java.driver.memory';
  await go('/admin/config', '#config-creator');
  await page.waitForSelector('#config-creator option[value=IDE]', { state: 'attached' });
  await page.selectOption('#config-creator', 'IDE');
  const shellType = await page.$$eval('#config-engine option', (os) => os.map((o) => o.value).find((v) => v.startsWith('shell-')));
  check(shellType, 'the IDE creator lists a shell engine');
  await page.selectOption('#config-engine', shellType);
  const memInput = `#config-tree input[data-key="${MEMORY_KEY}"]`;
  await page.waitForSelector(memInput);
  const memRow = await page.textContent(`#config-tree tr[data-key="${MEMORY_KEY}"]`);
  check(/256m/.test(memRow) && /64\.0 MB|64 MB/.test(memRow), `the memory setting shows its default and range: ${memRow}`);
  await page.fill(memInput, '100g');
  await page.click('#config-save');
  await page.waitForSelector('#config-error');
  const refusal = await page.textContent('#config-error');
  check(refusal.includes(MEMORY_KEY) && refusal.includes('100g'), `the refusal names the key and the value: ${refusal}`);
  check(await page.$eval(memInput, (i) => i.classList.contains('invalid')), 'the refused setting is marked');
  step(`an out-of-range value is refused: ${refusal}`);
  await shot('10a-admin-config-refused');
  await page.fill(memInput, '300m');
  await page.click('#config-save');
  await page.waitForFunction((k) => document.querySelector('#config-message .ok')?.textContent.includes(k), MEMORY_KEY);
  check((await page.$eval(memInput, (i) => i.value)) === '300m', 'the saved value is read back');
  step(`${MEMORY_KEY} = 300m saved for IDE ${shellType}`);
  await shot('10-admin-config');

  // The admin's shell engines are killed from the engines page, so the next
  // shell job needs a new engine, which gets the configured memory.
  const shellRows = '#engines-list tbody tr[data-engine-type^="shell"]';
  const killDeadline = Date.now() + 30000;
  for (;;) {
    await go('/engines', '#engines-list');
    await page.waitForSelector('#engines-list table, #engines-list .empty');
    const tickets = await page.$$eval(shellRows, (trs) => trs.map((tr) => tr.dataset.ticket));
    if (tickets.length === 0) break;
    for (const t of tickets) {
      const b = await page.$(`#engines-list tbody tr[data-ticket="${t}"] button[data-action=kill-engine]`);
      if (b) await b.click();
    }
    check(Date.now() < killDeadline, `shell engines still listed after 30 s: ${tickets}`);
    await page.waitForTimeout(1000);
  }
  step('the admin\'s shell engines are killed');

  // The ECM's labels and health, edited on the ECMs page, decide where the
  // next engine may go: with a label no ask carries, the shell job waits for
  // an ECM; with the label gone but the ECM marked UnHealthy it still waits;
  // once Healthy again it gets its engine and succeeds.
  async function editEcm(change) {
    await go('/admin/ecms', '#ecms-list table');
    await page.click('button[data-action=ecm-edit]');
    await page.waitForSelector('#ecm-edit-form');
    await change();
    await page.click('#ecm-edit-save');
    await page.waitForSelector('#ecm-edit-form', { state: 'detached' });
    await page.waitForSelector('#ecms-list table');
  }
  async function waitLog(what, timeout = 30000) {
    const until = Date.now() + timeout;
    for (;;) {
      const t = await logText();
      if (t.includes(what)) return t;
      check(Date.now() < until, `the job's log never said '${what}': ${t}`);
      await page.waitForTimeout(500);
    }
  }
  await go('/admin/ecms', '#ecms-list table');
  await page.click('button[data-action=ecm-edit]');
  await page.waitForSelector('#ecm-edit-form');
  const ownLabels = await page.$eval('#ecm-edit-labels', (t) => t.value);
  await editEcm(() => page.fill('#ecm-edit-labels', `${ownLabels}\nteam=console`.trim()));
  const labelled = await page.textContent('#ecms-list tbody tr .labels');
  check(labelled.includes('team=console'), `the ECM lists its new label: ${labelled}`);
  step('ECM label team=console added');
  const cfgJob = await run('shell-1', 'echo configured-engine');
  await waitLog('no EngineConnManager matches');
  check((await page.$eval('#job-status [data-status]', (s) => s.dataset.status)) === 'WaitForRetry', 'the job waits for an ECM');
  step(`job ${cfgJob} waits: no ECM carries its labels`);
  await shot('08b-job-waiting-for-ecm');
  await editEcm(async () => {
    await page.fill('#ecm-edit-labels', ownLabels);
    await page.selectOption('#ecm-edit-health', 'UnHealthy');
  });
  check((await page.textContent('#ecms-list tbody tr .ecm-health')) === 'UnHealthy', 'the ECM is listed UnHealthy');
  await shot('08c-admin-ecms-unhealthy');
  await go(`/job/${cfgJob}`, '#job-status');
  await waitLog('marked UnHealthy by an admin');
  check((await page.$eval('#job-status [data-status]', (s) => s.dataset.status)) === 'WaitForRetry', 'the job waits while the ECM is UnHealthy');
  step(`job ${cfgJob} waits: its ECM is UnHealthy`);
  await editEcm(() => page.selectOption('#ecm-edit-health', 'Healthy'));
  await go(`/job/${cfgJob}`, '#job-status');
  st = await waitStatus(COMPLETED);
  check(st === 'Succeed', `shell job after the configuration ended ${st}: ${await logText()}`);
  const engines = await page.evaluate(async () => {
    const r = await fetch('/api/rest_j/v1/linkisManager/listAllEngines', { credentials: 'same-origin' });
    return (await r.json()).data.engines;
  });
  const fresh = engines.filter((e) => e.owner === user && (e.engineType || '').startsWith('shell'));
  check(fresh.length >= 1 && fresh.every((e) => e.resource.memory === '300.0 MB'),
    `the new shell engine has the configured memory: ${JSON.stringify(fresh.map((e) => [e.ticketId, e.resource]))}`);
  await go('/engines', shellRows);
  const shown = await page.textContent(shellRows);
  check(shown.includes('300.0 MB'), `the engines page shows the configured memory: ${shown}`);
  step(`job ${cfgJob} ran on a new shell engine with ${fresh[0].resource.memory}`);

  // My engines: kill one.
  await go('/engines', '#engines-list table');
  await shot('11-engines');
  const ticket = await page.$eval('#engines-list tbody tr', (tr) => tr.dataset.ticket);
  await page.click(`#engines-list tbody tr[data-ticket="${ticket}"] button[data-action=kill-engine]`);
  const deadline = Date.now() + 30000;
  for (;;) {
    await page.waitForTimeout(1000);
    await go('/engines', '#engines-list');
    await page.waitForSelector('#engines-list table, #engines-list .empty');
    if (!(await page.$(`#engines-list tbody tr[data-ticket="${ticket}"]`))) break;
    check(Date.now() < deadline, `engine ${ticket} still listed after 30 s`);
  }
  step(`engine ${ticket} killed`);
  await shot('12-engines-after-kill');

  // The killed engine in the engine history, with who ended it.
  await go('/engine-history', '#ended-results');
  await page.fill('#ended-filters input[name=creator]', user);
  await page.click('#ended-filters button[type=submit]');
  await page.waitForSelector(`#ended-results tbody tr[data-ticket="${ticket}"]`);
  const ended = await page.textContent(`#ended-results tbody tr[data-ticket="${ticket}"]`);
  check(ended.includes(`killed by ${user}`), `the engine history says who killed ${ticket}: ${ended}`);
  step(`engine history: ${ticket} ${await page.$eval(`#ended-results tbody tr[data-ticket="${ticket}"]`, (tr) => tr.dataset.status)}, killed by ${user}`);
  await shot('12b-engine-history');

  // Logging out ends the session.
  await page.click('#logout');
  await page.waitForSelector('#login-form');
  await go('/history', '#login-form');
  step('logged out');

  // A user who is not an admin: no admin pages, and only their own jobs.
  const [user2, password2] = (process.env.HANGAR_CONSOLE_USER2 || '').split(':');
  if (user2) {
    await page.fill('input[name=userName]', user2);
    await page.fill('input[name=password]', password2);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#history-count');
    check(!(await page.isVisible('a[data-page="admin-ecms"]')), 'a non-admin sees no admin pages');
    check((await page.textContent('#history-count')).startsWith('0 jobs'), `a non-admin sees others' jobs: ${await page.textContent('#history-count')}`);
    await shot('13-non-admin');
    await go('/admin/ecms', 'main h1');
    check((await page.textContent('main h1')) === 'Admins only', 'admin pages are refused to a non-admin');
    await go('/engine-history', '#ended-count');
    check((await page.textContent('#ended-count')).startsWith('0 ended'), `a non-admin sees others' engines: ${await page.textContent('#ended-count')}`);
    check(!(await page.$('#ended-filters input[name=creator]')), 'a non-admin has no user filter');
    await go(`/job/${pyId}`, 'main .error');
    step(`another user's job: ${await page.textContent('main .error')}`);
    await page.click('#logout');
    await page.waitForSelector('#login-form');
    step(`non-admin ${user2} checked`);
  }
  check(problems.length === 0, `browser problems:\n${problems.join('\n')}`);
  step('all checks passed');
} catch (e) {
  try { await shot('zz-failure'); } catch { /* the browser may be gone */ }
  console.error(`console.mjs: FAILED: ${e.stack || e}`);
  if (problems.length) console.error(problems.join('\n'));
  await browser.close();
  process.exit(1);
}
await browser.close();
