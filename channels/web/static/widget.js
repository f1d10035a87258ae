/* frontdesk chat widget.
 * Embed: <script src="https://DESK/web/widget.js" async></script>
 * Talks to DESK/web/api/ (session, messages, stream, seen, files) with a random visitor
 * token kept in localStorage. Everything is rendered in an open shadow root; text from
 * people or the server is only ever set with textContent / text nodes, never parsed as HTML.
 */
(() => {
  'use strict';
  if (window.__frontdeskWidget) return;
  window.__frontdeskWidget = { version: 1 };

  // -- where the API is ----------------------------------------------------------------
  const me = document.currentScript ||
    [...document.querySelectorAll('script[src*="/web/widget.js"]')].pop();
  if (!me || !me.src) return;
  const at = me.src.lastIndexOf('/web/widget.js');
  const API = (at >= 0 ? me.src.slice(0, at) : new URL(me.src).origin) + '/web/api/';

  // -- small helpers -------------------------------------------------------------------
  const rand = (n) => btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(n))))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const store = {
    get: (k) => { try { return localStorage.getItem(k); } catch { return null; } },
    set: (k, v) => { try { localStorage.setItem(k, v); } catch { /* memory only */ } },
  };
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const pad = (n) => String(n).padStart(2, '0');
  const size = (n) => n < 1024 ? n + ' B' : n < 1048576 ? Math.round(n / 1024) + ' KB'
    : (n / 1048576).toFixed(n < 10485760 ? 1 : 0) + ' MB';
  const sentence = (s) => s.charAt(0).toUpperCase() + s.slice(1);
  const EMAIL_RE = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;
  const AUTHORS = ['customer', 'staff', 'system'];
  const STATES = { sending: 'Sending\u2026', sent: 'Sent', failed: 'Not sent' };

  // Build an element: attributes via setAttribute, children as nodes or plain text.
  const h = (tag, attrs = {}, ...kids) => {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v != null && v !== false) el.setAttribute(k, v === true ? '' : v);
    }
    el.append(...kids);
    return el;
  };
  const SVG = 'http://www.w3.org/2000/svg';
  const icon = (d, cls = '') => {
    const s = document.createElementNS(SVG, 'svg');
    const attrs = { viewBox: '0 0 24 24', fill: 'none', stroke: 'currentColor',
      'stroke-width': '2', 'stroke-linecap': 'round', 'stroke-linejoin': 'round',
      'aria-hidden': 'true', focusable: 'false', class: cls };
    for (const [k, v] of Object.entries(attrs)) s.setAttribute(k, v);
    const p = document.createElementNS(SVG, 'path');
    p.setAttribute('d', d);
    s.append(p);
    return s;
  };
  const I_CHAT = 'M5 4h14a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2h-8l-5 4v-4H5a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z';
  const I_CLOSE = 'M6 6l12 12M18 6L6 18';
  const I_CLIP = 'M20 11.5l-8 8a5 5 0 0 1-7-7l8.5-8.5a3.5 3.5 0 0 1 5 5L10 17.5a2 2 0 0 1-3-3L14.5 7';

  // Replace what a slot shows by one role="alert" line (new node, so it is announced),
  // optionally followed by a button.
  const setErr = (slot, text, button) => {
    slot.replaceChildren();
    if (text) slot.append(h('p', { class: 'err', role: 'alert' }, text));
    if (button) slot.append(button);
  };

  // -- identity ------------------------------------------------------------------------
  const TOKEN_KEY = 'frontdesk:visitor';
  const SEEN_KEY = 'frontdesk:seen'; // highest staff/system id this browser reported seen
  let token = store.get(TOKEN_KEY);
  if (!/^[\w-]{43}$/.test(token || '')) {
    token = rand(32);
    store.set(TOKEN_KEY, token);
  }

  const call = (path, opt = {}) => fetch(API + path, {
    mode: 'cors', credentials: 'omit', cache: 'no-store', ...opt,
    headers: { Authorization: 'Bearer ' + token, ...opt.headers },
  });
  const errorOf = async (r, fallback) => {
    try {
      const j = await r.json();
      if (j && typeof j.error === 'string' && j.error) return sentence(j.error);
    } catch { /* not JSON */ }
    return fallback + ` (error ${r.status}).`;
  };

  // -- styles --------------------------------------------------------------------------
  const CSS = `
:host{all:initial}
.w{--bg:#fff;--fg:#1d2330;--mut:#4f5868;--bd:#c9ced8;--bub:#eef0f4;--acc:#1f5fbf;
--acc2:#174a96;--err:#a4161a;--focus:#1f5fbf;color:var(--fg);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
-webkit-text-size-adjust:100%;text-size-adjust:100%}
*,*::before,*::after{box-sizing:border-box}
[hidden]{display:none!important}
button,input,textarea{font:inherit;color:inherit;margin:0}
button{cursor:pointer}
:focus{outline:none}
:focus-visible,.file:focus-visible+.attach{outline:3px solid var(--focus);outline-offset:2px}
.vh,.m[data-state=sent] .st{position:absolute!important;width:1px;height:1px;padding:0;
margin:-1px;overflow:hidden;clip:rect(0 0 0 0);clip-path:inset(50%);white-space:nowrap;border:0}
.launcher{position:fixed;right:20px;bottom:20px;z-index:2147483000;width:56px;height:56px;
border:0;border-radius:50%;background:var(--acc);color:#fff;display:flex;align-items:center;
justify-content:center;box-shadow:0 4px 14px rgba(0,0,0,.25)}
.launcher:hover{background:var(--acc2)}
.launcher svg{width:26px;height:26px}
.launcher[aria-expanded=true] .i-open,.launcher[aria-expanded=false] .i-close{display:none}
.badge{position:absolute;top:-4px;right:-4px;min-width:24px;height:24px;padding:0 6px;
border:2px solid #fff;border-radius:12px;background:var(--err);color:#fff;font-size:12px;
font-weight:700;line-height:20px;text-align:center}
.panel{position:fixed;right:20px;bottom:88px;z-index:2147483001;width:370px;height:560px;
max-width:calc(100vw - 40px);max-height:calc(100vh - 108px);display:flex;
flex-direction:column;background:var(--bg);border:1px solid var(--bd);border-radius:12px;
box-shadow:0 10px 40px rgba(0,0,0,.22);overflow:hidden}
.head{display:flex;align-items:center;gap:8px;padding:10px 10px 10px 16px;
background:var(--acc);color:#fff}
.head :focus-visible{outline-color:#fff;outline-offset:-3px}
.title{flex:1;min-width:0;margin:0;font-size:16px;font-weight:600;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}
.x{flex:none;width:36px;height:36px;border:0;border-radius:8px;background:none;
display:flex;align-items:center;justify-content:center}
.x:hover{background:rgba(255,255,255,.18)}
.x svg{width:20px;height:20px}
.status{margin:0;padding:8px 16px;background:#fff6da;border-bottom:1px solid #e6d49a;
font-size:14px}
.status:empty{padding:0;border:0}
.log{flex:1;min-height:0;overflow-y:auto;overscroll-behavior:contain;padding:12px;
display:flex;flex-direction:column;gap:8px}
.log:focus-visible{outline-offset:-3px}
.log:empty::before{content:"Write to us below; we'll answer right here.";margin:auto;
color:var(--mut);text-align:center}
.m{max-width:85%;align-self:flex-start;padding:8px 12px;border-radius:12px;
background:var(--bub)}
.m[data-author=customer]{align-self:flex-end;background:var(--acc);color:#fff}
.m[data-author=system]{align-self:center;max-width:95%;padding:2px 8px;background:none;
color:var(--mut);text-align:center;font-size:14px}
.m[data-state=failed]{background:#fdf0f0;color:var(--fg);border:1px solid var(--err)}
.who{display:block;margin-bottom:2px;color:var(--mut);font-size:13px;font-weight:600}
.t{white-space:pre-wrap;overflow-wrap:anywhere}
.t:empty,.att:empty,.files:empty{display:none}
.att{list-style:none;margin:4px 0 0;padding:0}
.link{padding:0;border:0;background:none;text-align:left;text-decoration:underline;
overflow-wrap:anywhere}
.meta{display:flex;justify-content:flex-end;gap:6px;margin-top:2px;color:var(--mut);
font-size:12px}
.m[data-author=customer] .meta{color:#e6edfb}
.m[data-state=failed] .meta{color:var(--err)}
.m[data-author=system] .meta{justify-content:center}
.err{margin:4px 0 0;color:var(--err);font-size:14px;font-weight:600}
.btn{display:inline-flex;align-items:center;gap:6px;padding:7px 12px;border:1px solid #8a93a3;
border-radius:8px;background:#fff;color:var(--fg);font-size:14px;line-height:20px;cursor:pointer}
.btn:hover{background:var(--bub)}
.btn svg{width:18px;height:18px}
.retry{margin-top:6px}
.compose{display:flex;flex-direction:column;gap:8px;padding:10px 12px 12px;
border-top:1px solid var(--bd)}
.field label{display:block;margin-bottom:4px;font-size:13px;font-weight:600}
input[type=email],textarea{display:block;width:100%;padding:8px 10px;border:1px solid #8a93a3;
border-radius:8px;background:#fff;font-size:16px}
textarea{line-height:22px;resize:none;overflow-x:hidden}
::placeholder{color:#5f6877;opacity:1}
[aria-invalid=true]{border-color:var(--err)}
.known{display:flex;align-items:baseline;gap:6px;margin:0;color:var(--mut);font-size:13px}
.known span{min-width:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.known .link{flex:none;color:var(--acc)}
.files{list-style:none;margin:0;padding:0;font-size:14px}
.files li{display:flex;align-items:center;gap:6px}
.fn{min-width:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.sz{flex:none;color:var(--mut)}
.rm{flex:none;width:32px;height:32px;border:0;border-radius:6px;background:none;
color:var(--mut);font-size:20px;line-height:1}
.rm:hover{background:var(--bub)}
.row{display:flex;align-items:center;gap:8px}
.send{margin-left:auto;padding:8px 18px;border:0;border-radius:8px;background:var(--acc);
color:#fff;font-weight:600;line-height:20px}
.send:hover{background:var(--acc2)}
@media (max-width:479.98px){.panel{inset:0;width:auto;height:auto;max-width:none;
max-height:none;border:0;border-radius:0}.open .launcher{display:none}}
@media (prefers-reduced-motion:no-preference){.panel{animation:fd-in .16s ease-out}
.launcher{transition:background-color .15s}}
@keyframes fd-in{from{opacity:0;transform:translateY(8px)}}
@media (forced-colors:active){.launcher,.m,.send,.badge{border:1px solid CanvasText}}
@media print{.w{display:none}}`;

  // -- the DOM -------------------------------------------------------------------------
  const host = h('div', { 'data-frontdesk-host': '' });
  const root = host.attachShadow({ mode: 'open' });
  try {
    // A constructed sheet is not blocked by a host page's CSP (style-src) as a <style> is.
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } catch {
    root.append(h('style', {}, CSS));
  }

  let title = 'Chat';
  const PANEL_ID = 'frontdesk-panel';
  const badge = h('span', { class: 'badge', 'aria-hidden': 'true', hidden: true });
  const launcher = h('button', { type: 'button', class: 'launcher', 'data-frontdesk': 'launcher',
    'aria-controls': PANEL_ID, 'aria-expanded': 'false' },
  icon(I_CHAT, 'i-open'), icon(I_CLOSE, 'i-close'), badge);
  const titleEl = h('h2', { class: 'title' }, title);
  const closeBtn = h('button', { type: 'button', class: 'x', 'aria-label': 'Close chat' },
    icon(I_CLOSE));
  const status = h('p', { class: 'status', role: 'status' });
  const log = h('div', { class: 'log', role: 'log', 'aria-live': 'polite',
    'aria-label': 'Messages', tabindex: '0' });

  // email (filled in once the session says whether to ask)
  const emailBox = h('div');
  const emailInput = h('input', { type: 'email', id: 'fd-email', 'data-frontdesk': 'email',
    autocomplete: 'email', spellcheck: 'false', 'aria-describedby': 'fd-email-err' });
  const emailLabel = h('label', { for: 'fd-email' });
  const emailErr = h('div', { id: 'fd-email-err' });
  const emailField = h('div', { class: 'field' }, emailLabel, emailInput, emailErr);
  const knownText = h('span');
  const changeBtn = h('button', { type: 'button', class: 'link' }, 'Change');
  const known = h('p', { class: 'known', hidden: true }, 'Replies also go to ', knownText,
    changeBtn);

  const input = h('textarea', { id: 'fd-text', 'data-frontdesk': 'input', rows: '1',
    placeholder: 'Write a message\u2026', enterkeyhint: 'send' });
  const chosen = h('ul', { class: 'files', 'aria-label': 'Files to send' });
  const fileErr = h('div');
  const fileInput = h('input', { type: 'file', id: 'fd-file', class: 'file vh', multiple: true,
    'data-frontdesk': 'file',
    accept: 'image/*,application/pdf,text/plain,.doc,.docx,.xls,.xlsx,.odt,.ods,.csv' });
  const sendBtn = h('button', { type: 'button', class: 'send', 'data-frontdesk': 'send' }, 'Send');

  const panel = h('div', { id: PANEL_ID, class: 'panel', role: 'dialog', 'aria-label': title,
    'data-frontdesk': 'panel', hidden: true },
  h('div', { class: 'head' }, titleEl, closeBtn),
  status, log,
  h('div', { class: 'compose' }, emailBox,
    h('label', { for: 'fd-text', class: 'vh' }, 'Your message'), input, chosen, fileErr,
    h('div', { class: 'row' }, fileInput,
      h('label', { for: 'fd-file', class: 'btn attach' }, icon(I_CLIP), 'Attach a file'),
      sendBtn)));
  const wrap = h('div', { class: 'w' }, launcher, panel);
  root.append(wrap);

  // -- state ---------------------------------------------------------------------------
  let isOpen = false;
  let askEmail = 'off';
  let maxUpload = Infinity;
  let notice = '';
  let unreachable = false;
  let lastId = 0; // highest message id shown (Last-Event-ID)
  let files = []; // File objects for the next message
  let seenMark = +store.get(SEEN_KEY) || 0;
  const shown = new Set(); // message ids shown
  const idOf = new WeakMap(); // message element -> stored id
  const byClient = new Map(); // client_id -> this tab's not yet stored message
  const unseen = new Set(); // staff/system ids not yet shown in the open, visible panel
  const toReport = new Set(); // ids shown, POST /seen not yet done

  const showStatus = () => {
    status.textContent = unreachable ? "Can't reach us right now \u2014 we'll keep trying." : notice;
  };

  const updateLauncher = () => {
    const n = isOpen ? 0 : unseen.size;
    badge.textContent = n > 99 ? '99+' : String(n);
    badge.hidden = !n;
    launcher.setAttribute('aria-expanded', String(isOpen));
    launcher.setAttribute('aria-label',
      isOpen ? 'Close chat' : `Open chat: ${title}` + (n ? ` (${n} new)` : ''));
  };

  const atBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 48;
  const toBottom = () => { log.scrollTop = log.scrollHeight; };

  function setOpen(open, focusLauncher) {
    if (open === isOpen) return;
    isOpen = open;
    panel.hidden = !open;
    wrap.classList.toggle('open', open);
    updateLauncher();
    if (open) {
      grow();
      toBottom();
      input.focus();
      markSeen();
    } else if (focusLauncher) {
      launcher.focus();
    }
  }

  // -- seen ----------------------------------------------------------------------------
  function markSeen() {
    if (!isOpen || document.visibilityState !== 'visible') return;
    for (const id of unseen) toReport.add(id);
    unseen.clear();
    updateLauncher();
    reportSeen();
  }

  let reporting = false;
  async function reportSeen() {
    if (reporting || !toReport.size) return;
    reporting = true;
    const ids = [...toReport].slice(0, 500);
    let ok = false;
    try {
      ok = (await call('seen', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ ids }) })).ok;
    } catch { /* retried on the next trigger */ }
    reporting = false;
    if (!ok) return;
    ids.forEach((id) => toReport.delete(id));
    const top = Math.max(...ids);
    if (top > seenMark) store.set(SEEN_KEY, String(seenMark = top));
    reportSeen();
  }

  // Another tab reported replies seen: drop them from this tab's badge.
  window.addEventListener('storage', (e) => {
    const mark = e.key === SEEN_KEY ? +e.newValue || 0 : 0;
    if (mark <= seenMark) return;
    seenMark = mark;
    for (const id of unseen) if (id <= mark) unseen.delete(id);
    updateLauncher();
  });

  // -- messages ------------------------------------------------------------------------
  const timeEl = (iso) => {
    let s = String(iso || '').replace(/(\.\d{3})\d+/, '$1');
    if (s && !/(Z|[+-]\d\d:?\d\d)$/i.test(s)) s += 'Z'; // the server's times are UTC
    const d = new Date(s);
    if (isNaN(d)) return h('time');
    return h('time', { datetime: d.toISOString(), title: d.toLocaleString() },
      pad(d.getHours()) + ':' + pad(d.getMinutes()));
  };

  // One message element and its parts.
  function render(m) {
    const item = { id: 0, gen: 0, state: '' };
    item.el = h('div', { class: 'm', 'data-frontdesk': 'message', 'data-author': m.author });
    if (m.author === 'staff' && m.author_name) {
      item.el.append(h('span', { class: 'who' }, String(m.author_name)));
    }
    item.body = h('div', { class: 't' }, String(m.text || ''));
    item.atts = h('ul', { class: 'att' });
    item.st = h('span', { class: 'st' });
    item.err = h('div');
    item.el.append(item.body, item.atts,
      h('div', { class: 'meta' }, timeEl(m.created_at), item.st), item.err);
    fillAtts(item, m.attachments);
    return item;
  }

  function fillAtts(item, list) {
    item.atts.replaceChildren(...(Array.isArray(list) ? list : []).map((a) => {
      const name = String(a.name || 'file');
      const label = `${name} (${size(+a.size || 0)})`;
      if (!Number.isSafeInteger(a.id)) return h('li', {}, label); // not stored yet
      const btn = h('button', { type: 'button', class: 'link' }, label);
      btn.addEventListener('click', () => download(a.id, name, btn, item));
      return h('li', {}, btn);
    }));
  }

  function setState(item, state) {
    item.state = state;
    item.el.setAttribute('data-state', state);
    item.st.textContent = STATES[state];
    if (state !== 'failed') setErr(item.err, '');
  }

  // Put an element in id order; local, not yet stored messages stay at the end.
  function place(el, id) {
    let ref = null;
    for (const c of log.children) {
      if (c === el) continue;
      const cid = idOf.get(c);
      if (cid === undefined || cid > id) { ref = c; break; }
    }
    if (el.parentNode === log && el.nextSibling === ref) return;
    log.insertBefore(el, ref);
  }

  function addMsg(m, fromHistory) {
    if (!m || typeof m !== 'object' || !Number.isSafeInteger(m.id) || shown.has(m.id)) return;
    shown.add(m.id);
    if (m.id > lastId) lastId = m.id;
    const author = AUTHORS.includes(m.author) ? m.author : 'system';
    const near = atBottom();
    let item = author === 'customer' && byClient.get(m.client_id);
    if (item && !item.id) {
      // our own message, now stored: same element, now with its id
      byClient.delete(m.client_id);
      item.id = m.id;
      item.gen++; // stops any retry loop
      const text = String(m.text || '');
      if (item.body.textContent !== text) item.body.textContent = text;
      if (Array.isArray(m.attachments) && m.attachments.length) fillAtts(item, m.attachments);
      setState(item, 'sent');
    } else {
      item = render({ ...m, author });
      if (author === 'customer') setState(item, 'sent');
      else if (!(fromHistory && m.id <= seenMark)) unseen.add(m.id);
    }
    idOf.set(item.el, m.id);
    place(item.el, m.id);
    if (near) toBottom();
  }

  async function download(id, name, btn, item) {
    setErr(item.err, '');
    btn.setAttribute('aria-busy', 'true');
    try {
      const r = await call('files/' + id);
      if (!r.ok) throw new Error(await errorOf(r, 'The file is not available'));
      const url = URL.createObjectURL(await r.blob());
      const a = h('a', { href: url, download: name, hidden: true });
      root.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      const why = e instanceof TypeError ? 'check your connection.' : e.message;
      setErr(item.err, `Couldn't download ${name}: ${why}`);
    }
    btn.removeAttribute('aria-busy');
  }

  // -- sending -------------------------------------------------------------------------
  const hasEmail = () => askEmail !== 'off';
  const emailValue = () => {
    const v = hasEmail() ? emailInput.value.trim() : '';
    return EMAIL_RE.test(v) ? v : '';
  };

  function showKnown(email) {
    knownText.textContent = email;
    known.hidden = false;
    emailField.hidden = true;
  }

  function send() {
    const text = input.value.trim();
    if (!text && !files.length) return;
    if (hasEmail()) {
      const v = emailInput.value.trim();
      if ((v || askEmail === 'required') && !EMAIL_RE.test(v)) {
        known.hidden = true;
        emailField.hidden = false;
        emailInput.setAttribute('aria-invalid', 'true');
        setErr(emailErr, v ? 'Please check your email address.'
          : 'Please enter your email address so we can reply.');
        emailInput.focus();
        return;
      }
    }
    const item = render({ author: 'customer', text, created_at: new Date().toISOString(),
      attachments: files.map((f) => ({ name: f.name, size: f.size })) });
    item.cid = rand(16);
    item.text = text;
    item.files = files;
    byClient.set(item.cid, item);
    log.append(item.el);
    toBottom();
    input.value = '';
    grow();
    files = [];
    renderFiles();
    setErr(fileErr, '');
    post(item);
  }

  // POST one message; network errors and 5xx are retried with the same client_id.
  async function post(item) {
    const gen = ++item.gen;
    setState(item, 'sending');
    for (let i = 0; ; i++) {
      const email = emailValue();
      let r = null;
      try {
        const headers = {};
        let body;
        if (item.files.length) {
          body = new FormData();
          body.append('client_id', item.cid);
          body.append('text', item.text);
          if (email) body.append('email', email);
          body.append('page', location.href);
          for (const f of item.files) body.append('file', f, f.name);
        } else {
          headers['Content-Type'] = 'application/json';
          body = JSON.stringify({ client_id: item.cid, text: item.text,
            ...(email ? { email } : {}), page: location.href });
        }
        const bytes = item.files.reduce((s, f) => s + f.size, 0);
        const signal = AbortSignal.timeout ? AbortSignal.timeout(20000 + bytes / 20) : undefined;
        r = await call('messages', { method: 'POST', headers, body, signal });
      } catch { /* network error or timeout: retried below */ }
      if (gen !== item.gen || item.id) return; // stopped, or the stream confirmed it
      if (r && (r.status === 200 || r.status === 201)) {
        setState(item, 'sent');
        if (email && root.activeElement !== emailInput) showKnown(email);
        return;
      }
      if (r && r.status < 500 && r.status !== 408) {
        const text = await errorOf(r, 'Not sent');
        if (gen === item.gen && !item.id) fail(item, text, r.status !== 413 && r.status !== 415);
        return;
      }
      if (i === 3) return fail(item, "Couldn't send this message. Check your connection.", true);
      await sleep(1000 << i);
      if (gen !== item.gen || item.id) return;
    }
  }

  function fail(item, text, canRetry) {
    setState(item, 'failed');
    let retry = null;
    if (canRetry) {
      retry = h('button', { type: 'button', class: 'btn retry' }, 'Retry');
      retry.addEventListener('click', () => { input.focus(); post(item); });
    }
    setErr(item.err, text, retry);
  }

  // -- files ---------------------------------------------------------------------------
  function renderFiles() {
    chosen.replaceChildren(...files.map((f) => {
      const rm = h('button', { type: 'button', class: 'rm', 'aria-label': 'Remove ' + f.name },
        '\u00d7');
      rm.addEventListener('click', () => {
        files = files.filter((x) => x !== f);
        renderFiles();
        fileInput.focus();
      });
      return h('li', {}, h('span', { class: 'fn' }, f.name), h('span', { class: 'sz' },
        size(f.size)), rm);
    }));
  }

  fileInput.addEventListener('change', () => {
    const problems = [];
    let total = files.reduce((s, f) => s + f.size, 0);
    for (const f of fileInput.files) {
      if (files.length >= 10) { problems.push('At most 10 files per message.'); break; }
      if (!f.size) { problems.push(`${f.name} is empty.`); continue; }
      if (total + f.size > maxUpload) {
        problems.push(`${f.name} is too large: files can be up to ${size(maxUpload)} ` +
          'per message in all.');
        continue;
      }
      files.push(f);
      total += f.size;
    }
    fileInput.value = '';
    setErr(fileErr, problems.join(' '));
    renderFiles();
  });

  // -- the message box -----------------------------------------------------------------
  // Grow with the text up to 6 lines (via rows: no inline styles).
  function grow() {
    input.rows = 1;
    const cs = getComputedStyle(input);
    const line = parseFloat(cs.lineHeight) || 22;
    const padding = parseFloat(cs.paddingTop) + parseFloat(cs.paddingBottom) || 0;
    input.rows = Math.min(6, Math.max(1, Math.round((input.scrollHeight - padding) / line)));
  }
  input.addEventListener('input', grow);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      send();
    }
  });
  sendBtn.addEventListener('click', send);
  emailInput.addEventListener('input', () => {
    emailInput.removeAttribute('aria-invalid');
    setErr(emailErr, '');
  });
  changeBtn.addEventListener('click', () => {
    known.hidden = true;
    emailField.hidden = false;
    emailInput.focus();
  });

  launcher.addEventListener('click', () => setOpen(!isOpen));
  closeBtn.addEventListener('click', () => setOpen(false, true));
  wrap.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && isOpen && !e.isComposing) {
      e.stopPropagation();
      setOpen(false, true);
    }
  });
  document.addEventListener('visibilitychange', markSeen);
  window.addEventListener('hashchange', () => {
    if (location.hash === '#frontdesk-open') setOpen(true);
  });

  // -- session and stream --------------------------------------------------------------
  function applySession(s) {
    if (typeof s.title === 'string' && s.title.trim()) title = s.title.trim();
    titleEl.textContent = title;
    panel.setAttribute('aria-label', title);
    notice = typeof s.notice === 'string' ? s.notice : '';
    if (Number(s.max_upload_bytes) > 0) maxUpload = Number(s.max_upload_bytes);
    askEmail = s.ask_email === 'required' || s.ask_email === 'optional' ? s.ask_email : 'off';
    emailBox.replaceChildren();
    if (askEmail !== 'off') {
      emailLabel.textContent = askEmail === 'required' ? 'Your email'
        : 'Your email (so we can reply if you leave)';
      emailInput.required = askEmail === 'required';
      emailBox.append(known, emailField);
      if (typeof s.email === 'string' && s.email) {
        emailInput.value = s.email;
        showKnown(s.email);
      }
    }
    (Array.isArray(s.messages) ? s.messages : []).forEach((m) => addMsg(m, true));
    updateLauncher();
    markSeen();
  }

  async function start() {
    for (let wait = 2000; ; wait = Math.min(wait * 2, 10000)) {
      try {
        const r = await call('session');
        if (r.ok) {
          const s = await r.json();
          if (s && typeof s === 'object') {
            unreachable = false;
            applySession(s);
            showStatus();
            stream();
            return;
          }
        }
      } catch { /* unreachable: retried */ }
      unreachable = true;
      showStatus();
      await sleep(wait);
    }
  }

  // Server-Sent Events over fetch (EventSource cannot send the Authorization header).
  let retryMs = 0;
  function parser(onEvent) {
    let buf = '';
    let data = [];
    let type = '';
    const line = (l) => {
      if (!l) {
        if (data.length) onEvent(type || 'message', data.join('\n'));
        data = [];
        type = '';
      } else if (l[0] !== ':') { // ":" starts a comment (heartbeat)
        const i = l.indexOf(':');
        const field = i < 0 ? l : l.slice(0, i);
        let value = i < 0 ? '' : l.slice(i + 1);
        if (value[0] === ' ') value = value.slice(1);
        if (field === 'event') type = value;
        else if (field === 'data') data.push(value);
        else if (field === 'retry' && /^\d+$/.test(value)) retryMs = +value;
        // "id" is the message id, which the message itself carries
      }
    };
    return (chunk) => {
      buf += chunk;
      let m;
      while ((m = /\r\n?|\n/.exec(buf))) {
        if (m[0] === '\r' && m.index === buf.length - 1) break; // "\r\n" may be split
        line(buf.slice(0, m.index));
        buf = buf.slice(m.index + m[0].length);
      }
    };
  }

  const onEvent = (type, data) => {
    if (type !== 'message') return;
    try {
      addMsg(JSON.parse(data), false);
    } catch { /* a bad event is skipped */ }
    updateLauncher();
    markSeen();
  };

  async function stream() {
    let next = 0; // 0: the next wait is the base delay (retry: from the server, else 1 s)
    for (;;) {
      const ctl = new AbortController();
      let timer = 0;
      const arm = () => { // no bytes for 45 s (heartbeats come every 15 s): reconnect
        clearTimeout(timer);
        timer = setTimeout(() => ctl.abort(), 45000);
      };
      try {
        arm();
        const headers = { Accept: 'text/event-stream' };
        if (lastId) headers['Last-Event-ID'] = String(lastId);
        const r = await call('stream', { headers, signal: ctl.signal });
        if (r.ok && r.body) {
          next = 0; // connected: the backoff starts again
          const reader = r.body.getReader();
          const decoder = new TextDecoder();
          const feed = parser(onEvent);
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            arm();
            feed(decoder.decode(value, { stream: true }));
          }
        }
      } catch { /* reconnect below */ }
      clearTimeout(timer);
      ctl.abort();
      const wait = next || retryMs || 1000;
      next = Math.min(wait * 2, 15000);
      await sleep(wait);
    }
  }

  // -- go ------------------------------------------------------------------------------
  updateLauncher();
  const mount = () => {
    document.body.append(host);
    if (location.hash === '#frontdesk-open') setOpen(true);
  };
  if (document.body) mount();
  else document.addEventListener('DOMContentLoaded', mount, { once: true });
  start();
})();
