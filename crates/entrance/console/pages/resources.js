// Resources: the caller's per creator and engine type (`rm/userresources`),
// used / locked / max as bars; admins also see every user's and the queues.
import { get } from '../api.js';
import { clear, errorBox, fmtResource, h, resourceBars, table } from '../ui.js';

const legend = () => h('p', { class: 'legend' }, h('span', { class: 'sw used' }), 'used', h('span', { class: 'sw locked' }), 'locked', h('span', { class: 'sw free' }), 'free (of max)');

export async function render(main, { session, admin }) {
  const users = h('div', { id: 'resources-list' });
  const queues = h('div', { id: 'queues-list' });
  main.append(h('h1', {}, admin ? "Every user's resources" : 'My resources'), legend(), users);
  if (admin) main.append(h('h2', {}, 'Cluster queues'), queues);
  try {
    // An admin asking for their own names themselves; without it, everyone's.
    const q = admin ? {} : (session.isAdmin ? { user: session.user } : {});
    const rows = (await get('linkisManager/rm/userresources', q)).userResources || [];
    clear(users, table([
      { title: 'User-creator', cell: (r) => r.userCreator },
      { title: 'Engine type', cell: (r) => r.engineTypeWithVersion },
      { title: 'Kind', cell: (r) => r.resourceType },
      { title: 'Used / locked / max', cell: (r) => resourceBars(r.usedResource, r.lockedResource, r.maxResource) },
      { title: 'Left', cell: (r) => fmtResource(r.leftResource) },
    ], rows, { empty: 'No resources in use.' }));
  } catch (e) {
    clear(users, errorBox(e));
  }
  if (!admin) return;
  try {
    const rows = (await get('linkisManager/rm/queueresources')).queues || [];
    clear(queues, table([
      { title: 'Queue', cell: (r) => r.queuename },
      { title: 'Used / locked / max', cell: (r) => resourceBars(r.usedResources, r.lockedResources, r.maxResources) },
      { title: 'Left', cell: (r) => fmtResource(r.leftResources) },
    ], rows, { empty: 'No cluster queues.' }));
  } catch (e) {
    clear(queues, errorBox(e));
  }
}
