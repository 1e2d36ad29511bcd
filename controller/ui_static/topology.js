// The wgmesh topology page: draws the view the controller streams (GET /ui/api/events, server-sent
// events: the view, then deltas to it) as SVG, nodes on a circle, links coloured by health, relayed
// routes as dashed curves through their relays, and tables of nodes, links and relayed routes. No
// library; text only via textContent.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const graph = document.getElementById("graph");
  const live = document.getElementById("live");
  const ONLINE_WITHIN_S = 75;
  let view = null;
  let skew = 0; // controller time minus browser time, seconds

  function now() {
    return Date.now() / 1000 + skew;
  }

  function age(t) {
    if (t === null || t === undefined) return "never";
    const s = Math.max(0, Math.round(now() - t));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
  }

  function positions(nodes) {
    const pos = new Map();
    const n = nodes.length;
    const r = n > 1 ? 240 : 0;
    nodes.forEach((node, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
      pos.set(node.id, { x: 320 + r * Math.cos(a), y: 320 + r * Math.sin(a) });
    });
    return pos;
  }

  function linkName(names, a, b) {
    // by name, so a page (or a test) finds the link h1-h2 whatever ids the nodes got
    return [names.get(a), names.get(b)].sort().join("-");
  }

  function rtt(link) {
    return link.rtt_ms === null ? "-" : link.rtt_ms.toFixed(1) + " ms";
  }

  function loss(link) {
    return link.loss === null ? "-" : Math.round(link.loss * 100) + "%";
  }

  function draw(v) {
    // by name, h2 before h10: a person looks for hosts in that order
    v.nodes.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    const names = new Map(v.nodes.map((n) => [n.id, n.name]));
    const pos = positions(v.nodes);
    graph.replaceChildren();
    const links = el("g", { class: "links" });
    for (const l of v.links) {
      const p = pos.get(l.a), q = pos.get(l.b);
      if (!p || !q) continue;
      const line = el("line", {
        x1: p.x, y1: p.y, x2: q.x, y2: q.y,
        class: "link " + l.health + (l.carries_routes ? " used" : ""),
        "data-link": linkName(names, l.a, l.b),
        "data-health": l.health,
      });
      const what = l.up ? rtt(l) + ", loss " + loss(l) : "down for " + age(l.down_since);
      line.appendChild(el("title", {}, linkName(names, l.a, l.b) + ": " + what));
      links.appendChild(line);
      if (l.up && l.rtt_ms !== null) {
        links.appendChild(el("text", { x: (p.x + q.x) / 2, y: (p.y + q.y) / 2 - 4, class: "rtt" }, rtt(l)));
      }
    }
    graph.appendChild(links);
    const relays = el("g", { class: "relays" });
    v.relayed.forEach((route, i) => {
      const pts = route.path.map((id) => pos.get(id)).filter(Boolean);
      if (pts.length < 2) return;
      let d = "M" + pts[0].x + "," + pts[0].y;
      for (let k = 1; k < pts.length; k++) {
        const a = pts[k - 1], b = pts[k];
        // bow each hop outwards a little so the route is seen beside the links it follows
        const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
        const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
        const bow = 18 + 6 * (i % 4);
        d += " Q" + (mx - (dy / len) * bow) + "," + (my + (dx / len) * bow) + " " + b.x + "," + b.y;
      }
      const path = el("path", {
        d: d,
        class: "relay",
        "data-route": linkName(names, route.source, route.destination),
      });
      path.appendChild(el("title", {}, route.text));
      relays.appendChild(path);
    });
    graph.appendChild(relays);
    const nodes = el("g", { class: "nodes" });
    for (const n of v.nodes) {
      const p = pos.get(n.id);
      const online = n.last_seen !== null && now() - n.last_seen <= ONLINE_WITHIN_S;
      const g = el("g", {
        class: "node" + (n.relays ? " relays" : "") + (online ? "" : " offline"),
        "data-node": n.name,
        transform: "translate(" + p.x + "," + p.y + ")",
      });
      g.appendChild(el("circle", { r: 36 }));
      g.appendChild(el("text", { y: -2, class: "name" }, n.name));
      g.appendChild(el("text", { y: 12, class: "sub" }, n.address));
      g.appendChild(el("text", { y: 52, class: "sub" }, "key " + age(n.key_created_at)));
      g.appendChild(el("title", {}, n.name + " " + n.address + (n.relays ? ", relays" : "")));
      nodes.appendChild(g);
    }
    graph.appendChild(nodes);
    tables(v, names);
  }

  function tables(v, names) {
    const relayed = document.getElementById("relayed");
    relayed.replaceChildren();
    for (const route of v.relayed) {
      const li = document.createElement("li");
      li.textContent = route.text;
      li.dataset.route = linkName(names, route.source, route.destination);
      relayed.appendChild(li);
    }
    if (v.relayed_total > v.relayed.length) {
      const li = document.createElement("li");
      li.textContent = "… and " + (v.relayed_total - v.relayed.length) + " more";
      relayed.appendChild(li);
    }
    if (!v.relayed_total) {
      const li = document.createElement("li");
      li.textContent = "none: every pair is direct";
      li.className = "none";
      relayed.appendChild(li);
    }
    const nodes = document.querySelector("#nodes tbody");
    nodes.replaceChildren();
    for (const n of v.nodes) {
      const tr = document.createElement("tr");
      cell(tr, n.name + (n.relays ? " (relays)" : ""));
      cell(tr, n.address);
      cell(tr, age(n.key_created_at) + (n.rotation !== "idle" ? ", " + n.rotation : ""));
      cell(tr, n.last_seen === null ? "never" : age(n.last_seen) + " ago");
      nodes.appendChild(tr);
    }
    const links = document.querySelector("#links tbody");
    links.replaceChildren();
    for (const l of v.links) {
      const tr = document.createElement("tr");
      tr.dataset.link = linkName(names, l.a, l.b);
      cell(tr, linkName(names, l.a, l.b));
      cell(tr, l.health, "health " + l.health);
      cell(tr, rtt(l) + (l.earlier ? " (before it was routed around)" : ""));
      cell(tr, loss(l));
      links.appendChild(tr);
    }
  }

  function status(text, cls) {
    live.textContent = text;
    live.className = cls;
  }

  function merged(v, d) {
    // a delta: the nodes and links new or changed (by id, by a-b), those gone, the relayed routes whole
    const nodes = new Map(v.nodes.map((n) => [n.id, n]));
    for (const id of d.nodes_gone) nodes.delete(id);
    for (const n of d.nodes) nodes.set(n.id, n);
    const links = new Map(v.links.map((l) => [l.a + "-" + l.b, l]));
    for (const [a, b] of d.links_gone) links.delete(a + "-" + b);
    for (const l of d.links) links.set(l.a + "-" + l.b, l);
    return {
      now: d.now,
      version: d.version,
      nodes: Array.from(nodes.values()),
      links: Array.from(links.values()).sort((x, y) => x.a - y.a || x.b - y.b),
      relayed: d.relayed,
      relayed_total: d.relayed_total,
    };
  }

  function show(v) {
    skew = v.now - Date.now() / 1000;
    view = v;
    draw(v);
    status("live · mesh version " + v.version, "live");
  }

  function connect() {
    const events = new EventSource("/ui/api/events");
    events.addEventListener("view", (e) => show(JSON.parse(e.data)));
    events.addEventListener("delta", (e) => {
      // a stream sends a delta only after the view it applies to
      if (view) show(merged(view, JSON.parse(e.data)));
    });
    events.addEventListener("expired", () => {
      events.close();
      status("session expired: reload to log in", "stale");
    });
    events.onerror = () => {
      status("reconnecting…", "stale");
      if (events.readyState === EventSource.CLOSED) {
        // refused (401: logged out or expired) or the controller is gone: ask which
        fetch("/ui/api/view", { credentials: "same-origin" }).then(
          (r) => (r.status === 401 ? status("logged out: reload to log in", "stale") : setTimeout(connect, 2000)),
          () => setTimeout(connect, 2000),
        );
      }
    };
  }

  setInterval(() => {
    if (view) draw(view); // ages move on between updates
  }, 1000);
  connect();
})();
