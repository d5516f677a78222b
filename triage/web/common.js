"use strict";
// Shared by the worklist and the live-performance page (served at /ui/common.js).

/** A DOM element: el("td", {class: "x", "data-k": "v"}, "text", childNode, …). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c));
  return node;
}
