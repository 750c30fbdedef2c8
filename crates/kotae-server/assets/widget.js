/* Kotae chat widget: one tag on any page.
 *   <script src="https://kotae.example/widget.js" defer
 *           data-token-url="/kotae-token" data-lang="ja"></script>
 * data-target     CSS selector: draw the chat inside that element (default: a launcher button)
 * data-token-url  the host's URL for a short-lived token (JSON {"token": …} or the token as
 *                 text), fetched with the page's cookies; no long-lived secret in the page
 * data-credentials="include"  send cookies to Kotae (sign-in through a proxy in front of it)
 * data-lang       ja | en (default: the browser's language)
 * data-send       enter (default; Shift+Enter for a new line) | ctrl-enter (Ctrl/⌘+Enter sends)
 * data-api        Kotae's address (default: where this script came from)
 * Isolation: everything lives in a shadow root (the host's CSS cannot reach in, ours cannot
 * leak out) and the launcher and panel sit in the browser's top layer (popover), above any
 * z-index the host uses. No globals but `window.Kotae`. */
(() => {
  'use strict';
  const me = document.currentScript;
  if (!me || window.Kotae) return;
  const ds = me.dataset;
  const api = (ds.api || new URL(me.src, location.href).origin).replace(/\/+$/, '');
  const nav = (navigator.language || 'en').toLowerCase();
  const lang = ds.lang === 'ja' || ds.lang === 'en' ? ds.lang : nav.startsWith('ja') ? 'ja' : 'en';
  const ctrlSend = ds.send === 'ctrl-enter';
  const creds = ds.credentials === 'include' ? 'include' : 'omit';
  const T = {
    ja: {
      title: 'Kotae 社内ヘルプ', open: 'Kotae に質問する', close: '閉じる', newChat: '新しい会話',
      ask: '質問を入力', hint: ctrlSend ? 'Ctrl+Enter で送信、Enter で改行' : 'Enter で送信、Shift+Enter で改行',
      send: '送信', stop: '生成を停止', copy: 'コピー', copied: 'コピーしました', up: '役に立った',
      down: '役に立たなかった', why: 'よろしければ理由をお書きください（任意）', submit: '送る',
      thanks: 'ご意見ありがとうございました', sources: '出典', more: '関連する質問', source: '出典',
      about: (s) => `${s}について教えてください`, back: '回答に戻る', writing: '回答を作成しています…',
      stopped: '（停止しました）', notice: 'ご案内', welcome: '社内マニュアルと過去の問い合わせをもとにお答えします。',
      offline: '接続できませんでした。しばらくしてからもう一度お試しください。',
      busy: (s) => `ただいま混み合っています。${s}秒ほどしてからもう一度お試しください。`,
      signin: 'サインインが必要です。ページを再読み込みしてください。', you: 'あなた', bot: 'Kotae',
      nopassage: 'この出典は表示できません。', cite: (n, s) => `出典 ${n}: ${s}`, original: '元の文書を開く',
    },
    en: {
      title: 'Kotae help desk', open: 'Ask Kotae', close: 'Close', newChat: 'New conversation',
      ask: 'Ask a question', hint: ctrlSend ? 'Ctrl+Enter sends, Enter adds a line' : 'Enter sends, Shift+Enter adds a line',
      send: 'Send', stop: 'Stop generating', copy: 'Copy', copied: 'Copied', up: 'Helpful', down: 'Not helpful',
      why: 'What was wrong? (optional)', submit: 'Send', thanks: 'Thank you for the feedback', sources: 'Sources',
      more: 'Related questions', source: 'Source', about: (s) => `Tell me about ${s}`, back: 'Back to the answer',
      writing: 'Writing an answer…', stopped: '(stopped)', notice: 'Notice',
      welcome: 'Answers come from the company manuals and past inquiries.',
      offline: 'Could not connect. Please try again in a moment.',
      busy: (s) => `Kotae is busy. Please try again in about ${s} seconds.`,
      signin: 'Sign-in required. Please reload the page.', you: 'You', bot: 'Kotae',
      nopassage: 'This source cannot be shown.', cite: (n, s) => `Source ${n}: ${s}`, original: 'Open the original',
    },
  }[lang];

  const CSS = `
:host{all:initial}
*{box-sizing:border-box}
[popover]{margin:0;padding:0;border:0;background:transparent;overflow:visible;inset:auto;color:inherit}
.root,.panel,button,textarea{font:15px/1.6 system-ui,-apple-system,"Segoe UI","Hiragino Sans","Noto Sans JP","Yu Gothic UI",Meiryo,sans-serif;color:#1a1a1a}
button{cursor:pointer;border-radius:8px;border:1px solid #c4cad3;background:#fff;padding:4px 10px}
button:focus-visible,textarea:focus-visible,a:focus-visible{outline:3px solid #1f5fbf;outline-offset:2px}
.launch{position:fixed;right:20px;bottom:20px;z-index:2147483647}
.launch button{display:flex;align-items:center;gap:8px;background:#1f5fbf;color:#fff;border:0;border-radius:28px;padding:12px 20px;font-weight:600;box-shadow:0 4px 14px rgba(0,0,0,.25)}
.panel{position:fixed;right:20px;bottom:84px;width:420px;height:min(660px,calc(100vh - 104px));z-index:2147483647;display:flex;flex-direction:column;background:#fff;border:1px solid #c4cad3;border-radius:14px;box-shadow:0 8px 30px rgba(0,0,0,.28);overflow:hidden}
.panel[hidden]{display:none}
.panel.pop:not(:popover-open){display:none}
.inline{position:static;width:100%;height:100%;box-shadow:none;border-radius:8px}
header{display:flex;align-items:center;gap:8px;padding:10px 12px;background:#1f5fbf;color:#fff}
header h2{flex:1;margin:0;font-size:16px;color:#fff}
header button{background:transparent;color:#fff;border-color:rgba(255,255,255,.6)}
.log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:12px}
.msg{max-width:92%;padding:8px 12px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere;word-break:normal;line-break:strict}
.user{align-self:flex-end;background:#e8effa}
.bot{align-self:flex-start;background:#f4f5f7;border:1px solid #e1e4e8}
.notice{background:#fff8e6;border:1px solid #e0b34f}
.notice strong{display:block}
.welcome{color:#4a4f57;font-size:14px}
.error{background:#fdecec;border:1px solid #d9534f}
.cite{font-size:12px;padding:0 5px;margin:0 1px;vertical-align:super;line-height:1.2;color:#1f5fbf;border-color:#1f5fbf}
.srcs{margin:8px 0 0;padding-left:1.4em;font-size:13px;white-space:normal}
.srcs button{display:block;border:0;padding:0;color:#1f5fbf;text-decoration:underline;text-align:left;font-size:13px;background:none}
.more{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px;white-space:normal}
.more button{font-size:13px;border-radius:14px}
.acts{display:flex;gap:6px;margin-top:8px;align-items:center;white-space:normal}
.acts button{font-size:13px;padding:2px 8px}
.acts button[aria-pressed=true]{background:#1f5fbf;color:#fff}
.status{font-size:12px;color:#4a4f57}
.fb{display:flex;gap:6px;margin-top:6px}
.fb textarea{flex:1;min-height:2.2em}
form{display:flex;flex-wrap:wrap;gap:4px 8px;padding:10px 10px 6px;border-top:1px solid #e1e4e8;align-items:flex-end}
.hint{flex-basis:100%;font-size:12px;color:#4a4f57}
.viewer h3:focus{outline:none}
textarea{flex:1;resize:none;border:1px solid #9aa3af;border-radius:8px;padding:8px;max-height:160px}
.primary{background:#1f5fbf;color:#fff;border:0;padding:8px 14px;font-weight:600}
.viewer{position:absolute;inset:0;background:#fff;display:flex;flex-direction:column;z-index:1}
.viewer[hidden]{display:none}
.viewer h3{margin:0;font-size:15px}
.viewer .where{font-size:13px;color:#4a4f57}
.viewer .orig{font-size:13px;color:#0b57d0}
.viewer .orig[hidden]{display:none}
.viewer .body{flex:1;overflow-y:auto;padding:12px;white-space:pre-wrap;overflow-wrap:anywhere;line-break:strict}
.viewer .top{padding:10px 12px;border-bottom:1px solid #e1e4e8;display:flex;flex-direction:column;gap:4px;align-items:flex-start}
mark{background:#ffe58a;color:#1a1a1a;padding:0 1px}
.body-wrap{position:relative;flex:1;display:flex;flex-direction:column;min-height:0}
.dots::after{content:'…';animation:k 1s steps(3) infinite}
@keyframes k{50%{opacity:.3}}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
@media (max-width:767px){.panel.pop{inset:0;width:100vw;height:100vh;height:100dvh;border-radius:0;border:0}}
@media (prefers-reduced-motion:reduce){*{animation:none!important;transition:none!important}}
`;

  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
      else if (k === 'text') e.textContent = v;
      else if (v !== false && v != null) e.setAttribute(k, v === true ? '' : v);
    }
    e.append(...kids.filter((k) => k != null));
    return e;
  };

  // Identity: a short-lived token from the host (refetched before it expires), else cookies.
  let token = null, tokenExp = 0;
  const getToken = async (fresh) => {
    if (!ds.tokenUrl) return null;
    if (!fresh && token && Date.now() < tokenExp - 30e3) return token;
    const r = await fetch(ds.tokenUrl, { credentials: 'include' });
    if (!r.ok) throw Object.assign(new Error('token'), { status: 401 });
    const t = (await r.text()).trim();
    token = t.startsWith('{') ? JSON.parse(t).token : t;
    try { tokenExp = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).exp * 1e3; } catch { tokenExp = Date.now() + 60e3; }
    return token;
  };
  const call = async (path, opts = {}, retried) => {
    const t = await getToken(retried);
    const headers = Object.assign({}, opts.body ? { 'Content-Type': 'application/json' } : {}, t ? { Authorization: `Bearer ${t}` } : {});
    const r = await fetch(api + path, Object.assign({ credentials: creds }, opts, { headers }));
    if (r.status === 401 && ds.tokenUrl && !retried) return call(path, opts, true);
    return r;
  };
  const failure = async (r) => {
    if (!r) return T.offline;
    if (r.status === 401) return T.signin;
    if (r.status === 429 || r.status === 503) return T.busy(r.headers.get('Retry-After') || 10);
    try { return (await r.json()).error.message; } catch { return `HTTP ${r.status}`; }
  };

  const host = el('kotae-chat');
  const shadow = host.attachShadow({ mode: 'open' });
  const target = ds.target && document.querySelector(ds.target);
  const pop = !target && 'popover' in HTMLElement.prototype;
  const storeKey = `kotae:${api}:conversation`;
  let conversation = localStorage.getItem(storeKey);
  let running = null;

  const log = el('div', { class: 'log', role: 'log', 'aria-live': 'polite', 'aria-label': T.title, tabindex: '0' });
  const ta = el('textarea', { rows: '1', 'aria-label': T.ask, 'aria-describedby': 'kotae-hint', placeholder: `${T.ask}…`, lang });
  const sendB = el('button', { type: 'submit', class: 'primary', text: T.send });
  const stopB = el('button', { type: 'button', text: T.stop, hidden: true, on: { click: () => running && running.abort() } });
  const form = el('form', { on: { submit: (e) => { e.preventDefault(); ask(ta.value); } } }, ta, sendB, stopB, el('div', { class: 'hint', id: 'kotae-hint', text: T.hint }));
  const vTitle = el('h3', { tabindex: '-1' });
  const vWhere = el('div', { class: 'where' });
  const vBody = el('div', { class: 'body', tabindex: '0' });
  // The document's own page (a wiki, SharePoint), when it has one; http(s) only.
  const vOrig = el('a', { class: 'orig', target: '_blank', rel: 'noopener noreferrer', hidden: true, text: `${T.original} ↗` });
  const setOrig = (u) => { const ok = typeof u === 'string' && /^https?:\/\//i.test(u); vOrig.hidden = !ok; if (ok) vOrig.href = u; else vOrig.removeAttribute('href'); };
  let vReturn = null;
  const closeViewer = () => { viewer.hidden = true; if (vReturn) vReturn.focus(); };
  const viewer = el('div', { class: 'viewer', hidden: true, role: 'region', 'aria-label': T.source },
    el('div', { class: 'top' }, el('button', { type: 'button', text: `← ${T.back}`, on: { click: closeViewer } }), vTitle, vWhere, vOrig), vBody);
  const newB = el('button', { type: 'button', text: T.newChat, on: { click: () => reset() } });
  const closeB = target ? null : el('button', { type: 'button', 'aria-label': T.close, text: '×', on: { click: () => show(false) } });
  const panel = el('section', { class: `panel ${target ? 'inline' : 'pop'}`, role: target ? 'region' : 'dialog', 'aria-label': T.title, lang, id: 'kotae-panel', popover: pop ? 'manual' : false, hidden: !target && !pop },
    el('header', {}, el('h2', { text: T.title }), newB, closeB),
    el('div', { class: 'body-wrap' }, log, viewer), form);
  const launchB = el('button', { type: 'button', 'aria-expanded': 'false', 'aria-controls': 'kotae-panel', on: { click: () => show(panel.dataset.open !== '1') } },
    el('span', { 'aria-hidden': 'true', text: '💬' }), el('span', { text: T.open }));
  const launch = target ? null : el('div', { class: 'launch', popover: pop ? 'manual' : false }, launchB);
  shadow.append(el('style', { text: CSS }), ...[launch, panel].filter(Boolean));

  function show(open) {
    if (target) return;
    panel.dataset.open = open ? '1' : '';
    launchB.setAttribute('aria-expanded', String(open));
    if (pop) { try { open ? panel.showPopover() : panel.hidePopover(); } catch { /* already in that state */ } } else panel.hidden = !open;
    if (open) { restore(); ta.focus(); } else launchB.focus();
  }
  panel.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    e.stopPropagation();
    if (!viewer.hidden) closeViewer(); else show(false);
  });

  // Japanese input: Enter that confirms an IME conversion must never send. Chrome and
  // Firefox flag it (isComposing / keyCode 229); Safari sends its keydown just after
  // compositionend, hence the short grace period.
  let composing = false, composedAt = -1e9;
  ta.addEventListener('compositionstart', () => { composing = true; });
  ta.addEventListener('compositionend', () => { composing = false; composedAt = performance.now(); });
  ta.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || e.isComposing || e.keyCode === 229 || composing || performance.now() - composedAt < 60) return;
    const mod = e.ctrlKey || e.metaKey;
    if (ctrlSend ? !mod : e.shiftKey) return;
    e.preventDefault();
    ask(ta.value);
  });
  ta.addEventListener('input', () => { ta.style.height = 'auto'; ta.style.height = `${Math.min(ta.scrollHeight, 160)}px`; });

  const scroll = () => { log.scrollTop = log.scrollHeight; };
  const welcome = () => log.append(el('div', { class: 'msg bot welcome', text: T.welcome }));

  // The answer's text with its [n] markers as buttons that open the cited passage. Returns
  // what the answer says with each source: the sentence before each of its markers.
  function render(box, text, cites) {
    box.textContent = '';
    const byN = new Map((cites || []).map((c) => [c.n, c]));
    const claims = new Map();
    let said = '';
    for (const part of text.split(/(\[\d+\])/)) {
      const c = /^\[(\d+)\]$/.test(part) && byN.get(Number(part.slice(1, -1)));
      if (!c) { said = part.trim() ? part : said; box.append(part); continue; }
      const claim = said.split(/(?<=[。．！？!?]|\.\s)/).filter((x) => /[\p{L}\p{N}]{3}/u.test(x)).pop() || said;
      claims.set(c.n, `${claims.get(c.n) || ''} ${claim}`);
      box.append(el('button', { type: 'button', class: 'cite', 'aria-label': T.cite(c.n, c.source), text: String(c.n), on: { click: (e) => openSource(c, e.currentTarget, claim) } }));
    }
    return claims;
  }

  // Character bigrams: a language-neutral overlap measure (Japanese has no spaces).
  const grams = (t) => {
    const s = t.toLowerCase().replace(/[\s「」『』"“”()（）、。,.・:：]/g, '');
    const g = new Set();
    for (let i = 0; i + 1 < s.length; i++) g.add(s.slice(i, i + 2));
    return g;
  };
  // The passage's sentence that best supports `claim` ([start, end] in `text`), or null.
  function support(text, claim) {
    const want = grams(claim);
    if (!want.size) return null;
    let best = null, score = 0.25;
    const re = /[^。！？!?\n]+(?:[。！？!?]+|\.(?=\s|$)|$)/g;
    for (let m; (m = re.exec(text));) {
      const g = grams(m[0]);
      if (!g.size) continue;
      let both = 0;
      for (const x of g) if (want.has(x)) both++;
      const dice = (2 * both) / (g.size + want.size);
      if (dice > score) { score = dice; best = [m.index, m.index + m[0].length]; }
    }
    return best;
  }

  async function openSource(c, from, claim) {
    vReturn = from;
    vTitle.textContent = c.source;
    vWhere.textContent = c.section || '';
    vBody.textContent = '…';
    setOrig(c.url);
    viewer.hidden = false;
    vTitle.focus();
    const r = await call(`/api/sources/${encodeURIComponent(c.chunk_id)}`).catch(() => null);
    if (!r || !r.ok) { vBody.textContent = T.nopassage; return; }
    const p = await r.json();
    setOrig(p.url || c.url);
    vTitle.textContent = p.source;
    vWhere.textContent = p.section || c.section || '';
    vBody.textContent = '';
    const text = p.text;
    // Highlight the sentence that supports what the answer said with this source (quoted
    // sentences match exactly, generated ones by overlap), else the retrieved snippet.
    let span = claim && support(text, claim);
    if (!span) {
      const snip = (c.snippet || '').replace(/…$/, '').trim();
      const at = snip ? text.indexOf(snip) : -1;
      if (at >= 0) span = [at, at + snip.length];
    }
    if (!span) { vBody.textContent = text; return; }
    const mark = el('mark', { text: text.slice(span[0], span[1]) });
    vBody.append(text.slice(0, span[0]), mark, text.slice(span[1]));
    mark.scrollIntoView({ block: 'center' });
  }

  function botMessage() {
    const box = el('div', { class: 'msg bot', 'aria-busy': 'true' });
    const textEl = el('div', {}, el('span', { class: 'status dots', text: T.writing }));
    box.append(el('span', { class: 'sr', text: `${T.bot}: ` }), textEl);
    log.append(box);
    return { box, textEl };
  }

  function finish({ box, textEl }, a, messageId) {
    box.removeAttribute('aria-busy');
    if (a.kind === 'blocked') {
      box.classList.add('notice');
      textEl.replaceChildren(el('strong', { text: T.notice }), a.text);
      return;
    }
    const claims = render(textEl, a.text, a.citations);
    const cites = (a.citations || []).filter((c) => c.marked || claims.has(c.n) || a.kind !== 'generated');
    if (cites.length) {
      box.append(el('div', { class: 'status', text: T.sources }),
        el('ol', { class: 'srcs' }, ...cites.map((c) => el('li', {}, el('button', { type: 'button', text: `${c.source}${c.section ? ` — ${c.section}` : ''}`, on: { click: (e) => openSource(c, e.currentTarget, claims.get(c.n)) } })))));
    }
    // Related questions: the other sections the answer drew on, as questions to ask next.
    const seen = new Set(), more = [];
    for (const c of (a.citations || []).slice(1)) {
      const s = (c.section || '').split(' > ').pop().replace(/^#+\s*/, '').trim();
      if (s && !seen.has(s) && more.length < 3) { seen.add(s); more.push(T.about(s)); }
    }
    if (more.length) box.append(el('div', { class: 'more', role: 'group', 'aria-label': T.more }, ...more.map((q) => el('button', { type: 'button', text: q, on: { click: () => ask(q) } }))));
    const status = el('span', { class: 'status', role: 'status' });
    const copyB = el('button', { type: 'button', text: T.copy, on: { click: () => copy(a.text, status) } });
    const acts = el('div', { class: 'acts' }, copyB);
    if (messageId) {
      const fbBox = el('div', { class: 'fb', hidden: true });
      const vote = (rating, b) => async () => {
        for (const x of acts.querySelectorAll('[aria-pressed]')) x.setAttribute('aria-pressed', String(x === b));
        const why = el('textarea', { rows: '1', 'aria-label': T.why, placeholder: T.why });
        fbBox.replaceChildren(why, el('button', { type: 'button', text: T.submit, on: { click: () => send(rating, why.value.trim()) } }));
        fbBox.hidden = false;
        why.focus();
        await send(rating, '');
      };
      const send = async (rating, comment) => {
        const r = await call('/api/feedback', { method: 'POST', body: JSON.stringify(Object.assign({ message_id: messageId, rating }, comment ? { comment } : {})) }).catch(() => null);
        status.textContent = r && r.ok ? T.thanks : await failure(r);
        if (comment && r && r.ok) fbBox.hidden = true;
      };
      const up = el('button', { type: 'button', 'aria-pressed': 'false', 'aria-label': T.up, text: '👍' });
      const down = el('button', { type: 'button', 'aria-pressed': 'false', 'aria-label': T.down, text: '👎' });
      up.addEventListener('click', vote('up', up));
      down.addEventListener('click', vote('down', down));
      acts.append(up, down, status);
      box.append(acts, fbBox);
    } else {
      acts.append(status);
      box.append(acts);
    }
  }

  async function copy(text, status) {
    try { await navigator.clipboard.writeText(text); } catch {
      const t = el('textarea', { style: 'position:fixed;opacity:0' });
      t.value = text; shadow.append(t); t.select(); document.execCommand('copy'); t.remove();
    }
    status.textContent = T.copied;
  }

  let restored = false, epoch = 0;
  async function restore() {
    if (restored) return;
    restored = true;
    if (!conversation) return welcome();
    const e = epoch;
    const r = await call(`/api/conversations/${encodeURIComponent(conversation)}`).catch(() => null);
    if (e !== epoch) return; // a new conversation was started meanwhile
    if (!r || !r.ok) { conversation = null; localStorage.removeItem(storeKey); return welcome(); }
    const { messages } = await r.json();
    if (e !== epoch) return;
    for (const m of messages) {
      if (m.role === 'user') log.append(el('div', { class: 'msg user', text: m.content }));
      else finish(botMessage(), m.answer || { text: m.content }, m.id);
    }
    scroll();
  }

  function reset() {
    if (running) running.abort();
    epoch++;
    restored = true;
    conversation = null;
    localStorage.removeItem(storeKey);
    log.textContent = '';
    viewer.hidden = true;
    welcome();
    ta.focus();
  }

  async function ask(text) {
    text = text.trim();
    if (!text || running) return;
    if (!restored) await restore();
    ta.value = '';
    ta.style.height = 'auto';
    log.append(el('div', { class: 'msg user', text }));
    const msg = botMessage();
    scroll();
    const ctl = new AbortController();
    running = ctl;
    sendB.hidden = true;
    stopB.hidden = false;
    let shown = '', done = false;
    try {
      const r = await call('/api/chat', { method: 'POST', signal: ctl.signal, body: JSON.stringify(Object.assign({ message: text }, conversation ? { conversation_id: conversation } : {})) });
      if (!r.ok) {
        if (r.status === 404 && conversation) { conversation = null; localStorage.removeItem(storeKey); }
        throw Object.assign(new Error(await failure(r)), { shown: true });
      }
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done: end } = await reader.read();
        if (end) break;
        buf += dec.decode(value, { stream: true }).replace(/\r\n/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let ev = 'message', data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) ev = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
          }
          if (!data) continue;
          const d = JSON.parse(data);
          if (ev === 'meta') { conversation = d.conversation_id; localStorage.setItem(storeKey, conversation); }
          else if (ev === 'token') { shown += d.text; msg.textEl.textContent = shown; scroll(); }
          else if (ev === 'done') { done = true; finish(msg, d.answer, d.message_id); }
          else if (ev === 'error') throw Object.assign(new Error(d.error ? d.error.message : T.offline), { shown: true });
        }
      }
      if (!done) throw new Error(T.offline);
    } catch (e) {
      msg.box.removeAttribute('aria-busy');
      if (ctl.signal.aborted) msg.textEl.textContent = `${shown}${shown ? '\n' : ''}${T.stopped}`;
      else { msg.box.classList.add('error'); msg.textEl.textContent = e.shown ? e.message : T.offline; }
    } finally {
      running = null;
      sendB.hidden = false;
      stopB.hidden = true;
      scroll();
    }
  }

  if (target) host.setAttribute('style', 'display:block;height:100%');
  (target || document.body).append(host);
  if (target) {
    restore();
    // A link to a source (Slack's citations: /chat#source=<chunk id>) opens it.
    const m = /^#source=([0-9a-f]{16})$/.exec(location.hash);
    if (m) openSource({ chunk_id: m[1], source: '', section: '' }, null, '');
  }
  else if (pop) launch.showPopover();
  window.Kotae = { open: () => show(true), close: () => show(false), ask: (q) => { if (!target) show(true); return ask(q); }, reset };
})();
