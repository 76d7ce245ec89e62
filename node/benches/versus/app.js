// The versus bench's Node.js service: `node app.js PORT`, GET / answers. Run bare, or with
// `--require @opentelemetry/auto-instrumentations-node/register` for the traditional mode.
const http = require('http');
const port = Number(process.argv[2]);
const body = 'hello from node\n';
http
  .createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  })
  .listen(port, '127.0.0.1');
