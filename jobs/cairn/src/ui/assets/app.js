// cairn ui: a read-only view of a repository. No framework, no CDN: a hash router, a tiny
// element builder (text always goes in as textContent: object and file names are data, never
// markup) and one view function per page.
"use strict";

const main = () => document.getElementById("main");
let INFO = null;
let SNAPSHOTS = null;

// ---------------------------------------------------------------- helpers
function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

// SVG elements (the timeline), `a` included: an HTML <a> inside <svg> does not render.
function svgEl(tag, attrs, ...children) {
  return build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);
}

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") u.set(k, v);
  return u.toString();
}

async function api(path, params) {
  const res = await fetch(`/api/${path}?${qs(params || {})}`);
  const body = await res.json().catch(() => ({ error: `${res.status} ${res.statusText}` }));
  if (!res.ok) throw new Error(body.error || `${res.status}`);
  return body;
}

async function text(path, params) {
  const res = await fetch(`/api/${path}?${qs(params)}`);
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw new Error(body.error || `${res.status}`);
  }
  return res.text();
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

function when(t) {
  if (!t) return "";
  return t.replace("T", " ").replace(/\.\d+/, "").replace(/(Z|[+-]00:00)$/, " UTC");
}

function ago(t) {
  const s = (Date.now() - Date.parse(t)) / 1000;
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

const short = (id) => id.slice(0, 8);
const link = (href, ...c) => h("a", { href }, ...c);
const snapHref = (id, rest, params) => `#/s/${id}${rest ? "/" + rest : ""}${params ? "?" + qs(params) : ""}`;

function route() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [p, query] = raw.split("?");
  return { parts: p.split("/").filter(Boolean), params: Object.fromEntries(new URLSearchParams(query || "")) };
}

function errorBox(e) {
  return h("div", { class: "error", "data-testid": "error" }, String(e.message || e));
}

async function snapshots(refresh) {
  if (!SNAPSHOTS || refresh) SNAPSHOTS = await api("snapshots", { refresh: refresh ? "true" : "" });
  return SNAPSHOTS;
}

function healthDot(hl) {
  return h("span", { class: `dot ${hl || "none"}`, title: hl || "" });
}

function pager(total, offset, limit, go) {
  if (total <= limit) return h("div", { class: "muted small" }, `${total} shown`);
  const from = offset + 1, to = Math.min(offset + limit, total);
  return h("div", { class: "pager" },
    h("button", { disabled: offset === 0, onclick: () => go(Math.max(0, offset - limit)) }, "‹ previous"),
    h("span", { "data-testid": "page" }, ` ${from}–${to} of ${total} `),
    h("button", { disabled: to >= total, onclick: () => go(offset + limit) }, "next ›"));
}

// ---------------------------------------------------------------- timeline
const KIND_ORDER = { etcd: 0, manifests: 1, pvc: 2, bucket: 3, files: 4 };

async function viewTimeline(params) {
  const list = await snapshots(params.refresh === "1");
  const groups = new Map();
  for (const s of list) {
    const key = `${s.cluster || ""}\u0000${s.source}`;
    if (!groups.has(key)) groups.set(key, { source: s.source, cluster: s.cluster, kind: s.kind, items: [] });
    groups.get(key).items.push(s);
  }
  const rows = [...groups.values()].sort((a, b) =>
    (KIND_ORDER[a.kind] - KIND_ORDER[b.kind]) || (a.cluster || "").localeCompare(b.cluster || "") || a.source.localeCompare(b.source));
  const selected = params.source || (rows[0] && rows[0].source);
  const root = h("div", {},
    h("div", { class: "title-row" }, h("h1", {}, "Snapshots"),
      h("button", { onclick: async () => { await snapshots(true); render(); } }, "Refresh")));
  if (!list.length) {
    root.append(h("p", { class: "muted" }, "The repository has no snapshots yet."));
    return root;
  }
  const times = list.map((s) => Date.parse(s.time));
  let t0 = Math.min(...times), t1 = Math.max(...times);
  if (t1 - t0 < 60000) { t0 -= 30000; t1 += 30000; }
  const W = 1000, rowH = 28, label = 260, pad = 12;
  const x = (t) => label + pad + ((t - t0) / (t1 - t0)) * (W - label - 2 * pad);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${rows.length * rowH + 24}`, class: "timeline", "data-testid": "timeline" });
  rows.forEach((g, i) => {
    const y = i * rowH + rowH / 2;
    const name = (g.cluster ? `${g.cluster} · ` : "") + g.source;
    const a = svgEl("a", { href: `#/?${qs({ source: g.source })}` },
      svgEl("text", { x: 4, y: y + 4, class: `lane ${g.source === selected ? "selected" : ""}` }, name));
    svg.append(a, svgEl("line", { x1: label, x2: W - 4, y1: y, y2: y, class: "lane-line" }));
    for (const snap of g.items) {
      const cls = snap.partial ? "partial" : "ok";
      svg.append(svgEl("a", { href: snapHref(snap.id), "data-testid": "timeline-dot" },
        svgEl("circle", { cx: x(Date.parse(snap.time)), cy: y, r: 6, class: `snap ${cls} ${g.kind}` },
          svgEl("title", {}, `${snap.source} ${when(snap.time)}\n${bytes(snap.summary.bytes)}, ${bytes(snap.summary.new_bytes)} new${snap.partial ? "\nPARTIAL: " + snap.failures.length + " failures" : ""}`))));
    }
  });
  const axisY = rows.length * rowH + 16;
  svg.append(svgEl("text", { x: label + pad, y: axisY, class: "axis" }, when(new Date(t0).toISOString())),
    svgEl("text", { x: W - 4, y: axisY, class: "axis end" }, when(new Date(t1).toISOString())));
  root.append(svg);

  const g = rows.find((r) => r.source === selected) || rows[0];
  root.append(h("h2", {}, `${g.source}`, g.cluster ? h("span", { class: "muted" }, ` · cluster ${g.cluster}`) : null));
  const table = h("table", { class: "grid", "data-testid": "snapshot-table" },
    h("tr", {}, ["time", "id", "files", "size", "new", "took", "status", "tags"].map((c) => h("th", {}, c))));
  for (const s of [...g.items].reverse()) {
    const status = s.partial ? h("span", { class: "tag warn" }, `partial: ${s.failures.length} failed`) : h("span", { class: "tag ok" }, "complete");
    table.append(h("tr", {},
      h("td", {}, link(snapHref(s.id), when(s.time)), h("div", { class: "muted small" }, ago(s.time))),
      h("td", { class: "mono" }, short(s.id)),
      h("td", { class: "num" }, s.summary.files),
      h("td", { class: "num" }, bytes(s.summary.bytes)),
      h("td", { class: "num" }, bytes(s.summary.new_bytes)),
      h("td", { class: "num" }, `${(s.summary.duration_ms / 1000).toFixed(1)} s`),
      h("td", {}, status),
      h("td", { class: "small" }, Object.entries(s.tags || {}).map(([k, v]) => `${k}=${v}`).join(" "))));
  }
  root.append(table);
  return root;
}

// ---------------------------------------------------------------- snapshot pages
const CLUSTER_TABS = [
  ["nodes", "Nodes"], ["deployments", "Deployments"], ["statefulsets", "StatefulSets"],
  ["daemonsets", "DaemonSets"], ["pods", "Pods"], ["pvcs", "PVCs"],
];

function snapHeader(s, current, params) {
  const nav = h("div", { class: "snap-nav" },
    s.previous ? link(snapHref(s.previous, current, params), "‹ earlier snapshot") : h("span", { class: "muted" }, "‹ earliest"),
    h("span", { class: "muted" }, " · "),
    s.next ? link(snapHref(s.next, current, params), "later snapshot ›") : h("span", { class: "muted" }, "latest ›"));
  const head = h("div", { class: "snap-head" },
    h("div", {},
      h("h1", {}, s.source, h("span", { class: "muted" }, ` at ${when(s.time)}`)),
      h("div", { class: "muted small", "data-testid": "snapshot-id" },
        `snapshot ${s.id} · ${s.host}${s.cluster ? " · cluster " + s.cluster : ""} · `,
        `${s.summary.files} files, ${bytes(s.summary.bytes)}, ${bytes(s.summary.new_bytes)} new`)),
    nav);
  const tabs = h("nav", { class: "tabs" });
  const tab = (key, label, href) => tabs.append(h("a", { href, class: key === current ? "active" : "", "data-testid": `tab-${key}` }, label));
  tab("", "Overview", snapHref(s.id));
  if (s.kind === "manifests") {
    for (const [k, label] of CLUSTER_TABS) tab(`view/${k}`, label, snapHref(s.id, `view/${k}`));
    tab("ns", "Namespaces", snapHref(s.id, "ns"));
  }
  tab("files", "Files", snapHref(s.id, "files"));
  if (s.previous) tab("diff", "Changes since previous", `#/diff?${qs({ a: s.previous, b: s.id })}`);
  return h("div", {}, head, tabs);
}

async function viewSnapshot(id, sub, params) {
  const s = await api("snapshot", { id });
  const key = sub.join("/");
  const root = h("div", {}, snapHeader(s, key === "obj" || key === "res" ? "ns" : key, sub[0] === "view" ? params : null));
  let body;
  if (!sub.length) body = overview(s);
  else if (sub[0] === "view") body = await clusterTable(s, sub[1], params);
  else if (sub[0] === "ns") body = await namespaces(s);
  else if (sub[0] === "res") body = await resourceList(s, params);
  else if (sub[0] === "obj") body = await objectPage(s, params);
  else if (sub[0] === "files") body = await fileBrowser(s, params);
  else body = errorBox(new Error(`no such page: ${key}`));
  root.append(body);
  return root;
}

function overview(s) {
  const dl = h("dl", { class: "facts" });
  const fact = (k, v) => v !== undefined && v !== null && v !== "" && dl.append(h("dt", {}, k), h("dd", {}, v));
  fact("Source", s.source);
  fact("Kind", s.kind);
  fact("Time", `${when(s.time)} (${ago(s.time)})`);
  fact("Host", s.host);
  fact("Cluster", s.cluster);
  fact("Parent", s.parent ? link(snapHref(s.parent), short(s.parent)) : "none (full backup)");
  fact("Files", `${s.summary.files} (${s.summary.files_read} read, the rest unchanged)`);
  fact("Size", `${bytes(s.summary.bytes)} (${bytes(s.summary.new_bytes)} new in the repository)`);
  fact("Took", `${(s.summary.duration_ms / 1000).toFixed(1)} s`);
  fact("Status", s.partial ? h("span", { class: "tag warn" }, "partial") : h("span", { class: "tag ok" }, "complete"));
  fact("Tags", Object.entries(s.tags || {}).map(([k, v]) => `${k}=${v}`).join(", "));
  const root = h("div", {}, dl);
  if (s.failures && s.failures.length) {
    root.append(h("h2", {}, "What could not be read"),
      h("table", { class: "grid" }, s.failures.map((f) => h("tr", {}, h("td", { class: "mono" }, f.path), h("td", {}, f.error)))));
  }
  if (s.meta) {
    if (s.kind === "manifests" && s.meta.manifests) {
      const m = s.meta.manifests;
      const sv = m.serverVersion || {};
      dl.append(h("dt", {}, "Kubernetes"), h("dd", {}, sv.gitVersion || ""),
        h("dt", {}, "Objects"), h("dd", {}, `${m.objects} in ${m.resources} resources`));
    }
    root.append(h("details", {}, h("summary", {}, "Everything recorded about this snapshot"),
      h("pre", { class: "yaml" }, JSON.stringify(s.meta, null, 2))));
  }
  return root;
}

const COLUMNS = {
  nodes: [["ready", "Ready"], ["problems", "Conditions"], ["roles", "Roles"], ["cpu", "CPU"], ["memory", "Memory"], ["pods", "Pods"], ["kubelet", "Kubelet"]],
  deployments: [["replicas", "Ready / desired"], ["updated", "Up to date"], ["available", "Available"], ["images", "Images"]],
  statefulsets: [["replicas", "Ready / desired"], ["current", "Current"], ["updated", "Updated"], ["images", "Images"]],
  daemonsets: [["replicas", "Ready / desired"], ["available", "Available"], ["misscheduled", "Misscheduled"], ["images", "Images"]],
  pods: [["phase", "Phase"], ["ready", "Ready"], ["restarts", "Restarts"], ["reason", "Reason"], ["node", "Node"]],
  pvcs: [["phase", "Phase"], ["capacity", "Capacity"], ["requested", "Requested"], ["storageClass", "Class"], ["volume", "Volume"]],
};

function cell(row, key) {
  if (key === "replicas") return h("span", { "data-testid": "replicas" }, `${row.ready} / ${row.desired}`);
  const v = row[key];
  if (Array.isArray(v)) return v.join(", ");
  if (v === null || v === undefined) return "";
  return String(v);
}

async function clusterTable(s, view, params) {
  const offset = Number(params.offset || 0), limit = 100;
  const data = await api("cluster", { snap: s.id, view, ns: params.ns, q: params.q, offset, limit });
  const go = (p) => { location.hash = snapHref(s.id, `view/${view}`, { ...params, ...p }); };
  const filter = h("input", { type: "search", placeholder: "filter by name", value: params.q || "", "data-testid": "filter" });
  filter.addEventListener("change", () => go({ q: filter.value, offset: 0 }));
  const root = h("div", {}, h("div", { class: "toolbar" }, filter,
    params.ns ? h("span", { class: "tag" }, `namespace ${params.ns} `, link(snapHref(s.id, `view/${view}`), "×")) : null));
  const cols = COLUMNS[view] || [];
  const namespaced = view !== "nodes";
  const table = h("table", { class: "grid", "data-testid": `table-${view}` },
    h("tr", {}, h("th", {}, ""), namespaced ? h("th", {}, "Namespace") : null, h("th", {}, "Name"),
      data.locked ? null : cols.map(([, label]) => h("th", {}, label)), h("th", {}, "Created")));
  for (const r of data.rows) {
    table.append(h("tr", { "data-testid": "row", "data-name": r.name },
      h("td", {}, healthDot(r.health)),
      namespaced ? h("td", {}, link(snapHref(s.id, `view/${view}`, { ns: r.namespace }), r.namespace)) : null,
      h("td", {}, link(snapHref(s.id, "obj", { path: r.path }), r.name)),
      data.locked ? null : cols.map(([k]) => h("td", {}, cell(r, k))),
      h("td", { class: "small muted" }, when(r.created))));
  }
  if (!data.rows.length) root.append(h("p", { class: "muted" }, `No ${view} in this snapshot${params.q ? " match the filter" : ""}.`));
  else root.append(table);
  root.append(pager(data.total, offset, limit, (o) => go({ offset: o })));
  return root;
}

async function namespaces(s) {
  const data = await api("ls", { snap: s.id, path: "namespaces", limit: 2000 });
  const root = h("div", {}, h("p", {}, link(snapHref(s.id, "res", { ns: "" }), "Cluster-scoped resources")));
  const ul = h("ul", { class: "columns", "data-testid": "namespaces" });
  for (const e of data.entries) ul.append(h("li", {}, link(snapHref(s.id, "res", { ns: e.name }), e.name)));
  root.append(h("h2", {}, `${data.total} namespaces`), ul);
  return root;
}

async function resourceList(s, params) {
  const data = await api("resources", { snap: s.id, ns: params.ns || "" });
  const root = h("div", {}, h("h2", {}, params.ns ? `Namespace ${params.ns}` : "Cluster-scoped"));
  const table = h("table", { class: "grid" }, h("tr", {}, h("th", {}, "Group"), h("th", {}, "Resource"), h("th", {}, "Objects")));
  for (const r of data.resources) {
    table.append(h("tr", {}, h("td", { class: "muted" }, r.group),
      h("td", {}, link(snapHref(s.id, "files", { path: r.path }), r.resource)), h("td", { class: "num" }, r.count)));
  }
  root.append(table);
  return root;
}

async function objectPage(s, params) {
  const path = params.path;
  const [nb, yaml] = await Promise.all([
    api("neighbors", { snap: s.id, path }),
    INFO.canReadData ? text("file", { snap: s.id, path, reveal: params.reveal }).catch((e) => e) : Promise.resolve(null),
  ]);
  const side = (n, label) => {
    if (!n) return h("span", { class: "muted" }, `no ${label} snapshot`);
    const what = !n.exists ? "absent" : n.same ? "unchanged" : "different";
    return h("span", {}, n.exists ? link(snapHref(n.id, "obj", { path }), `${label === "earlier" ? "‹ " : ""}${label}: ${when(n.time)}${label === "later" ? " ›" : ""}`)
      : `${label}: ${when(n.time)}`, h("span", { class: `tag ${what === "different" ? "warn" : ""}` }, what),
      n.exists && !n.same ? h("span", {}, " ", link(`#/diff?${qs(label === "earlier" ? { a: n.id, b: s.id, path } : { a: s.id, b: n.id, path })}`, "diff")) : null);
  };
  const root = h("div", {},
    h("h2", { class: "mono" }, path),
    h("div", { class: "toolbar", "data-testid": "neighbors" }, side(nb.previous, "earlier"), h("span", { class: "muted" }, " · "), side(nb.next, "later")));
  if (yaml === null) root.append(h("p", { class: "muted" }, "The object's YAML is encrypted: it needs the identity."));
  else if (yaml instanceof Error) root.append(errorBox(yaml));
  else {
    if (/\/core\/secrets\//.test(path) && !params.reveal) {
      root.append(h("p", { class: "small" }, "Secret values are hidden. ", link(snapHref(s.id, "obj", { path, reveal: 1 }), "Reveal them")));
    }
    root.append(h("pre", { class: "yaml", "data-testid": "yaml" }, yaml),
      h("a", { href: `/api/file?${qs({ snap: s.id, path, download: "true" })}`, class: "button", download: "" }, "Download"));
  }
  return root;
}

async function fileBrowser(s, params) {
  const path = (params.path || "").replace(/^\/+/, "");
  const offset = Number(params.offset || 0), limit = 200;
  const data = await api("ls", { snap: s.id, path, offset, limit, q: params.q });
  const go = (p) => { location.hash = snapHref(s.id, "files", { ...params, ...p }); };
  const crumbs = h("div", { class: "crumbs", "data-testid": "crumbs" }, link(snapHref(s.id, "files"), "/"));
  let acc = "";
  for (const part of path.split("/").filter(Boolean)) {
    acc = acc ? `${acc}/${part}` : part;
    crumbs.append(link(snapHref(s.id, "files", { path: acc }), part), "/");
  }
  const filter = h("input", { type: "search", placeholder: "filter by name", value: params.q || "" });
  filter.addEventListener("change", () => go({ q: filter.value, offset: 0 }));
  const tarHref = `/api/tar?${qs({ snap: s.id, path })}`;
  const root = h("div", {}, crumbs, h("div", { class: "toolbar" }, filter,
    INFO.canReadData ? h("a", { href: tarHref, class: "button", download: "", "data-testid": "download-tar" }, "Download this folder (tar)") : null));
  const table = h("table", { class: "grid", "data-testid": "files" },
    h("tr", {}, ["Name", "Size", "Modified", "Mode", "Owner", ""].map((c) => h("th", {}, c))));
  for (const e of data.entries) {
    const p = path ? `${path}/${e.name}` : e.name;
    const nameCell = e.kind === "dir" ? link(snapHref(s.id, "files", { path: p }), `${e.name}/`)
      : e.kind === "symlink" ? h("span", {}, e.name, h("span", { class: "muted" }, ` → ${e.target}`))
      : /\.ya?ml$/.test(e.name) && s.kind === "manifests" ? link(snapHref(s.id, "obj", { path: p }), e.name)
      : e.name;
    const dl = e.kind === "file" && INFO.canReadData
      ? h("a", { href: `/api/file?${qs({ snap: s.id, path: p, download: "true" })}`, download: e.name, "data-testid": "download" }, "download") : null;
    table.append(h("tr", { "data-testid": "file-row", "data-name": e.name },
      h("td", { class: "mono" }, nameCell),
      h("td", { class: "num" }, e.kind === "file" ? bytes(e.size) : e.kind === "dir" ? "" : e.kind),
      h("td", { class: "small" }, when(e.mtime)),
      h("td", { class: "mono small" }, e.mode),
      h("td", { class: "small" }, `${e.uid}:${e.gid}`),
      h("td", {}, dl)));
  }
  root.append(table, pager(data.total, offset, limit, (o) => go({ offset: o })));
  return root;
}

// ---------------------------------------------------------------- diff
async function viewDiff(params) {
  const list = await snapshots();
  const b = params.b, a = params.a;
  const data = await api("diff", { a, b, ns: params.ns, status: params.status, all: params.all });
  const { a: A, b: B } = data.ends;
  const same = list.filter((s) => s.source === A.source && s.cluster === A.cluster);
  const pick = (name, value) => {
    const sel = h("select", { "data-testid": `pick-${name}` }, same.map((s) => h("option", { value: s.id, selected: s.id === value }, `${when(s.time)} (${short(s.id)})`)));
    sel.addEventListener("change", () => { location.hash = `#/diff?${qs({ ...params, [name]: sel.value })}`; });
    return sel;
  };
  const toggle = (key, label) => {
    const box = h("input", { type: "checkbox", checked: params[key] === "true" });
    box.addEventListener("change", () => { location.hash = `#/diff?${qs({ ...params, [key]: box.checked ? "true" : "" })}`; });
    return h("label", {}, box, ` ${label}`);
  };
  const root = h("div", {}, h("h1", {}, `Changes in ${A.source}`),
    h("div", { class: "toolbar" }, "from ", pick("a", A.id), " to ", pick("b", B.id),
      data.mode === "objects" ? [toggle("status", "compare status"), toggle("all", "include objects the cluster manages")] : null));
  if (data.note) root.append(h("p", { class: "banner" }, data.note));
  let changes = data.changes;
  if (params.path) {
    changes = changes.filter((c) => c.path.replace(/^\/+/, "") === params.path);
    root.append(h("p", {}, `Only ${params.path} · `, link(`#/diff?${qs({ ...params, path: "" })}`, "show all")));
  }
  root.append(h("p", { class: "muted", "data-testid": "diff-count" }, `${changes.length} changes${data.truncated ? " (cut: too many to show)" : ""}`));
  const ul = h("div", { class: "diff", "data-testid": "diff" });
  for (const c of changes) {
    const path = c.path.replace(/^\/+/, "");
    const target = c.change === "removed" ? A.id : B.id;
    const head = h("div", { class: `change ${c.change}` }, h("span", { class: "sign" }, { added: "+", removed: "−", changed: "~" }[c.change]),
      " ", A.kind === "manifests" ? link(snapHref(target, "obj", { path }), c.object || path) : h("span", { class: "mono" }, path));
    const item = h("div", { class: "diff-item", "data-testid": "diff-item" }, head);
    if (c.fields && c.fields.length) {
      item.append(h("table", { class: "fields" }, c.fields.map((f) => h("tr", {},
        h("td", { class: "mono" }, f.field),
        h("td", { class: "old mono" }, f.old === undefined ? (f.change === "added" ? "" : "(hidden)") : f.old),
        h("td", {}, "→"),
        h("td", { class: "new mono" }, f.new === undefined ? (f.change === "removed" ? "" : "(hidden)") : f.new)))));
    }
    ul.append(item);
  }
  root.append(ul);
  return root;
}

// ---------------------------------------------------------------- shell
async function render() {
  const { parts, params } = route();
  const el = main();
  try {
    let view;
    if (!parts.length) view = await viewTimeline(params);
    else if (parts[0] === "s" && parts[1]) view = await viewSnapshot(parts[1], parts.slice(2), params);
    else if (parts[0] === "diff") view = await viewDiff(params);
    else view = errorBox(new Error("no such page"));
    el.replaceChildren(view);
  } catch (e) {
    el.replaceChildren(errorBox(e));
  }
  document.body.dataset.ready = location.hash;
}

async function start() {
  try {
    INFO = await api("info");
  } catch (e) {
    main().replaceChildren(errorBox(e));
    return;
  }
  document.getElementById("repo").textContent = INFO.repo;
  const badge = document.getElementById("access");
  badge.textContent = INFO.canReadData ? "identity: contents visible" : "metadata only";
  badge.classList.add(INFO.canReadData ? "ok" : "warn");
  const banner = document.getElementById("banner");
  if (INFO.locked) { banner.hidden = false; banner.textContent = INFO.locked; }
  if (INFO.unreadable && INFO.unreadable.length) {
    banner.hidden = false;
    banner.textContent = (banner.textContent ? banner.textContent + " " : "") + `${INFO.unreadable.length} snapshot records could not be opened: ${INFO.unreadable.join("; ")}`;
  }
  window.addEventListener("hashchange", render);
  render();
}

start();
