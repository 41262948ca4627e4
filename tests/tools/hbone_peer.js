#!/usr/bin/env node
// An independent HBONE peer on Node.js's own HTTP/2 and TLS stacks (no nghttp2 of ours, no
// dsproxy code), to check that dsproxy's tunnel speaks the protocol as another implementation
// reads it. Written from ztunnel's behaviour: TLS 1.3 with client certificates, ALPN h2,
// CONNECT with :authority "<ip>:<port>" (IPv6 in brackets), 200 then bytes, 400/401/503.
//
//   server --cert C --key K --ca CA
//       Listens on 127.0.0.1:0 and prints "PORT <n>". Answers 400 to any non-CONNECT request
//       or an authority that is not "<ip>:<port>", 401 to port 2, else connects to the
//       authority (503 when that fails), answers 200 and relays both ways with half-close.
//       Prints "REQUEST <json of method, authority, forwarded, baggage, peer URI SAN>" per request.
//   client --cert C --key K --ca CA --connect HOST:PORT --authority A [--method M] [--bytes N]
//          [--forwarded 'for="IP:PORT"']   (default for="10.9.8.7:1234")
//       Sends one request; on 200 sends N pseudo-random bytes, half-closes, reads to the end.
//       Prints "RESULT <json of status, sent, received, sha256 of sent and received>".
'use strict';
const http2 = require('http2');
const net = require('net');
const fs = require('fs');
const crypto = require('crypto');

function args() {
  const out = { mode: process.argv[2] };
  for (let i = 3; i < process.argv.length; i += 2) out[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
  return out;
}
const a = args();
const tlsOptions = {
  cert: fs.readFileSync(a.cert), key: fs.readFileSync(a.key), ca: fs.readFileSync(a.ca),
  minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3',
};
// Same windows as ztunnel (4 MiB per stream); Node sizes its connection window from these.
const settings = { initialWindowSize: 4 * 1024 * 1024, maxConcurrentStreams: 100 };

function uriSan(cert) {
  const m = /URI:([^,\s]+)/.exec((cert && cert.subjectaltname) || '');
  return m ? m[1] : '';
}

function parseAuthority(s) {
  let m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(s || '');
  if (m && net.isIPv6(m[1])) return { host: m[1], port: +m[2] };
  m = /^(\d+\.\d+\.\d+\.\d+):(\d{1,5})$/.exec(s || '');
  if (m && net.isIPv4(m[1])) return { host: m[1], port: +m[2] };
  return null;
}

function server() {
  const srv = http2.createSecureServer({ ...tlsOptions, requestCert: true, rejectUnauthorized: true, settings });
  srv.on('stream', (stream, headers) => {
    const method = headers[':method'];
    const authority = headers[':authority'];
    const peer = uriSan(stream.session.socket.getPeerCertificate());
    console.log('REQUEST ' + JSON.stringify({ method, authority, forwarded: headers['forwarded'] || '',
      baggage: headers['baggage'] || '', peer }));
    stream.on('error', () => {});
    const target = method === 'CONNECT' ? parseAuthority(authority) : null;
    if (!target || target.port === 0) {
      stream.respond({ ':status': 400 }, { endStream: true });
      return;
    }
    if (target.port === 2) {
      stream.respond({ ':status': 401 }, { endStream: true });
      return;
    }
    const upstream = net.connect(target.port, target.host);
    let connected = false;
    upstream.on('connect', () => {
      connected = true;
      stream.respond({ ':status': 200 });
      stream.pipe(upstream);
      upstream.pipe(stream);
    });
    upstream.on('error', () => {
      if (!connected) stream.respond({ ':status': 503 }, { endStream: true });
      else stream.close(http2.constants.NGHTTP2_CANCEL);
    });
    stream.on('aborted', () => upstream.destroy());
  });
  srv.on('sessionError', () => {});
  srv.listen(0, '127.0.0.1', () => console.log('PORT ' + srv.address().port));
}

function client() {
  const [host, port] = [a.connect.slice(0, a.connect.lastIndexOf(':')), a.connect.slice(a.connect.lastIndexOf(':') + 1)];
  const session = http2.connect(`https://${host}:${port}`, {
    ...tlsOptions, settings,
    // SPIFFE certificates carry a URI SAN and no DNS name; the chain is still verified against
    // the CA, and the identity is checked below.
    checkServerIdentity: () => undefined,
  });
  const result = { status: 0, sent: 0, received: 0, sentSha: '', receivedSha: '', peer: '' };
  const done = (code) => {
    console.log('RESULT ' + JSON.stringify(result));
    session.close();
    process.exit(code);
  };
  session.on('error', (e) => { result.error = String(e); done(1); });
  session.on('connect', () => { result.peer = uriSan(session.socket.getPeerCertificate()); });
  const method = a.method || 'CONNECT';
  const headers = method === 'CONNECT'
    ? { ':method': 'CONNECT', ':authority': a.authority, forwarded: a.forwarded || 'for="10.9.8.7:1234"',
        baggage: 'k8s.namespace.name=default,k8s.pod.name=node-peer' }
    : { ':method': method, ':authority': a.authority, ':scheme': 'https', ':path': '/' };
  const req = session.request(headers, { endStream: method !== 'CONNECT' });
  const sent = crypto.createHash('sha256');
  const received = crypto.createHash('sha256');
  req.on('response', (h) => {
    result.status = h[':status'];
    if (result.status !== 200) return;
    let left = +(a.bytes || 0);
    let seed = 1;
    const writeMore = () => {
      while (left > 0) {
        const n = Math.min(left, 65536);
        const chunk = Buffer.alloc(n);
        for (let i = 0; i < n; i++) { seed = (seed * 1103515245 + 12345) & 0x7fffffff; chunk[i] = seed & 0xff; }
        sent.update(chunk);
        result.sent += n;
        left -= n;
        if (!req.write(chunk)) return req.once('drain', writeMore);
      }
      req.end();
    };
    writeMore();
  });
  req.on('data', (d) => { received.update(d); result.received += d.length; });
  req.on('end', () => {
    result.sentSha = sent.digest('hex');
    result.receivedSha = received.digest('hex');
    done(0);
  });
  req.on('error', (e) => { result.error = String(e); done(1); });
  setTimeout(() => { result.error = 'timeout'; done(1); }, 20000).unref();
}

if (a.mode === 'server') server();
else if (a.mode === 'client') client();
else { console.error('usage: hbone_peer.js server|client ...'); process.exit(2); }
