import { post } from '../api.js';
import { h } from '../ui.js';

export function render(main, { onLogin }) {
  const user = h('input', { name: 'userName', autocomplete: 'username', required: true, autofocus: true });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const err = h('p', { class: 'error', id: 'login-error' });
  const button = h('button', { type: 'submit' }, 'Log in');
  const form = h('form', {
    id: 'login-form',
    onsubmit: async (ev) => {
      ev.preventDefault();
      err.textContent = '';
      button.disabled = true;
      try {
        // Credentials go in the body only; the answer sets the session cookie.
        const info = await post('user/login', { userName: user.value, password: pass.value }, undefined, { quiet: true });
        pass.value = '';
        onLogin(info);
      } catch (e) {
        err.textContent = e.message;
      } finally {
        button.disabled = false;
      }
    },
  }, h('label', {}, 'User name', user), h('label', {}, 'Password', pass), button, err);
  main.append(h('div', { class: 'card login' }, h('h1', {}, 'Log in to Hangar'), form));
  user.focus();
}
