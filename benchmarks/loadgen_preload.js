// Preloaded into the reference load generator (`node --require loadgen_preload.js loadgen.js ...`)
// to extend it without touching it (it stays the same instrument for every server). It wraps
// the `ws` WebSocket class the generator loads:
//
// - BENCH_SPLIT_DRIVER_URL=ws://host:port/path: every socket whose token is a driver's (the
//   JWT's `role` claim) goes there instead of the fixture's ws_url. `make bench` uses it for
//   two processes behind one Redis: drivers on the first, viewers on the second.
// - BENCH_SUBSCRIBE_REPORT=1: the generator counts a socket as open once the WebSocket
//   upgrade completes, but this server authenticates after the upgrade. This records each
//   socket's first message (`subscribed`, `board`, or an `error` and the close code), and at
//   exit prints one more JSON line, {"mode":"subscribe",...}: how many were subscribed, how
//   many refused and why, and the subscribed rate (from the first socket's start until the
//   last one's `subscribed`) — the authenticated handshake rate.
// - BENCH_OPEN_ON_SUBSCRIBED=1: the generator sees a socket's `open` only when its first
//   message is `subscribed` (or `board`); a socket refused after the upgrade (an `error`,
//   then a close) never opens and counts as a connect failure (`closed_<code>`), and one
//   without a first message within BENCH_SUBSCRIBE_TIMEOUT_S (30) is terminated. So its
//   `--connect-concurrency` bounds the handshakes in flight up to the subscription, and its
//   `handshakes_per_s` and `handshake_ms` are those of an authenticated, subscribed socket.
'use strict';

const fs = require('fs');
const Module = require('module');
const path = require('path');

const modules = process.env.BENCH_NODE_MODULES; // benchmarks/generator.py sets it
if (!modules) throw new Error('BENCH_NODE_MODULES is not set: run the benchmark through make bench');
const RealWebSocket = require(path.join(modules, 'ws'));
const driverUrl = process.env.BENCH_SPLIT_DRIVER_URL ? new URL(process.env.BENCH_SPLIT_DRIVER_URL) : null;
const report = process.env.BENCH_SUBSCRIBE_REPORT === '1';
const gate = process.env.BENCH_OPEN_ON_SUBSCRIBED === '1';
const gateTimeoutMs = Number(process.env.BENCH_SUBSCRIBE_TIMEOUT_S || 30) * 1000;
const isSubscribed = (type) => type === 'subscribed' || type === 'board';
const typeOf = (data) => {
  try { return JSON.parse(data.toString('utf8')).type || 'other'; } catch (e) { return 'other'; }
};

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const stats = {
  started: 0, split_to_driver_url: 0, subscribed: 0, refused: 0, refusals: {}, closed_before_first_message: 0,
  first_start_ms: null, last_subscribed_ms: null, to_subscribed: [],
};

function roleOf(url) {
  try {
    const token = new URL(url).searchParams.get('token') || '';
    return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8')).role;
  } catch (e) {
    return null;
  }
}

function rewrite(address) {
  if (!driverUrl || roleOf(address) !== 'driver') return address;
  const u = new URL(address);
  u.protocol = driverUrl.protocol;
  u.host = driverUrl.host;
  u.pathname = driverUrl.pathname;
  stats.split_to_driver_url++;
  return u.toString();
}

class BenchWebSocket extends RealWebSocket {
  emit(event, ...args) {
    if (gate && !this._benchFirst) {
      if (event === 'open') {
        this._benchOpenArgs = args;
        this._benchTimer = setTimeout(() => this.terminate(), gateTimeoutMs);
        return true;
      }
      if (event === 'message') {
        this._benchFirst = true;
        clearTimeout(this._benchTimer);
        if (isSubscribed(typeOf(args[0])) && this._benchOpenArgs) super.emit('open', ...this._benchOpenArgs);
      } else if (event === 'close') clearTimeout(this._benchTimer);
    }
    return super.emit(event, ...args);
  }

  constructor(address, ...rest) {
    super(rewrite(String(address)), ...rest);
    if (!report) return;
    const start = nowMs();
    stats.started++;
    if (stats.first_start_ms === null) stats.first_start_ms = start;
    let first = null;
    this.once('message', (data) => {
      let m = null;
      try { m = JSON.parse(data.toString('utf8')); } catch (e) { /* not JSON */ }
      first = (m && m.type) || 'other';
      if (first === 'subscribed' || first === 'board') {
        const t = nowMs();
        stats.subscribed++;
        stats.to_subscribed.push(t - start);
        if (stats.last_subscribed_ms === null || t > stats.last_subscribed_ms) stats.last_subscribed_ms = t;
      } else {
        stats.refused++;
        const why = m && m.type === 'error' ? String(m.message).slice(0, 80) : first;
        stats.refusals[why] = (stats.refusals[why] || 0) + 1;
      }
    });
    this.on('close', (code) => {
      if (first === null) stats.closed_before_first_message++;
      else if (first !== 'subscribed' && first !== 'board') {
        const key = `close_${code}`;
        stats.refusals[key] = (stats.refusals[key] || 0) + 1;
      }
    });
  }
}

const load = Module._load;
Module._load = function (request, parent, isMain) {
  if (request === 'ws' || request === path.join(modules, 'ws')) return BenchWebSocket;
  return load.apply(this, arguments);
};

process.on('exit', () => {
  if (!report) return;
  const t = stats.to_subscribed.sort((a, b) => a - b);
  const pct = (q) => (t.length ? Math.round(t[Math.min(t.length - 1, Math.floor(q * t.length))] * 100) / 100 : null);
  const seconds = stats.last_subscribed_ms === null ? null : (stats.last_subscribed_ms - stats.first_start_ms) / 1000;
  const out = {
    mode: 'subscribe', started: stats.started, subscribed: stats.subscribed, refused: stats.refused,
    refusals: stats.refusals, closed_before_first_message: stats.closed_before_first_message,
    split_to_driver_url: stats.split_to_driver_url,
    seconds_to_last_subscribed: seconds === null ? null : Math.round(seconds * 1000) / 1000,
    subscribed_per_s: seconds ? Math.round((stats.subscribed / seconds) * 10) / 10 : null,
    to_subscribed_ms: { p50: pct(0.5), p99: pct(0.99), max: t.length ? Math.round(t[t.length - 1] * 100) / 100 : null },
  };
  fs.writeSync(1, JSON.stringify(out) + '\n');
});
