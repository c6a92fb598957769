'use strict'
// The benchmark's world for Haraka, loaded before every other plugin.
//
// DNS: node's resolver reads /etc/resolv.conf; the spf and dkim plugins use node's default
// resolver (node:dns and node:dns/promises), so pointing it at the benchmark's DNS server on
// loopback sends every SPF and DKIM lookup there and nowhere else.
//
// Address: the benchmark's "Gmail" sends from 127.0.0.10. Haraka skips SPF for loopback and
// private senders, so the address is marked public, as the real Gmail's would be; mailledger's
// bench evaluates SPF for the same address.

const dns = require('node:dns')

exports.register = function () {
  const cfg = this.config.get('bench_world.ini')
  const server = cfg.main.dns_server
  if (!server) throw new Error('bench_world.ini [main] dns_server is missing')
  dns.setServers([server])
  dns.promises.setServers([server])
  this.loginfo(`DNS from ${dns.getServers().join(', ')}`)
}

exports.hook_connect_init = function (next, connection) {
  connection.remote.is_private = false
  next()
}
