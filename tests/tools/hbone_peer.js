#!/usr/bin/env node
// An independent HBONE peer on Node.js's own HTTP/2 and TLS stacks (no nghttp2 of ours, no
// dsproxy code), to check that dsproxy's tunnel speaks the protocol as another implementation
// reads it. Written from ztunnel's behaviour: TLS 1.3 with client certificates, ALPN h2,
// CONNECT with :authority "<ip>:<port>" (IPv6 in brackets), 200 then bytes, 400/401/503.
//
//   server --cert C --key K --ca CA [--listen HOST:PORT]
//       Listens on HOST:PORT (default 127.0.0.1:0; "[::]:15008" for both families) and prints
//       "PORT <n>". Answers 400 to any non-CONNECT request or an authority that is not
//       "<ip>:<port>", 401 to port 2, else connects to the authority (503 when that fails),
//       answers 200 and relays both ways with half-close. Prints "REQUEST <json of method,
//       authority, forwarded, baggage, peer URI SAN, peerSerial, peerNotBefore>" per request.
//   client --cert C --key K --ca CA --connect HOST:PORT --authority A [--method M] [--bytes N]
//          [--forwarded 'for="IP:PORT"']   (default for="10.9.8.7:1234")
//          [--no-cert 1] [--tls12 1] [--plaintext 1]
//       Sends one request; on 200 sends N pseudo-random bytes, half-closes, reads to the end.
//       Prints "RESULT <json of status, sent, received, sha256 of sent and received, the
//       server's URI SAN, serial and notBefore, error>". --no-cert: no client certificate;
//       --tls12: TLS 1.2 only; --plaintext: HTTP/2 with prior knowledge, no TLS (h2c).
//   raw --ca CA --connect HOST:PORT --send WHAT [--cert C --key K] [--alpn P] [--plaintext 1]
//       The misbehaving peer: TLS (or TCP with --plaintext) with ALPN P (default h2), then
//       WHAT: "bad-preface" (bytes that are not the HTTP/2 client preface) or "data-on-stream-0"
//       (a valid preface and SETTINGS, then a DATA frame on stream 0, a connection error in
//       RFC 9113 section 6.1). Reads until the server closes (10 s at most) and prints "RESULT
//       <json of handshake (TLS done), alpn, goaway (its error code, or null), goawayReason
//       (its debug data), closed (the server ended the connection), error>".
//   Only the raw mode writes frames by hand: a few fixed bytes a conforming stack cannot send.
'use strict';
const http2 = require('http2');
const tls = require('tls');
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
  ca: a.ca ? fs.readFileSync(a.ca) : undefined,
  minVersion: a.tls12 ? 'TLSv1.2' : 'TLSv1.3', maxVersion: a.tls12 ? 'TLSv1.2' : 'TLSv1.3',
};
if (!a['no-cert'] && a.cert) Object.assign(tlsOptions, { cert: fs.readFileSync(a.cert), key: fs.readFileSync(a.key) });
// Same windows as ztunnel (4 MiB per stream); Node sizes its connection window from these.
const settings = { initialWindowSize: 4 * 1024 * 1024, maxConcurrentStreams: 100 };

function uriSan(cert) {
  const m = /URI:([^,\s]+)/.exec((cert && cert.subjectaltname) || '');
  return m ? m[1] : '';
}

// Public facts of a certificate as Node shows them: serial (hex, upper case) and notBefore.
function certFacts(cert) {
  return cert && cert.serialNumber ? { serial: cert.serialNumber, notBefore: cert.valid_from } : { serial: '', notBefore: '' };
}

function hostPort(s) {
  const i = s.lastIndexOf(':');
  return [s.slice(0, i).replace(/^\[(.*)\]$/, '$1'), +s.slice(i + 1)];
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
    const peerCert = stream.session.socket.getPeerCertificate();
    const facts = certFacts(peerCert);
    console.log('REQUEST ' + JSON.stringify({ method, authority, forwarded: headers['forwarded'] || '',
      baggage: headers['baggage'] || '', peer: uriSan(peerCert), peerSerial: facts.serial,
      peerNotBefore: facts.notBefore }));
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
  const [host, port] = a.listen ? hostPort(a.listen) : ['127.0.0.1', 0];
  srv.listen(port, host, () => console.log('PORT ' + srv.address().port));
}

function client() {
  const [host, port] = hostPort(a.connect);
  const url = `${a.plaintext ? 'http' : 'https'}://${host.includes(':') ? `[${host}]` : host}:${port}`;
  const session = http2.connect(url, {
    ...tlsOptions, settings,
    // SPIFFE certificates carry a URI SAN and no DNS name; the chain is still verified against
    // the CA, and the identity is checked below.
    checkServerIdentity: () => undefined,
  });
  const result = { status: 0, sent: 0, received: 0, sentSha: '', receivedSha: '', peer: '', serverSerial: '',
    serverNotBefore: '' };
  let reported = false;
  const done = (code) => {
    if (reported) return;
    reported = true;
    console.log('RESULT ' + JSON.stringify(result));
    session.destroy();
    process.exit(code);
  };
  session.on('error', (e) => { result.error = String(e); done(1); });
  // A server that refuses after the handshake (TLS 1.3 sends its verdict on the client's
  // certificate after the client has finished) may just close: that is an answer too.
  session.on('close', () => { if (!result.error) result.error = 'connection closed by the server'; done(1); });
  session.on('connect', () => {
    if (a.plaintext) return;
    const cert = session.socket.getPeerCertificate();
    result.peer = uriSan(cert);
    const facts = certFacts(cert);
    result.serverSerial = facts.serial;
    result.serverNotBefore = facts.notBefore;
  });
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
    if (!result.status && !result.error) result.error = 'the connection ended without a response';
    done(result.status ? 0 : 1);
  });
  req.on('error', (e) => { result.error = String(e); done(1); });
  setTimeout(() => { result.error = 'timeout'; done(1); }, 20000).unref();
}

// The HTTP/2 client connection preface (RFC 9113 section 3.4) and an empty SETTINGS frame.
const PREFACE = Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]);
// DATA (type 0), 4 bytes, no flags, stream 0: "DATA frames MUST be associated with a stream".
const DATA_ON_STREAM_0 = Buffer.from([0, 0, 4, 0, 0, 0, 0, 0, 0, 0x67, 0x61, 0x72, 0x62]);

function raw() {
  const [host, port] = hostPort(a.connect);
  const result = { handshake: false, alpn: '', goaway: null, goawayReason: '', closed: false, error: '' };
  let reported = false;
  const done = (code) => {
    if (reported) return;
    reported = true;
    console.log('RESULT ' + JSON.stringify(result));
    process.exit(code);
  };
  const payload = a.send === 'bad-preface' ? Buffer.from('GARBAGE * HTTP/9.9\r\n\r\nnot an HTTP/2 preface\r\n\r\n')
    : a.send === 'data-on-stream-0' ? Buffer.concat([PREFACE, DATA_ON_STREAM_0]) : null;
  if (!payload) { console.error('raw: --send bad-preface|data-on-stream-0'); process.exit(2); }
  const socket = a.plaintext ? net.connect(port, host)
    : tls.connect({ ...tlsOptions, host, port, ALPNProtocols: [a.alpn || 'h2'], checkServerIdentity: () => undefined });
  let inbox = Buffer.alloc(0);
  socket.on(a.plaintext ? 'connect' : 'secureConnect', () => {
    result.handshake = !a.plaintext;
    result.alpn = socket.alpnProtocol || '';
    socket.write(payload);
  });
  // Frames from the server: 9-byte header (length 24 bits, type, flags, stream id), payload.
  // GOAWAY (type 7): last stream id, error code, debug data.
  socket.on('data', (d) => {
    inbox = Buffer.concat([inbox, d]);
    while (inbox.length >= 9) {
      const len = inbox.readUIntBE(0, 3);
      if (inbox.length < 9 + len) break;
      if (inbox[3] === 7 && len >= 8) {
        result.goaway = inbox.readUInt32BE(13);
        result.goawayReason = inbox.subarray(17, 9 + len).toString('utf8');
      }
      inbox = inbox.subarray(9 + len);
    }
  });
  socket.on('error', (e) => { result.error = String(e); });
  socket.on('close', () => { result.closed = true; done(0); });
  setTimeout(() => { result.error = result.error || 'timeout: the server did not close'; done(1); }, 10000).unref();
}

if (a.mode === 'server') server();
else if (a.mode === 'client') client();
else if (a.mode === 'raw') raw();
else { console.error('usage: hbone_peer.js server|client|raw ...'); process.exit(2); }
