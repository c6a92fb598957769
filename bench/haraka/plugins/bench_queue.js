'use strict'
// The benchmark's queue for Haraka: each message is written to its own file and fsynced
// before the 250, the same durability promise as mailledger's intake (and no more: no
// database, no parsing, no matching). It logs one line per message with the SPF and DKIM
// verdicts the spf and dkim plugins reached, so the benchmark can show they really ran.

const fs = require('node:fs')
const path = require('node:path')

exports.register = function () {
  const cfg = this.config.get('bench_queue.ini')
  this.spool = cfg.main.spool_dir
  if (!this.spool) throw new Error('bench_queue.ini [main] spool_dir is missing')
  fs.mkdirSync(this.spool, { recursive: true })
}

function verdicts(txn) {
  const spf = txn.results.get('spf') || {}
  const dkim = txn.results.get('dkim') || {}
  const listed = (key) => (dkim[key] || []).length
  let dkimVerdict = 'none'
  if (listed('pass')) dkimVerdict = `pass(${dkim.pass.join(',')})`
  else if (listed('fail')) dkimVerdict = `fail(${dkim.fail.join(',')})`
  else if (listed('err')) dkimVerdict = 'error'
  return {
    spf: (spf.scope === 'mfrom' && spf.result) || 'none',
    dkim: dkimVerdict,
  }
}

exports.hook_queue = function (next, connection) {
  const txn = connection.transaction
  const file = path.join(this.spool, `${txn.uuid}.eml`)
  fs.open(file, 'wx', (err, fd) => {
    if (err) return next(DENYSOFT, `spool: ${err.message}`)
    const out = fs.createWriteStream(null, { fd, autoClose: false })
    out.on('error', (e) => {
      fs.close(fd, () => next(DENYSOFT, `spool: ${e.message}`))
    })
    out.on('finish', () => {
      fs.fsync(fd, (syncErr) => {
        fs.close(fd, () => {
          if (syncErr) return next(DENYSOFT, `spool: ${syncErr.message}`)
          const v = verdicts(txn)
          connection.loginfo(this, `queued ${txn.uuid} spf=${v.spf} dkim=${v.dkim}`)
          next(OK, `Queued as ${txn.uuid}`)
        })
      })
    })
    txn.message_stream.pipe(out)
  })
}
