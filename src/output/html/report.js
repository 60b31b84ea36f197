// The chain diagram. Data comes from <script type="application/json">, read
// with JSON.parse and written with textContent only: no markup is built from
// strings of the traced system.
(function () {
  'use strict';
  var root = document.documentElement;
  var data = JSON.parse(document.getElementById('nd-data').textContent);
  var select = document.getElementById('nd-chain-select');
  var view = document.getElementById('nd-chain-view');
  var IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // A kernel function: a plain link to its source at elixir.bootlin.com.
  function kfn(frame) {
    var name = frame[0], ident = frame[1];
    if (typeof ident === 'string' && IDENT.test(ident)) {
      var a = el('a', 'kfn', name);
      a.setAttribute('href', data.elixir + '/C/ident/' + ident);
      a.setAttribute('rel', 'noreferrer');
      a.setAttribute('title', ident + ' in Linux ' + data.elixir_version);
      return a;
    }
    return el('span', 'kfn unknown', name);
  }

  function node(n, openStack) {
    var d = el('div', 'node ' + n.kind);
    d.appendChild(el('div', 'node-title', n.title));
    (n.lines || []).forEach(function (l) {
      d.appendChild(el('div', 'node-line', l));
    });
    if (typeof n.stack === 'number' && data.stacks[n.stack]) {
      var frames = data.stacks[n.stack];
      var det = el('details', 'stack');
      det.open = !!openStack;
      det.appendChild(el('summary', null, "waker's kernel stack, innermost first (" + frames.length + ' frames)'));
      var ol = el('ol');
      frames.forEach(function (f) {
        var li = el('li');
        li.appendChild(kfn(f));
        ol.appendChild(li);
      });
      det.appendChild(ol);
      d.appendChild(det);
    }
    return d;
  }

  function edge(label) {
    var e = el('div', 'edge');
    e.appendChild(el('span', 'arrow', '\u2192'));
    if (label) e.appendChild(el('span', 'edge-label', label));
    return e;
  }

  function render(i) {
    view.textContent = '';
    var c = data.chains[i];
    if (!c) {
      view.appendChild(el('p', 'empty', 'No chains in this trace.'));
      return;
    }
    var box = el('div', 'chain');
    box.setAttribute('data-chain', String(c.id));
    box.appendChild(el('h3', 'chain-title', c.label));
    var diagram = el('div', 'diagram');
    var head = el('div', 'head');
    (c.head || []).forEach(function (n, k) {
      if (k > 0) head.appendChild(edge(n.edge));
      head.appendChild(node(n));
    });
    if (head.childNodes.length) diagram.appendChild(head);
    var hops = el('div', 'hops');
    c.hops.forEach(function (h, hi) {
      var row = el('div', 'hop' + (h.wasted ? ' wasted' : ''));
      h.steps.forEach(function (n, k) {
        if (k > 0 || head.childNodes.length) row.appendChild(edge(n.edge));
        row.appendChild(node(n, hi === 0));
      });
      hops.appendChild(row);
    });
    diagram.appendChild(hops);
    box.appendChild(diagram);
    (c.notes || []).forEach(function (t) {
      box.appendChild(el('p', 'chain-note', t));
    });
    view.appendChild(box);
  }

  function indexOfId(id) {
    for (var i = 0; i < data.chains.length; i++) if (data.chains[i].id === id) return i;
    return -1;
  }

  function fromHash() {
    var m = /^#chain=(\d+)$/.exec(window.location.hash);
    if (!m) return -1;
    return indexOfId(parseInt(m[1], 10));
  }

  data.chains.forEach(function (c, i) {
    var o = el('option', null, c.label);
    o.value = String(i);
    select.appendChild(o);
  });
  var first = fromHash();
  if (first < 0) first = data.default_index;
  if (data.chains.length) {
    select.value = String(first);
    render(first);
  } else {
    render(-1);
  }
  select.addEventListener('change', function () {
    render(parseInt(select.value, 10));
  });
  window.addEventListener('hashchange', function () {
    var i = fromHash();
    if (i >= 0) {
      select.value = String(i);
      render(i);
      view.scrollIntoView();
    }
  });
  root.setAttribute('data-nd-ready', '1');
})();
