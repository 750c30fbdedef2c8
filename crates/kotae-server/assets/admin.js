// Kotae admin console: a page over /admin/api (no framework, no build step). Sign-in is
// the server's: the single-sign-on proxy in front of Kotae, or an admin key or token kept in
// this tab's sessionStorage and sent as a bearer credential (never a cookie, so other
// sites cannot ride on it; proxy sign-in is checked for same-site requests by the server).
'use strict';
(() => {
  const ja = (navigator.language || '').toLowerCase().startsWith('ja');
  const L = ja ? {
    title: 'Kotae 管理', signin: 'サインイン', sso: 'シングルサインオンでサインイン', signout: 'サインアウト', key: '管理者キーまたはトークン',
    signinHelp: 'シングルサインオンでサインインするか、管理者の API キーまたはトークンを貼り付けてください。このタブの中だけに保存されます。',
    models: 'モデル', modelsHelp: '回答を書く生成モデルです。ここで切り替えると、このデータフォルダのすべてのサーバーが再起動なしで数秒以内に切り替わり、再起動後も保たれます。微調整したモデル（kotae finetune lora --run-dir <データフォルダ>/runs/<名前>）も一覧に出ます。',
    generator: '生成モデル', serveModel: 'このモデルで回答', served: (m) => `回答中: ${m}`, publishedAs: (m) => `データフォルダの選択: ${m}`, configured: '設定ファイルのまま', loadFailed: (m, e) => `${m} を読み込めませんでした: ${e}`, switching: '読み込み中…', switched: (m) => `${m} で回答しています`,
    headsHelp: 'このナレッジベースから学習します（ジョブとして実行）。routing は問い合わせを担当窓口に振り分け、safety はガードの分類器、LoRA は回答中の生成モデルをマニュアルと問い合わせ履歴に合わせます（CPU では時間がかかります）。結果は上の一覧に加わります。', trainRouting: '振り分け分類器を学習', trainSafety: '安全性分類器を学習', trainLora: '生成モデルを微調整（LoRA）',
    documents: '文書', jobs: 'ジョブ', feedback: 'フィードバック', quarantine: '隔離', guard: 'ガードレール', audit: '監査', eval: '評価',
    drop: 'マニュアルをここにドロップ、またはファイルを選択', dropHelp: 'Markdown・HTML・PDF・テキスト。同じ名前の文書は新しい版に置き換わります。',
    groups: '閲覧できるグループ', groupsHelp: 'カンマ区切り（例: public、hr,managers）', file: 'ファイル', progress: '進捗', status: '状態',
    filter: '絞り込み', all: 'すべての文書', uploaded: 'ここでアップロード', ingested: 'フォルダから取り込み', document: '文書', groupsCol: 'グループ',
    chunks: 'チャンク', version: '版', updated: '更新', kind: '種類', by: '実行者', result: '結果', started: '開始', show: '表示',
    downs: '役に立たなかった', ups: '役に立った', allVotes: 'すべて', source: '出典', text: 'テキスト', why: '理由', when: '日時',
    direction: '方向', category: '分類', rule: 'ルール', action: '操作', client: '利用者', actor: '実行者', target: '対象', detail: '詳細',
    quarantineHelp: '学習データのガードが微調整から除外したテキストとその理由です。学習して安全なものだけを解除してください。',
    notAdmin: (w) => `${w} としてサインインしていますが、管理者ではありません。このコンソールは管理者専用です。`,
    replace: '差し替え', remove: '削除', confirmRemove: (s) => `${s} を削除しますか？検索と回答から外れます。`, retry: '再実行', cancel: '中止', cancelled: '中止済み', cancelling: '中止中…', phase: { scanning: '確認中', ingesting: '取り込み中', finishing: '仕上げ中' },
    filesOf: (d, t) => `${d} / ${t} ファイル`,
    reindex: '再インデックス', confirmReindex: 'すべての文書を元のフォルダから読み直します（変更されたファイルだけ取り込み直します）。よろしいですか？',
    flagged: (n) => `⚠ AI への指示を含むチャンク ${n} 件（データとして引用されます。内容を確認してください）`, lastError: (r) => `最後のアップロードは取り込まれませんでした: ${r}（上の版のまま）`, notIn: (r) => `取り込まれていません: ${r}`,
    keys: 'API キー', keysHelp: 'サービス（ボット・スクリプト）用のキーです。作成するとすぐに使え、無効化するとすぐに使えなくなります。kotae.toml のキーは一覧に出ますが、変更はファイルで行います。',
    keyName: '名前', role: '役割', makeKey: 'キーを作成', made: '作成', fromConfig: 'kotae.toml', madeBy: (w) => `${w} が作成`, active: '有効', revoked: (w) => `無効化済み（${w}）`,
    revoke: '無効化', confirmRevoke: (n) => `キー ${n} を無効化しますか？このキーを使うサービスはすぐに拒否されます。`, keyOnce: (n) => `キー ${n} です。今だけ表示されます（Kotae は SHA-256 しか保存しません）。`, copy: 'コピー',
    release: '解除', reject: '却下', queued: '待機中', running: '処理中', done: '完了', failed: '失敗', uploading: 'アップロード中',
    docs: (n, c) => `${n} 件の文書、${c} チャンク`, rulesTitle: 'アクセスルール（フォルダ・既定・機密表示）', defaultGroups: '既定のグループ', question: '質問', answer: '回答', comment: 'コメント', none: 'ありません',
    noReport: 'まだ評価レポートがありません（kotae eval all を毎晩実行）', passed: '合格', regressed: '後退あり', runEval: '今すぐ評価を実行', editGroups: 'グループ変更', askGroups: (s) => `${s} を閲覧できるグループ（カンマ区切り）`,
    rulePath: 'サーバー上のフォルダ', setRule: 'ルールを設定', ruleBy: (w) => `${w} が設定`, confirmRemoveRule: (p) => `${p} のルールを削除しますか？文書は別のルールが当てはまるまで今のグループのままです。`,
  } : {
    source: 'Source',
    notAdmin: (w) => `You are signed in as ${w}, who is not an admin. This console is for admins.`,
    served: (m) => `Serving: ${m}`, publishedAs: (m) => `This data folder's choice: ${m}`, configured: 'as configured', loadFailed: (m, e) => `${m} did not load: ${e}`, switching: 'loading…', switched: (m) => `Answering with ${m}`,
    replace: 'Replace', remove: 'Delete', confirmRemove: (s) => `Delete ${s}? It leaves search and answers.`, retry: 'Retry', cancel: 'Cancel', cancelled: 'cancelled', cancelling: 'cancelling…', phase: { scanning: 'scanning', ingesting: 'ingesting', finishing: 'finishing' },
    filesOf: (d, t) => `${d} of ${t} files`,
    reindex: 'Re-index', confirmReindex: 'Read every document again from the folder it came from (changed files are ingested again)?',
    flagged: (n) => `⚠ ${n} chunk(s) with instructions addressed to an AI (quoted as data; review them)`, lastError: (r) => `The last upload was left out: ${r} (the version listed still serves)`, notIn: (r) => `Not ingested: ${r}`,
    keys: 'API keys', keyName: 'Name', role: 'Role', makeKey: 'Make a key', made: 'Made', fromConfig: 'kotae.toml', madeBy: (w) => `made by ${w}`, active: 'active', revoked: (w) => `revoked (by ${w})`,
    revoke: 'Revoke', confirmRevoke: (n) => `Revoke the key ${n}? Services using it are refused at once.`, keyOnce: (n) => `The key ${n}, shown this once (Kotae keeps only its SHA-256):`, copy: 'Copy',
    release: 'Release', reject: 'Reject', queued: 'queued', running: 'running', done: 'done', failed: 'failed', uploading: 'uploading',
    docs: (n, c) => `${n} documents, ${c} chunks`, rulesTitle: 'Access rules (folders, default, confidentiality markers)', defaultGroups: 'Default groups', question: 'Question', answer: 'Answer', comment: 'Comment', none: 'Nothing here',
    noReport: 'No evaluation report yet (run kotae eval all nightly)', passed: 'passed', regressed: 'regressions', runEval: 'Run the evaluation now', editGroups: 'Groups…', askGroups: (s) => `Who may read ${s}? Access groups, comma-separated`,
    rulePath: 'Folder on the server', setRule: 'Set rule', ruleBy: (w) => `set by ${w}`, confirmRemoveRule: (p) => `Remove the rule for ${p}? Its documents keep their groups until another rule applies.`,
  };
  const $ = (s) => document.querySelector(s);
  const h = (tag, props = {}, ...kids) => {
    const e = Object.assign(document.createElement(tag), props);
    e.append(...kids.filter((k) => k != null));
    return e;
  };
  const when = (u) => (u ? new Date(u * 1000).toLocaleString(ja ? 'ja-JP' : undefined) : '');
  const toast = (m) => { $('#toast').textContent = m; };
  let key = sessionStorage.getItem('kotae-admin-key');

  const call = async (path, opts = {}) => {
    const headers = Object.assign({}, opts.headers, key ? { Authorization: `Bearer ${key}` } : {});
    const r = await fetch(path, Object.assign({ credentials: 'same-origin' }, opts, { headers }));
    if (!r.ok) {
      let msg = `HTTP ${r.status}`;
      try { msg = (await r.json()).error.message; } catch { /* not JSON */ }
      throw Object.assign(new Error(msg), { status: r.status });
    }
    return r.status === 204 ? null : r.json();
  };

  function applyLabels() {
    document.documentElement.lang = ja ? 'ja' : 'en';
    for (const e of document.querySelectorAll('[data-t]')) if (typeof L[e.dataset.t] === 'string') e.textContent = L[e.dataset.t];
  }

  // Single sign-on: authorization code with PKCE (a public client; the token stays in this tab).
  const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const redirect = `${location.origin}/admin`;
  async function ssoStart(cfg) {
    const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
    const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
    sessionStorage.setItem('kotae-admin-pkce', JSON.stringify({ verifier, state }));
    const challenge = b64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
    const q = new URLSearchParams({ response_type: 'code', client_id: cfg.client_id, redirect_uri: redirect, scope: cfg.scope, state, code_challenge: challenge, code_challenge_method: 'S256' });
    location.assign(`${cfg.authorize_url}${cfg.authorize_url.includes('?') ? '&' : '?'}${q}`);
  }
  async function ssoFinish(cfg) {
    const q = new URLSearchParams(location.search);
    const pkce = JSON.parse(sessionStorage.getItem('kotae-admin-pkce') || 'null');
    sessionStorage.removeItem('kotae-admin-pkce');
    history.replaceState(null, '', '/admin');
    if (!pkce || q.get('state') !== pkce.state) throw new Error('sign-in failed: the state does not match; try again');
    const r = await fetch(cfg.token_url, { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'authorization_code', code: q.get('code'), redirect_uri: redirect, client_id: cfg.client_id, code_verifier: pkce.verifier }) });
    const t = await r.json();
    if (!r.ok || !(t.id_token || t.access_token)) throw new Error(`sign-in failed: ${t.error_description || t.error || r.status}`);
    key = t.id_token || t.access_token;
    sessionStorage.setItem('kotae-admin-key', key);
  }

  async function start() {
    applyLabels();
    const sso = await fetch('/admin/login').then((r) => (r.ok ? r.json() : null)).catch(() => null);
    if (sso) {
      $('#sso').hidden = false;
      $('#sso').onclick = () => ssoStart(sso);
      if (new URLSearchParams(location.search).has('code')) {
        try { await ssoFinish(sso); } catch (e) { toast(e.message); }
      }
    }
    let me = null;
    try { me = await call('/api/me'); } catch (e) { if (key && e.status === 401) { sessionStorage.removeItem('kotae-admin-key'); key = null; } }
    $('#signout').hidden = !key;
    if (me && me.role === 'admin') {
      $('#who').textContent = me.id;
      $('#signin').hidden = $('#denied').hidden = true;
      $('#console').hidden = false;
      tab(location.hash.slice(1) || 'documents');
      return;
    }
    $('#console').hidden = true;
    if (me && me.via !== 'anonymous') { $('#denied').hidden = false; $('#denied').textContent = L.notAdmin(me.id); }
    $('#signin').hidden = false;
    $('#key').focus();
  }
  $('#signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    key = $('#key').value.trim();
    sessionStorage.setItem('kotae-admin-key', key);
    $('#key').value = '';
    start();
  });
  $('#signout').addEventListener('click', () => { sessionStorage.removeItem('kotae-admin-key'); key = null; location.reload(); });

  let timer = null;
  function tab(name) {
    if (!$(`#tab-${name}`)) name = 'documents';
    for (const b of document.querySelectorAll('[role=tab]')) b.setAttribute('aria-selected', String(b.dataset.tab === name));
    for (const p of document.querySelectorAll('[role=tabpanel]')) p.hidden = p.id !== `tab-${name}`;
    history.replaceState(null, '', `#${name}`);
    clearInterval(timer);
    const load = loaders[name];
    const run = () => load().catch((e) => toast(e.message));
    run();
    if (name === 'jobs') timer = setInterval(run, 2000);
  }
  for (const b of document.querySelectorAll('[role=tab]')) b.addEventListener('click', () => tab(b.dataset.tab));

  const fill = (sel, rows) => {
    const body = $(`${sel} tbody`);
    body.replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colSpan: 7, className: 'muted', textContent: L.none }))]));
  };
  const td = (...k) => h('td', {}, ...k.map((x) => (typeof x === 'object' && x ? x : String(x ?? ''))));
  const statusText = (s) => h('span', { className: s === 'failed' ? 'bad' : s === 'done' ? 'ok' : '', textContent: L[s] || s });
  const live = (j) => j.status === 'queued' || j.status === 'running';
  const summary = (j) => {
    const r = j.report;
    if (live(j) && j.cancel_requested) return L.cancelling;
    // A running ingest: its phase and how many of its files are in.
    const p = j.progress;
    if (j.status === 'running' && p) return `${L.phase[p.phase] || p.phase}: ${L.filesOf(p.files_ingested, p.files_total)}${p.files_processed > p.files_ingested ? ` (+${p.files_processed - p.files_ingested})` : ''}`;
    if (!r) return '';
    if (r.error) return h('span', { className: 'bad', textContent: r.error });
    if (j.kind === 'eval') return h('span', { className: r.passed ? 'ok' : 'bad', textContent: `${r.passed ? L.passed : L.regressed} — run ${r.run}` });
    // What changed (non-zero counts) and what went wrong (non-empty lists).
    return Object.entries(r).filter(([k, v]) => (typeof v === 'number' && v !== 0 && k !== 'seconds' && k !== 'peak_rss_bytes') || (Array.isArray(v) && v.length))
      .map(([k, v]) => `${k.replace(/_/g, ' ')}: ${Array.isArray(v) ? v.map((x) => (typeof x === 'object' ? Object.values(x).join(' — ') : x)).join('; ') : v}`)
      .concat(typeof r.seconds === 'number' ? [`${r.seconds.toFixed(1)} s`] : []).join(', ');
  };

  // Documents: list, filter, replace, delete, and uploads with per-file progress.
  let docs = [], failed = [];
  async function loadDocs() {
    const d = await call('/admin/api/documents');
    docs = d.documents || [];
    failed = d.failed || [];
    $('#doc-count').textContent = L.docs(docs.length, d.chunks_total);
    // Who may read what: folder rules (longest path wins), the default, confidentiality markers.
    // Rules set here can be removed here; kotae.toml's are changed in the file.
    const rules = (d.access_rules || []).map((r) => h('div', { className: 'rule' }, `${r.path} → ${r.groups.join(', ')} `,
      h('span', { textContent: r.origin === 'admin' ? `(${L.ruleBy(r.updated_by)}, ${when(r.updated_unix)}) ` : `(${L.fromConfig}) ` }),
      r.origin === 'admin' ? h('button', { type: 'button', className: 'danger', textContent: L.remove, onclick: () => removeRule(r.path) }) : null));
    const markers = Object.entries(d.markers || {}).map(([m, g]) => `「${m}」 → ${g.join(', ')}`);
    $('#rules-body').replaceChildren(
      ...rules,
      h('div', { textContent: `${L.defaultGroups}: ${(d.default_groups || []).join(', ') || '—'}` }),
      ...markers.map((t) => h('div', { textContent: t })));
    showDocs();
  }
  function showDocs() {
    const q = $('#filter').value.trim().toLowerCase(), o = $('#origin').value;
    const rows = docs.filter((d) => (!q || d.source.toLowerCase().includes(q) || d.groups.join(',').includes(q)) && (!o || (o === 'uploaded') === d.uploaded))
      .map((d) => h('tr', {}, td(h('div', {}, d.source,
        (d.langs || []).length ? h('span', { className: 'muted', textContent: ` (${d.langs.join(', ')})` }) : null,
        d.flagged_chunks ? h('div', { className: 'bad', textContent: L.flagged(d.flagged_chunks) }) : null,
        d.error ? h('div', { className: 'bad', textContent: L.lastError(d.error.reason) }) : null)), td(d.groups.join(', ')), td(d.chunks), td(h('code', { textContent: d.version })), td(when(d.ingested_unix)),
        td(d.uploaded ? h('button', { textContent: L.replace, onclick: () => pick((f) => upload(f, d.source, d.groups.join(','))) }) : '', ' ',
          d.uploaded ? h('button', { textContent: L.editGroups, onclick: () => setGroups(d) }) : '', ' ',
          h('button', { className: 'danger', textContent: L.remove, onclick: () => remove(d.source) }))));
    // Uploads that never got in, with why.
    const lost = o === 'ingested' ? [] : failed.filter((f) => !q || f.source.toLowerCase().includes(q))
      .map((f) => h('tr', {}, td(h('div', {}, f.source, h('div', { className: 'bad', textContent: L.notIn(f.error.reason) }))), td(''), td(0), td(''), td(when(f.error.unix)), td('')));
    fill('#docs', rows.concat(lost));
  }
  $('#reindex').addEventListener('click', async () => {
    if (!confirm(L.confirmReindex)) return;
    try { const { job } = await call('/admin/api/reindex', { method: 'POST' }); follow(job, null); } catch (e) { toast(e.message); }
  });
  $('#filter').addEventListener('input', showDocs);
  $('#origin').addEventListener('change', showDocs);
  const pick = (then) => { const i = h('input', { type: 'file' }); i.onchange = () => i.files[0] && then(i.files[0]); i.click(); };
  // Who may read an uploaded document, changed in place (the server re-indexes it).
  async function setGroups(d) {
    const v = prompt(L.askGroups(d.source), d.groups.join(', '));
    if (v === null) return;
    const groups = v.split(',').map((g) => g.trim()).filter(Boolean);
    try {
      const r = await call(`/admin/api/documents/${d.source.split('/').map(encodeURIComponent).join('/')}`, { method: 'PATCH', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ groups }) });
      await follow(r.job, null);
    } catch (e) { toast(e.message); }
  }
  // Folder rules: set (or replace) one, remove one; a re-index job applies the change.
  $('#rule-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { path: $('#rule-path').value.trim(), groups: $('#rule-groups').value.split(',').map((g) => g.trim()).filter(Boolean) };
    try {
      const r = await call('/admin/api/access-rules', { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      e.target.reset();
      await follow(r.job, null);
    } catch (err) { toast(err.message); }
  });
  async function removeRule(path) {
    if (!confirm(L.confirmRemoveRule(path))) return;
    try { const r = await call(`/admin/api/access-rules?path=${encodeURIComponent(path)}`, { method: 'DELETE' }); await follow(r.job, null); } catch (e) { toast(e.message); }
  }
  async function remove(source) {
    if (!confirm(L.confirmRemove(source))) return;
    try { const r = await call(`/admin/api/documents/${source.split('/').map(encodeURIComponent).join('/')}`, { method: 'DELETE' }); await follow(r.job, null); } catch (e) { toast(e.message); }
  }
  function upload(file, name, groups) {
    const row = h('tr'), bar = h('progress', { max: 1, value: 0 }), st = h('span', { textContent: L.queued });
    row.append(td(name || file.name), td(bar), td(st));
    $('#uploads').hidden = false;
    $('#uploads tbody').prepend(row);
    const form = new FormData();
    form.append('groups', groups ?? $('#groups').value);
    form.append('file', file, name || file.name);
    const x = new XMLHttpRequest();
    x.open('POST', '/admin/api/documents');
    if (key) x.setRequestHeader('Authorization', `Bearer ${key}`);
    x.upload.onprogress = (e) => { if (e.lengthComputable) { bar.value = e.loaded / e.total; st.textContent = `${L.uploading} ${Math.round((100 * e.loaded) / e.total)}%`; } };
    x.onerror = () => { st.className = 'bad'; st.textContent = 'network error'; };
    x.onload = () => {
      let body = {};
      try { body = JSON.parse(x.responseText); } catch { /* empty */ }
      if (x.status !== 202) { st.className = 'bad'; st.textContent = body.error ? body.error.message : `HTTP ${x.status}`; return; }
      bar.value = 1;
      follow(body.job, st);
    };
    x.send(form);
  }
  // Poll a job until it ends; show its state in `st` (or a toast), then refresh the list.
  async function follow(id, st) {
    for (;;) {
      let j;
      try { j = await call(`/admin/api/jobs/${id}`); } catch (e) { toast(e.message); return; }
      const s = summary(j);
      const text = `${L[j.status] || j.status}${s ? ` — ${typeof s === 'string' ? s : s.textContent}` : ''}`;
      if (st) { st.textContent = text; st.className = j.status === 'failed' ? 'bad' : j.status === 'done' ? 'ok' : ''; } else toast(text);
      if (!live(j)) { loadDocs().catch(() => {}); return; }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  $('#key-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { name: $('#key-name').value.trim(), groups: $('#key-groups').value.split(',').map((g) => g.trim()).filter(Boolean), role: $('#key-role').value };
    try {
      const made = await call('/admin/api/keys', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      $('#new-key').replaceChildren(h('p', { textContent: L.keyOnce(made.name) }), h('code', { id: 'new-key-value', textContent: made.key }), ' ',
        h('button', { type: 'button', textContent: L.copy, onclick: () => navigator.clipboard && navigator.clipboard.writeText(made.key) }));
      $('#new-key').hidden = false;
      $('#key-name').value = '';
      loaders.keys();
    } catch (err) { toast(err.message); }
  });
  const drop = $('#drop'), files = $('#files');
  drop.addEventListener('click', () => files.click());
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); files.click(); } });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); for (const f of e.dataTransfer.files) upload(f); });
  files.addEventListener('change', () => { for (const f of files.files) upload(f); files.value = ''; });

  const loaders = {
    documents: loadDocs,
    async jobs() {
      const { jobs } = await call('/admin/api/jobs');
      fill('#jobs', jobs.map((j) => h('tr', {}, td(h('code', { textContent: j.id.slice(0, 8) })), td(j.kind), td(j.actor), td(statusText(j.status)), td(summary(j)), td(when(j.created_unix)),
        td((j.status === 'failed' || j.status === 'cancelled') && j.kind === 'ingest' ? h('button', { textContent: L.retry, onclick: async () => { try { await call(`/admin/api/jobs/${j.id}/retry`, { method: 'POST' }); loaders.jobs(); } catch (e) { toast(e.message); } } })
          : live(j) && j.kind !== 'eval' && !j.cancel_requested ? h('button', { className: 'cancel', textContent: L.cancel, onclick: async () => { try { await call(`/admin/api/jobs/${j.id}/cancel`, { method: 'POST' }); loaders.jobs(); } catch (e) { toast(e.message); } } }) : ''))));
    },
    async feedback() {
      const r = $('#rating').value;
      const { feedback } = await call(`/admin/api/feedback${r ? `?rating=${r}` : ''}`);
      const cards = feedback.map((f) => h('article', { className: 'card' },
        h('h3', { textContent: `${f.rating === 'down' ? '👎' : '👍'} ${when(f.created_unix)} — ${f.client}` }),
        h('div', {}, h('strong', { textContent: `${L.question}: ` }), f.question || ''),
        h('div', {}, h('strong', { textContent: `${L.answer}: ` }), f.answer),
        (f.citations || []).length ? h('div', { className: 'muted' }, `${L.source}: `, f.citations.map((c) => `[${c.n}] ${c.source} — ${c.section}`).join('; ')) : null,
        f.comment ? h('div', {}, h('strong', { textContent: `${L.comment}: ` }), f.comment) : null));
      $('#feedback-list').replaceChildren(...(cards.length ? cards : [h('p', { className: 'muted', textContent: L.none })]));
    },
    async quarantine() {
      const { items } = await call('/admin/api/quarantine');
      const decide = (id, status) => async () => { try { await call(`/admin/api/quarantine/${id}`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ status }) }); loaders.quarantine(); } catch (e) { toast(e.message); } };
      fill('#quarantine', items.map((q) => h('tr', {}, td(q.id), td(`${q.source} ${q.ref}`), td(q.text), td(`${q.category} (${q.rule})`), td(q.status),
        td(q.status === 'pending' ? h('button', { textContent: L.release, onclick: decide(q.id, 'released') }) : '', ' ', q.status === 'pending' ? h('button', { className: 'danger', textContent: L.reject, onclick: decide(q.id, 'rejected') }) : ''))));
    },
    async guard() {
      const { events } = await call('/admin/api/guard-events');
      fill('#guard', events.map((g) => h('tr', {}, td(g.request_id.slice(0, 8)), td(g.direction), td(g.category), td(g.rule), td(g.action), td(g.client))));
    },
    async keys() {
      const { keys } = await call('/admin/api/keys');
      const revoke = (name) => async () => {
        if (!confirm(L.confirmRevoke(name))) return;
        try { await call(`/admin/api/keys/${encodeURIComponent(name)}`, { method: 'DELETE' }); loaders.keys(); } catch (e) { toast(e.message); }
      };
      fill('#keys', keys.map((k) => h('tr', {}, td(k.name), td(k.role), td((k.groups || []).join(', ')), td(k.source === 'config' ? L.fromConfig : L.madeBy(k.created_by)), td(k.created_unix ? when(k.created_unix) : ''),
        td(h('span', k.revoked_unix ? { className: 'bad', textContent: L.revoked(k.revoked_by) } : { className: 'ok', textContent: L.active })),
        td(k.source === 'admin' && !k.revoked_unix ? h('button', { className: 'danger', textContent: L.revoke, onclick: revoke(k.name) }) : ''))));
    },
    async models() {
      const g = await call('/admin/api/generator');
      $('#gen-model').replaceChildren(...g.choices.map((c) => h('option', { value: c, textContent: c, selected: c === g.served })));
      $('#gen-info').replaceChildren(...[h('span', { textContent: L.served(g.served || '-') }), ' · ', h('span', { textContent: L.publishedAs(g.published || L.configured) }),
        g.error ? h('div', { className: 'bad', textContent: L.loadFailed(g.error.model, g.error.message) }) : null].filter(Boolean));
    },
    async audit() {
      const { entries } = await call('/admin/api/audit');
      fill('#audit', entries.map((a) => h('tr', {}, td(when(a.created_unix)), td(a.actor), td(a.action), td(a.target), td(a.result), td(a.detail))));
    },
    async eval() {
      const box = $('#eval');
      // Run the suites now, on this server (the nightly job does the same): one run at a time.
      const st = h('span', { role: 'status' });
      const run = h('button', { textContent: L.runEval, onclick: async () => {
        run.disabled = true;
        try {
          const { job } = await call('/admin/api/eval/runs', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
          await follow(job, st);
          await loaders.eval();
        } catch (e) { st.textContent = e.message; st.className = 'bad'; } finally { run.disabled = false; }
      } });
      const bar = h('p', {}, run, ' ', st);
      let r;
      try { r = await call('/admin/api/eval'); } catch (e) { box.replaceChildren(bar, h('p', { className: 'muted', textContent: e.status === 404 ? L.noReport : e.message })); return; }
      const bad = (r.threshold_failures || []).length + (r.regressions || []).length;
      box.replaceChildren(bar,
        h('p', {}, h('strong', { className: bad ? 'bad' : 'ok', textContent: bad ? `${L.regressed}: ${bad}` : L.passed }), ` — ${r.started} · ${r.commit} · ${r.generator} · ${r.embedder}`),
        ...[...(r.threshold_failures || []), ...(r.regressions || []).map((g) => `${g.name}: ${g.before} → ${g.now}`)].map((t) => h('div', { className: 'bad', textContent: t })),
        h('table', {}, h('thead', {}, h('tr', {}, h('th', { textContent: 'metric' }), h('th', { textContent: 'value' }))),
          h('tbody', {}, ...(r.metrics || []).map((m) => h('tr', {}, td(m.name), td(`${Math.round(m.value * 1000) / 1000} ${m.unit === 'rate' ? '' : m.unit}`))))));
    },
  };
  $('#gen-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const st = $('#gen-status'), model = $('#gen-model').value;
    st.textContent = L.switching; st.className = '';
    try {
      await call('/admin/api/generator', { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ model }) });
      st.textContent = L.switched(model); st.className = 'ok';
      await loaders.models();
    } catch (err) { st.textContent = err.message; st.className = 'bad'; }
  });
  for (const task of ['routing', 'safety', 'lora']) {
    $(`#train-${task}`).addEventListener('click', async () => {
      const st = $('#train-status');
      try {
        const { job } = await call('/admin/api/finetune', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ task }) });
        await follow(job, st);
        await loaders.models();
      } catch (err) { st.textContent = err.message; st.className = 'bad'; }
    });
  }
  $('#rating').addEventListener('change', () => loaders.feedback().catch((e) => toast(e.message)));
  start();
})();
