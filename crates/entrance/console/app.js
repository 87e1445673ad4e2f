// The console's shell: the session, the navigation and a hash router.
import { get, post, setUnauthorizedHandler } from './api.js';
import { clear, errorBox, flash, h } from './ui.js';
import * as login from './pages/login.js';
import * as history from './pages/history.js';
import * as job from './pages/job.js';
import * as editor from './pages/editor.js';
import * as engines from './pages/engines.js';
import * as ended from './pages/ended.js';
import * as resources from './pages/resources.js';
import * as ecms from './pages/ecms.js';
import * as config from './pages/config.js';

/** The logged-in user, from `user/userInfo`: {userName, isAdmin}. */
export const session = { user: null, isAdmin: false };

// [pattern, page, nav key, admin only]
const ROUTES = [
  [/^\/login$/, (m) => login.render(m, { session, onLogin: loggedIn }), null, false],
  [/^\/history$/, (m) => history.render(m, { session }), 'history', false],
  [/^\/job\/(\d+)$/, (m, [, id]) => job.render(m, { session, taskID: Number(id) }), 'history', false],
  [/^\/editor$/, (m) => editor.render(m, { session }), 'editor', false],
  [/^\/engines$/, (m) => engines.render(m, { session, admin: false }), 'engines', false],
  [/^\/engine-history$/, (m) => ended.render(m, { session }), 'engine-history', false],
  [/^\/resources$/, (m) => resources.render(m, { session, admin: false }), 'resources', false],
  [/^\/admin\/resources$/, (m) => resources.render(m, { session, admin: true }), 'admin-resources', true],
  [/^\/admin\/ecms$/, (m) => ecms.render(m, { session }), 'admin-ecms', true],
  [/^\/admin\/engines$/, (m) => engines.render(m, { session, admin: true }), 'admin-engines', true],
  [/^\/admin\/config$/, (m) => config.render(m, { session }), 'admin-config', true],
];

let cleanup = null;

function path() {
  const p = location.hash.replace(/^#/, '');
  return p || '/history';
}

async function route() {
  if (typeof cleanup === 'function') {
    try { cleanup(); } catch { /* a page's cleanup failing must not stop the next page */ }
  }
  cleanup = null;
  const main = document.getElementById('main');
  const p = path();
  if (!session.user && p !== '/login') {
    location.hash = '#/login';
    return;
  }
  const found = ROUTES.find(([re]) => re.test(p));
  if (!found) {
    clear(main, h('h1', {}, 'Not found'), h('p', {}, `No page ${p}. `, h('a', { href: '#/history' }, 'Job history')));
    return;
  }
  const [re, render, nav, adminOnly] = found;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === nav);
  if (adminOnly && !session.isAdmin) {
    clear(main, h('h1', {}, 'Admins only'), h('p', {}, 'This page is for administrators.'));
    return;
  }
  document.body.dataset.page = nav || 'login';
  clear(main);
  try {
    cleanup = await render(main, re.exec(p));
  } catch (e) {
    clear(main, errorBox(e));
  }
}

function showSession() {
  const logged = !!session.user;
  document.getElementById('nav').hidden = !logged;
  document.getElementById('logout').hidden = !logged;
  document.getElementById('who').textContent = logged ? `${session.user}${session.isAdmin ? ' (admin)' : ''}` : '';
  for (const el of document.querySelectorAll('.admin-only')) el.hidden = !session.isAdmin;
}

function loggedIn(info) {
  session.user = info.userName;
  session.isAdmin = !!info.isAdmin;
  showSession();
  location.hash = '#/history';
}

async function logout() {
  try {
    await post('user/logout', {}, undefined, { quiet: true });
  } catch (e) {
    flash(e.message, true);
  }
  session.user = null;
  session.isAdmin = false;
  showSession();
  location.hash = '#/login';
}

async function start() {
  setUnauthorizedHandler(() => {
    if (path() === '/login') return;
    session.user = null;
    showSession();
    flash('Your session has ended: please log in again.', true);
    location.hash = '#/login';
  });
  document.getElementById('logout').addEventListener('click', logout);
  try {
    const info = await get('user/userInfo', undefined, { quiet: true });
    session.user = info.userName;
    session.isAdmin = !!info.isAdmin;
  } catch {
    session.user = null;
  }
  showSession();
  window.addEventListener('hashchange', route);
  await route();
}

start();
