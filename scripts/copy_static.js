#!/usr/bin/env node
// Copy the map's browser files from node_modules into app/static/vendor, where Streamlit serves
// them (server.enableStaticServing): the map then loads no script or style sheet from a CDN.
// Runs as npm's postinstall (`npm ci`); run it again with `node scripts/copy_static.js`.
"use strict";

const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const modules = path.join(root, "node_modules");
const target = path.join(root, "app", "static", "vendor");

// [source under node_modules, destination under app/static/vendor]
const copies = [
  ["leaflet/dist/leaflet.js", "leaflet/leaflet.js"],
  ["leaflet/dist/leaflet.css", "leaflet/leaflet.css"],
  ["leaflet/dist/images", "leaflet/images"],
  ["leaflet-draw/dist/leaflet.draw.js", "leaflet-draw/leaflet.draw.js"],
  ["leaflet-draw/dist/leaflet.draw.css", "leaflet-draw/leaflet.draw.css"],
  ["leaflet-draw/dist/images", "leaflet-draw/images"],
  ["jquery/dist/jquery.min.js", "jquery/jquery.min.js"],
  ["bootstrap/dist/js/bootstrap.bundle.min.js", "bootstrap/js/bootstrap.bundle.min.js"],
  ["bootstrap/dist/css/bootstrap.min.css", "bootstrap/css/bootstrap.min.css"],
];

for (const [from, to] of copies) {
  const source = path.join(modules, from);
  if (!fs.existsSync(source)) {
    console.error(`copy_static: ${source} is missing; run \`npm ci\` first.`);
    process.exit(1);
  }
  const destination = path.join(target, to);
  fs.mkdirSync(path.dirname(destination), { recursive: true });
  fs.cpSync(source, destination, { recursive: true });
}
console.log(`copy_static: ${copies.length} entries copied to ${path.relative(root, target)}`);
