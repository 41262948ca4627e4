// The client side of tests/e2e/restart.sh: connection load and long transfers through the proxy,
// run in a pod's network namespace with Node.js (an independent TCP stack user, not dsproxy code).
// Talks to dsproxy_test_echo, which answers every line X with "hello X".
//
//   node restart_client.mjs load TARGETS RATE COUNT MAX_SECONDS
//     TARGETS "10.96.104.229:9000,[fd00:10:96::9c3a]:9000": round robin. Opens RATE connections a
//     second (each: connect, one line, its answer, close) until COUNT were opened or MAX_SECONDS
//     passed; prints one JSON line: opened, ok, failed, the first errors, the slowest connection
//     and how many took over 1 s (a SYN dropped and retried, i.e. a stall).
//   node restart_client.mjs bulk TARGETS N BYTES SECONDS
//     N transfers at once, each sending BYTES of lines paced over SECONDS and reading every
//     answer; SHA-256 of what came back against what must come back. Prints one JSON line:
//     intact, damaged, and per transfer how it ended ("intact", "reset", "eof after K bytes", ...).
//
// Bounded: every connection has a deadline of its own, and the whole run MAX_SECONDS (load) or
// SECONDS + 30 (bulk).

import net from 'node:net';
import crypto from 'node:crypto';

function parseTargets(text) {
  return text.split(',').map((t) => {
    const m = t.match(/^\[(.*)\]:(\d+)$/) || t.match(/^([^:]*):(\d+)$/);
    if (!m) throw new Error(`bad target ${t}`);
    return { host: m[1], port: Number(m[2]) };
  });
}

function oneConnection(target, id, deadlineMs) {
  return new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const expected = `hello ping ${id}\n`;
    let got = '';
    let settled = false;
    const socket = net.connect({ host: target.host, port: target.port });
    const finish = (error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ error, ms: Number(process.hrtime.bigint() - started) / 1e6 });
    };
    const timer = setTimeout(() => finish('timeout'), deadlineMs);
    socket.setNoDelay(true);
    socket.on('connect', () => socket.write(`ping ${id}\n`));
    socket.on('data', (d) => {
      got += d.toString();
      if (got.length >= expected.length) finish(got === expected ? null : `bad answer ${JSON.stringify(got)}`);
    });
    socket.on('error', (e) => finish(e.code || e.message));
    socket.on('end', () => finish(got === expected ? null : `eof after ${JSON.stringify(got)}`));
  });
}

async function load(targets, rate, count, maxSeconds) {
  const start = Date.now();
  const result = { opened: 0, ok: 0, failed: 0, errors: {}, slowest_ms: 0, over_1s: 0, seconds: 0 };
  const pending = new Set();
  const interval = 1000 / rate;
  let next = Date.now();
  while (result.opened < count && Date.now() - start < maxSeconds * 1000) {
    const id = result.opened++;
    const p = oneConnection(targets[id % targets.length], id, 5000).then((r) => {
      pending.delete(p);
      if (r.error) {
        result.failed++;
        result.errors[r.error] = (result.errors[r.error] || 0) + 1;
      } else result.ok++;
      result.slowest_ms = Math.max(result.slowest_ms, Math.round(r.ms));
      if (r.ms > 1000) result.over_1s++;
    });
    pending.add(p);
    next += interval;
    const wait = next - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  await Promise.all([...pending]);
  result.seconds = (Date.now() - start) / 1000;
  return result;
}

function transfer(target, index, bytes, seconds) {
  return new Promise((resolve) => {
    // Lines of 100 bytes; the answer to each is "hello " + line.
    const lineCount = Math.max(1, Math.floor(bytes / 100));
    const line = (i) => `t${index} line ${String(i).padStart(10, '0')} ${'x'.repeat(100 - 30)}\n`;
    const want = crypto.createHash('sha256');
    let wantBytes = 0;
    for (let i = 0; i < lineCount; i++) {
      const l = 'hello ' + line(i);
      want.update(l);
      wantBytes += l.length;
    }
    const wantDigest = want.digest('hex');
    const got = crypto.createHash('sha256');
    let gotBytes = 0;
    let settled = false;
    let sent = 0;
    const socket = net.connect({ host: target.host, port: target.port });
    const finish = (how) => {
      if (settled) return;
      settled = true;
      clearInterval(pacer);
      clearTimeout(timer);
      socket.destroy();
      resolve(how);
    };
    const timer = setTimeout(() => finish(`timeout after ${gotBytes} of ${wantBytes} bytes`), (seconds + 30) * 1000);
    // Paced: about 50 writes a second, so the transfer spans SECONDS.
    const perTick = Math.max(1, Math.ceil(lineCount / (seconds * 50)));
    let pacer = null;
    socket.on('connect', () => {
      pacer = setInterval(() => {
        let chunk = '';
        for (let k = 0; k < perTick && sent < lineCount; k++) chunk += line(sent++);
        if (chunk) socket.write(chunk);
        if (sent >= lineCount) {
          clearInterval(pacer);
          socket.end();
        }
      }, 20);
    });
    socket.on('data', (d) => {
      got.update(d);
      gotBytes += d.length;
    });
    socket.on('error', (e) =>
      finish(e.code === 'ECONNRESET' ? `reset after ${gotBytes} of ${wantBytes} bytes` : `${e.code || e.message} after ${gotBytes} bytes`));
    socket.on('end', () => {
      if (gotBytes === wantBytes && got.digest('hex') === wantDigest) finish('intact');
      else finish(`eof after ${gotBytes} of ${wantBytes} bytes`);
    });
  });
}

async function bulk(targets, n, bytes, seconds) {
  const runs = [];
  for (let i = 0; i < n; i++) runs.push(transfer(targets[i % targets.length], i, bytes, seconds));
  const outcomes = await Promise.all(runs);
  return {
    intact: outcomes.filter((o) => o === 'intact').length,
    damaged: outcomes.filter((o) => o !== 'intact').length,
    outcomes,
  };
}

const [mode, targetsText, a, b, c] = process.argv.slice(2);
const targets = parseTargets(targetsText || '');
let out;
if (mode === 'load') out = await load(targets, Number(a), Number(b), Number(c));
else if (mode === 'bulk') out = await bulk(targets, Number(a), Number(b), Number(c));
else {
  console.error('usage: restart_client.mjs load|bulk TARGETS ...');
  process.exit(2);
}
console.log(JSON.stringify(out));
