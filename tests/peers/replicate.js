#!/usr/bin/env node
// Replicate a remote CouchDB database into an in-memory PouchDB with
// PouchDB's default settings, then print one JSON object on stdout:
//   {"seconds": ..., "docs_written": ..., "docs": {id: {...}}}
// where each document entry holds the winning rev, its deleted flag and the
// sorted conflicting leaves. With --no-dump the "docs" map is left out
// (the benchmark only needs the timing).
//
// Usage: node replicate.js URL [--no-dump]
'use strict';

const PouchDB = require('pouchdb');
PouchDB.plugin(require('pouchdb-adapter-memory'));

async function dump(db) {
  const docs = {};
  const changes = await db.changes({
    style: 'all_docs',
    include_docs: true,
    conflicts: true,
  });
  for (const row of changes.results) {
    docs[row.id] = {
      winner: row.doc._rev,
      deleted: Boolean(row.doc._deleted),
      conflicts: (row.doc._conflicts || []).slice().sort(),
    };
  }
  return docs;
}

async function main() {
  const [url, ...flags] = process.argv.slice(2);
  if (!url) {
    console.error('usage: node replicate.js URL [--no-dump]');
    process.exit(2);
  }
  const local = new PouchDB('replica', { adapter: 'memory' });
  const started = process.hrtime.bigint();
  const result = await PouchDB.replicate(url, local);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const output = { seconds, docs_written: result.docs_written };
  if (!flags.includes('--no-dump')) {
    output.docs = await dump(local);
  }
  output.memory_rss_bytes = process.memoryUsage().rss;
  process.stdout.write(JSON.stringify(output));
}

main().catch((error) => {
  console.error(`replicate.js failed: ${error.message || error}`);
  process.exit(1);
});
